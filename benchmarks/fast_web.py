"""A loopback web where every URL is alive and answers at once: for benchmarks/bench_all.py.

``python -m benchmarks.fast_web --port P --file NAME=PATH ...`` prints its URL on one line,
then serves, as an HTTP proxy and origin at once (as demo.server does, cheaper):

- ``GET http://any.host/any/path`` (absolute form, through the proxy): a small valid JPEG of
  its own, 200: one fixed 64x48 JPEG with the URL in a comment segment, so that every URL's
  bytes differ (no two categories share an image: no placeholders, no top-up rounds) and
  cost nothing to make;
- ``GET /files/NAME``: the file given as ``--file NAME=PATH`` (the URL list, words.txt);
- ``GET /__stats``: ``{"requests": n, "distinct": d, "repeated": r}`` for image URLs (a
  repeated URL is one asked more than once); ``/__stats?clear=1`` starts the counts anew.

asyncio and keep-alive: on this 2-core machine the server's own CPU per request must stay
small beside the sampler's, whose cost the benchmark measures.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import sys
from pathlib import Path

from PIL import Image


def base_jpeg() -> bytes:
    """A 64x48 JPEG of noise (a judge must see a real photo-like image, above min_side)."""
    rng = random.Random(0)
    image = Image.frombytes("RGB", (64, 48), bytes(rng.randrange(256) for _ in range(64 * 48 * 3)))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    return out.getvalue()


def with_comment(jpeg: bytes, text: bytes) -> bytes:
    """``jpeg`` with a COM segment holding ``text`` right after its SOI marker."""
    text = text[:65000]
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


class FastWeb:
    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self.jpeg = base_jpeg()
        self.requests = 0
        self.seen: set[bytes] = set()
        self.repeated = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line = head.split(b"\r\n", 1)[0]
                method, target, _ = request_line.split(b" ", 2)
                if target.startswith(b"http://") or target.startswith(b"https://"):
                    await self.image(method, target, writer)
                elif target.startswith(b"/files/"):
                    await self.file(method, target[len(b"/files/") :].decode(), writer)
                elif target.startswith(b"/__stats"):
                    if target.endswith(b"?clear=1"):
                        self.requests, self.repeated, self.seen = 0, 0, set()
                    stats = {"requests": self.requests, "distinct": len(self.seen), "repeated": self.repeated}
                    self.respond(writer, 200, json.dumps(stats).encode(), b"application/json")
                else:
                    self.respond(writer, 204 if method == b"HEAD" else 404, b"", b"text/plain")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def image(self, method: bytes, url: bytes, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        if url in self.seen:
            self.repeated += 1
        else:
            self.seen.add(url)
        self.respond(writer, 200, with_comment(self.jpeg, url), b"image/jpeg", head_only=method == b"HEAD")

    async def file(self, method: bytes, name: str, writer: asyncio.StreamWriter) -> None:
        path = self.files.get(name)
        if path is None:
            self.respond(writer, 404, b"", b"text/plain")
            return
        size = path.stat().st_size
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            + f"Content-Length: {size}\r\n\r\n".encode()
        )
        if method == b"HEAD":
            return
        with path.open("rb") as src:
            while chunk := src.read(1 << 20):
                writer.write(chunk)
                await writer.drain()

    @staticmethod
    def respond(
        writer: asyncio.StreamWriter, status: int, body: bytes, kind: bytes, head_only: bool = False
    ) -> None:
        reason = {200: b"OK", 204: b"No Content", 404: b"Not Found"}[status]
        writer.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
            % (status, reason, kind, len(body))
            + (b"" if head_only else body)
        )


async def serve(port: int, files: dict[str, Path]) -> None:
    web = FastWeb(files)
    server = await asyncio.start_server(web.handle, "127.0.0.1", port, backlog=1024)
    print(f"http://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fast_web")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", action="append", default=[], help="NAME=PATH, served at /files/NAME")
    args = parser.parse_args(argv)
    files = {}
    for item in args.file:
        name, _, path = item.partition("=")
        files[name] = Path(path)
    try:
        asyncio.run(serve(args.port, files))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
