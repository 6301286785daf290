"""A loopback HTTP server for the demo world: forward proxy and file origin at once.

* As an HTTP proxy (point ``HTTP_PROXY`` or requests' ``proxies={"http": ...}`` at
  ``server.proxy_url``) it answers absolute-form requests such as
  ``GET http://farm3.static.flickr.com/... HTTP/1.1`` according to ``world.json``,
  so the pipeline sees realistic host names while everything stays on 127.0.0.1.
  ``http://faults.test/<behaviour>/<anything>`` reaches the fault behaviours listed
  in ``demo.world.FAULT_BEHAVIOURS`` (also ``/faults/<behaviour>/...`` directly).
* As an origin it serves the world directory: ``/files/<name>`` (with Range),
  ``/files-norange/<name>`` (ignores Range), ``/files-cut/<name>`` (sends half of
  the body, then closes), ``/files-cut-once/<name>`` (cut on the first GET only) and
  ``/files-slow/<name>`` (with Range, streamed ``slow_chunk`` bytes every
  ``slow_chunk_interval`` seconds: a long download that a test can interrupt).
  ``HEAD /`` answers 204; ``GET /__stats`` returns the request log as JSON.

Every handler that waits (hang, slow, trickle, latency) waits on the server's stop
event, so ``stop()`` returns promptly whatever clients are doing.

Run ``python -m demo.server --world DIR --port P [--latency LO HI] [--pidfile F]``.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import hashlib
import json
import marshal
import os
import random
import re
import select
import signal
import socket
import struct
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from demo import world as dw
from sampler.atomic import atomic_path

_JPEG = "image/jpeg"
_HTML = "text/html; charset=utf-8"
_CONTENT_TYPES = {
    ".tgz": "application/x-gzip",
    ".gz": "application/x-gzip",
    ".txt": "text/plain; charset=utf-8",
    ".csv": "text/csv; charset=utf-8",
    ".json": "application/json",
}
_FILE_MODES = ("files", "files-norange", "files-cut", "files-cut-once", "files-slow")
_PLACEHOLDER_PNG_PATH = re.compile(r"/pw/images/[a-z]{2}-[a-z]{2}/photo_unavailable(_[a-z])?\.png")
_BYTES_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
# Squid's answers for an origin it cannot reach: (status, X-Squid-Error, page text).
_SQUID_ERRORS = {
    "dns": (502, "ERR_DNS_FAIL 0", "Unable to determine IP address from host name"),
    "connect": (503, "ERR_CONNECT_FAIL 111", "Connection refused by"),
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # never join handler threads: some wait for a stop that a hung client never sends
    request_queue_size = 128  # benchmarks open many connections at once
    demo: DemoServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return  # clients vanish all the time; that is the point of this server
        super().handle_error(request, client_address)


class _Abort(Exception):
    """The client went away or the server is stopping: drop the connection."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real proxy would
    server_version = "DemoWorld/1.0"
    timeout = 60  # idle keep-alive connections are dropped eventually
    server: _Server

    # -- plumbing
    def setup(self) -> None:
        super().setup()
        self.server.demo._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.demo._track(self.connection, False)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # "format": the stdlib's name
        pass  # quiet: the request log is in DemoServer.requests

    def do_GET(self) -> None:  # the stdlib's naming
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_CONNECT(self) -> None:
        # No TLS offline: https URLs (e.g. Flickr's placeholder PNG) cannot be tunnelled.
        self.url = self.path
        self._respond(403, dw.html_page("403 Forbidden", "CONNECT is not available in the demo world"))

    @property
    def demo(self) -> DemoServer:
        return self.server.demo

    def _dispatch(self) -> None:
        # The request line arrives as latin-1; raw UTF-8 senders get their characters back.
        target = self.path.encode("latin-1", "replace").decode("utf-8", "surrogateescape")
        if re.match(r"(?i)https?://", target):
            absolute = target
        else:
            absolute = f"http://{self.headers.get('Host') or self.demo.netloc}{target}"
        self.url = absolute
        parts = urlsplit(absolute)
        host = (parts.hostname or "").lower()
        try:
            port = parts.port or 80
        except ValueError:
            port = 80
        local = self.demo._is_self(host, port)
        path = unquote(parts.path or "/", errors="surrogateescape")
        try:
            if local and path == "/":
                self._respond(204, log=False)
                return
            if local and path == "/__stats":
                self._stats(parts.query)
                return
            key = dw.url_key(absolute)
            attempt = self.demo._count(key)
            self._wait(self.demo._latency_for(key))
            if local:
                self._local(path, parts.query, attempt)
            else:
                self._remote(host, path, parts.query, key, attempt)
        except (_Abort, OSError):  # the client left, or the server is stopping
            self.close_connection = True

    # -- responses
    def _respond(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = _HTML,
        headers: dict[str, str] | None = None,
        *,
        length: int | str | None = "auto",
        send: int | None = None,
        log: bool = True,
    ) -> None:
        """Send a response.  ``length``: "auto" (len(body)), an int to announce, or
        None for no Content-Length (the body then ends with the connection).
        ``send``: how many bytes of ``body`` to really send before closing."""
        if log:
            self.demo._record(self.command, self.url, status)
        self.send_response(status)
        if content_type and (body or status not in (204, 301, 302, 303, 307, 308)):
            self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if length == "auto":
            self.send_header("Content-Length", str(len(body)))
        elif length is not None:
            self.send_header("Content-Length", str(length))
        if length is None or send is not None:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body if send is None else body[:send])

    def _no_response(self, mode: str) -> None:
        """Drop the connection without a response: ``reset`` (RST) or ``close`` (FIN)."""
        self.demo._record(self.command, self.url, 0)
        self.close_connection = True
        if mode == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        else:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _wait(self, seconds: float | None) -> None:
        """Sleep up to ``seconds`` (None: for ever); raise _Abort on stop or when the client leaves."""
        if seconds is not None and seconds <= 0:
            return
        stop = self.demo._stop_event
        remaining = seconds
        while remaining is None or remaining > 0:
            step = 0.2 if remaining is None else min(0.2, remaining)
            if stop.wait(step):
                raise _Abort
            if remaining is not None:
                remaining -= step
            if self._client_gone():
                raise _Abort

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _trickle(self, data: bytes, interval: float = 1.0) -> None:
        """Send ``data`` one byte per ``interval``, then zeros, until stopped."""
        i = 0
        while True:
            self._wait(interval)
            self.wfile.write(data[i : i + 1] if i < len(data) else b"\0")
            i += 1

    def _squid_error(self, mode: str) -> None:
        """What Squid answers when it cannot resolve (``dns``) or reach (``connect``) the origin:
        its own error page, marked as such by X-Squid-Error."""
        status, error, text = _SQUID_ERRORS[mode]
        host = urlsplit(self.url).hostname or ""
        page = dw.html_page("ERROR: The requested URL could not be retrieved", f"{text} {host}")
        headers = {"X-Squid-Error": error, "Server": "squid/5.7", "Via": "1.1 demo-proxy (squid/5.7)"}
        self._respond(status, page, headers=headers)

    def _jpeg(self, url: str, entry: dict[str, Any]) -> None:
        self._respond(200, self.demo.body(url, entry), _JPEG)

    def _stats(self, query: str) -> None:
        body = json.dumps(self.demo._stats()).encode()
        if "clear" in parse_qs(query):
            self.demo.clear_log()
        self._respond(200, body, "application/json", log=False)

    # -- the origin: world files and direct fault URLs
    def _local(self, path: str, query: str, attempt: int) -> None:
        if path.startswith("/faults/"):
            self._fault(path[len("/faults") :], query, attempt)
            return
        m = re.fullmatch(r"/([a-z-]+)/([^/]+)", path)
        if m and m.group(1) in _FILE_MODES:
            self._file(m.group(1), m.group(2))
            return
        self._not_found()

    def _not_found(self) -> None:
        self._respond(404, dw.html_page("404 Not Found", "The requested URL was not found on this server."))

    def _file(self, mode: str, name: str) -> None:
        world_dir = self.demo.world_dir
        path = world_dir / name if world_dir is not None and name not in (".", "..") else None
        if path is None or not path.is_file():
            self._not_found()
            return
        stat = path.stat()
        size = stat.st_size
        etag = f'"{size:x}-{stat.st_mtime_ns:x}"'
        modified = email.utils.formatdate(stat.st_mtime, usegmt=True)
        headers = {
            "ETag": etag,
            "Last-Modified": modified,
            "Accept-Ranges": "none" if mode == "files-norange" else "bytes",
        }
        content_type = _CONTENT_TYPES.get(path.suffix, "application/octet-stream")
        status, start, end = 200, 0, size  # end is exclusive
        range_header = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if range_header and mode != "files-norange" and (if_range is None or if_range in (etag, modified)):
            parsed = _parse_range(range_header, size)
            if isinstance(parsed, str):  # "unsatisfiable"
                headers["Content-Range"] = f"bytes */{size}"
                self._respond(416, b"", None, headers)
                return
            if parsed is not None:
                start, end = parsed
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        length = end - start
        cut = mode == "files-cut" or (mode == "files-cut-once" and self.demo._first_cut(name, self.command))
        send = length // 2 if cut else length
        self.demo._record(self.command, self.url, status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        if cut:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            return
        slow = mode == "files-slow"
        step = max(1, self.demo.slow_chunk) if slow else 256 * 1024
        with path.open("rb") as fh:
            fh.seek(start)
            while send > 0:
                if slow:
                    self._wait(self.demo.slow_chunk_interval)
                chunk = fh.read(min(send, step))
                if not chunk:
                    break
                self.wfile.write(chunk)
                send -= len(chunk)
        if cut:
            self._no_response("close")

    # -- the proxy: world URLs
    def _remote(self, host: str, path: str, query: str, key: str, attempt: int) -> None:
        if host == dw.FAULT_HOST:
            self._fault(path, query, attempt)
            return
        mirrored = self.demo._mirrors.get(key, "")
        if mirrored != "":
            if mirrored is None:
                self._not_found()
            else:
                self._file("files", mirrored)
            return
        if host == "s.yimg.com" and _PLACEHOLDER_PNG_PATH.fullmatch(path):
            self._respond(200, dw.placeholder_png(), "image/png")
            return
        if host == "l.yimg.com" and path == "/g/images/photo_unavailable.gif":
            self._respond(200, dw.placeholder_gif(), "image/gif")
            return
        found = self.demo._table.get(key)
        if found is None:
            self._not_found()
            return
        url, entry = found
        self._behave(url, entry, attempt)

    def _behave(self, url: str, entry: dict[str, Any], attempt: int) -> None:
        if entry["behaviour"] in _IMAGE_BEHAVIOURS:
            self._image_answer(url, entry, attempt)
        else:
            self._imageless_answer(url, entry)

    def _image_answer(self, url: str, entry: dict[str, Any], attempt: int) -> None:
        """A URL whose answer carries its own image: at once, late, after a failure, or cut."""
        b = entry["behaviour"]
        retry_after = {"Retry-After": str(dw.RETRY_AFTER_SECONDS)}
        if b == "transient_500" and attempt == 1:
            status = entry["first_status"]
            page = dw.html_page(f"{status} Server Error", "Please try again later.")
            self._respond(status, page, headers=retry_after if status == 503 else None)
        elif b == "rate_limited_429" and attempt == 1:
            self._respond(429, dw.html_page("429 Too Many Requests", "Slow down."), headers=retry_after)
        elif b == "slow":
            self._wait(self.demo.slow_seconds)
            self._jpeg(url, entry)
        elif b == "truncated_jpeg":
            self._truncated(self.demo.body(url, entry), entry["length_mode"])
        elif b in ("png_image", "gif_image"):
            self._respond(200, self.demo.body(url, entry), entry["content_type"])
        else:  # ok, and transient_500 / rate_limited_429 from the second attempt on
            self._jpeg(url, entry)

    def _truncated(self, data: bytes, length_mode: str) -> None:
        """Half of ``data``: announced as such, close-delimited, or under the whole length."""
        half = len(data) // 2
        if length_mode == "half":
            self._respond(200, data[:half], _JPEG)
        elif length_mode == "none":
            self._respond(200, data[:half], _JPEG, length=None)
        else:
            self._respond(200, data, _JPEG, length=len(data), send=half)
            self._no_response("close")

    def _imageless_answer(self, url: str, entry: dict[str, Any]) -> None:
        """A URL whose own image is gone: an error, a dead host, a redirect, a banner or a page."""
        b = entry["behaviour"]
        if b in ("http_404", "http_410", "http_403"):
            status = entry["status"]
            title = {404: "404 Not Found", 410: "410 Gone", 403: "403 Forbidden"}[status]
            self._respond(status, dw.html_page(title, "You don't have this image any more."))
        elif b == "dead_host" and entry["mode"] in _SQUID_ERRORS:
            self._squid_error(entry["mode"])
        elif b == "dead_host":
            self._no_response(entry["mode"])
        elif b == "server_500":
            self._respond(500, dw.html_page("500 Internal Server Error", "Something broke."))
        elif b in ("flickr_placeholder_redirect", "redirect_ok"):
            self._respond(entry["status"], b"", None, {"Location": entry["location"]})
        elif b == "jpeg_banner":
            self._respond(200, dw.banner_jpeg(), _JPEG)
        elif b == "html_200":
            page = dw.html_page("Gallery", f'<img src="{url}" alt="">Photo not found')
            self._respond(200, page, entry["content_type"])
        else:
            self._not_found()

    # -- fault URLs built by tests
    def _fault(self, path: str, query: str, attempt: int) -> None:
        parts = path.strip("/").split("/")
        name = parts[0]
        if name == "status":
            code = parts[1] if parts[1:] else ""
            if code.isdigit() and 100 <= int(code) <= 599:
                self._respond(int(code), dw.html_page(code, "As requested."))
            else:
                self._not_found()
        elif name in _STALLING_FAULTS:
            self._stalling_fault(name)
        elif name in _REDIRECT_FAULTS:
            self._redirect_fault(name, parse_qs(query))
        elif name in _IMAGELESS_FAULTS:
            self._imageless_fault(name)
        elif name in _BROKEN_IMAGE_FAULTS:
            self._broken_image_fault(name)
        else:
            self._image_fault(name, parse_qs(query), attempt)

    def _stalling_fault(self, name: str) -> None:
        """Answers that never end: no answer, a trickle, an endless body, a huge length."""
        jpeg = _fault_image(self.url)[2]
        if name == "hang":
            self.demo._record(self.command, self.url, 0)
            self._wait(None)
        elif name == "trickle":
            self._respond(200, b"", _JPEG, length=None)
            self.wfile.write(jpeg[:20])  # SOI + JFIF header: looks like a promising JPEG
            self._trickle(jpeg[20:])
        elif name == "endless":
            self._respond(200, b"", _JPEG, length=None)
            block = (jpeg * (65536 // len(jpeg) + 1))[:65536]
            while not self.demo._stop_event.wait(0.001):
                self.wfile.write(block)
        else:  # huge_length
            self._respond(200, b"", _JPEG, length=2_147_483_648, send=0)
            self.wfile.write(jpeg[:20])
            self._trickle(jpeg[20:])

    def _redirect_fault(self, name: str, params: dict[str, list[str]]) -> None:
        base = self.url.split("?", 1)[0]
        if name == "redirect_loop":
            location = base if "loop" in params else base + "?loop=1"
        elif name == "redirect_file":
            location = "file:///etc/passwd"
        elif name == "redirect_ok":
            location = base.replace(f"/{name}/", "/redirect_target/", 1)
        else:  # flickr_placeholder_redirect
            location = dw.FLICKR_PLACEHOLDER_PNG_URL
        self._respond(302, b"", None, {"Location": location})

    def _imageless_fault(self, name: str) -> None:
        """Answers without an image: a proxy's error page, a dropped connection, an error, a page."""
        if name == "squid_dns_fail":
            self._squid_error("dns")
        elif name == "squid_connect_fail":
            self._squid_error("connect")
        elif name in ("reset", "dead_host"):
            self._no_response("reset")
        elif name == "close":
            self._no_response("close")
        elif name in ("html", "html_200"):
            self._respond(200, dw.html_page("Welcome", "This domain may be for sale."))
        else:  # http_404, http_410, http_403
            self._respond(int(name[-3:]), dw.html_page(name[-3:], "No such image."))

    def _broken_image_fault(self, name: str) -> None:
        """JPEGs no careful downloader keeps: a bomb, a pixel, half of one, an empty body."""
        jpeg = _fault_image(self.url)[2]
        if name == "bomb":
            self._respond(200, dw.bomb_jpeg(), _JPEG)
        elif name == "pixel":
            self._respond(200, dw.pixel_jpeg(), _JPEG)
        elif name == "truncated_nolength":
            self._respond(200, jpeg[: len(jpeg) // 2], _JPEG, length=None)
        elif name == "truncated_jpeg":
            self._respond(200, jpeg[: len(jpeg) // 2], _JPEG)
        else:  # empty
            self._respond(200, b"", _JPEG)

    def _image_fault(self, name: str, params: dict[str, list[str]], attempt: int) -> None:
        """A whole image: at once, late, after a first failure, a banner, or not a JPEG."""
        url = self.url
        tag, size, jpeg = _fault_image(url)
        if name in ("ok", "redirect_target"):
            self._respond(200, jpeg, _JPEG)
        elif name == "jpeg_banner":
            self._respond(200, dw.banner_jpeg(), _JPEG)
        elif name in ("png_image", "gif_image", "png_as_jpeg"):
            render = dw.render_gif if name == "gif_image" else dw.render_png
            body = render(tag, f"fault|{dw.url_key(url)}", size, size * 3 // 4)
            self._respond(200, body, _JPEG if name == "png_as_jpeg" else f"image/{name[:3]}")
        elif name in ("transient_500", "transient_503", "rate_limited_429") and attempt == 1:
            status = {"transient_500": 500, "transient_503": 503, "rate_limited_429": 429}[name]
            retry = {"Retry-After": str(dw.RETRY_AFTER_SECONDS)} if status != 500 else None
            self._respond(status, dw.html_page(str(status), "Try again."), headers=retry)
        elif name in ("transient_500", "transient_503", "rate_limited_429"):
            self._respond(200, jpeg, _JPEG)
        elif name == "slow":
            seconds = float(params.get("seconds", [self.demo.slow_seconds])[0])
            self._wait(seconds)
            self._respond(200, jpeg, _JPEG)
        else:
            self._not_found()


# World-list behaviours whose answer carries the entry's own image (sooner or later, whole or
# not): a body rendered from the entry.
_IMAGE_BEHAVIOURS = frozenset(
    {"ok", "transient_500", "rate_limited_429", "slow", "truncated_jpeg", "png_image", "gif_image"}
)
# Fault URLs (demo.world.FAULT_BEHAVIOURS) by the kind of answer; the rest answer with an image.
_STALLING_FAULTS = frozenset({"hang", "trickle", "endless", "huge_length"})
_REDIRECT_FAULTS = frozenset({"redirect_loop", "redirect_file", "redirect_ok", "flickr_placeholder_redirect"})
_IMAGELESS_FAULTS = frozenset(
    {"squid_dns_fail", "squid_connect_fail", "reset", "dead_host", "close", "html", "html_200"}
    | {"http_404", "http_410", "http_403"}
)
_BROKEN_IMAGE_FAULTS = frozenset({"bomb", "pixel", "truncated_nolength", "truncated_jpeg", "empty"})


def _fault_image(url: str) -> tuple[str, int, bytes]:
    """(tag, width, JPEG) of a fault URL: the same URL always gets the same image."""
    rng = random.Random(dw.url_key(url))
    tag = f"fault-{hashlib.md5(url.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
    size = rng.randint(120, 480)
    jpeg = dw.render_jpeg(tag, f"fault|{dw.url_key(url)}", size, size * 3 // 4, rng.randint(70, 92))
    return tag, size, jpeg


def render_entry(seed: int, url: str, entry: dict[str, Any]) -> bytes:
    """The image bytes a world entry serves (for truncated_jpeg: the whole JPEG, before the cut)."""
    behaviour = entry["behaviour"]
    if behaviour in ("png_image", "gif_image"):
        render = dw.render_png if behaviour == "png_image" else dw.render_gif
        image = entry["image"]
        return render(entry["ids"][0], f"{seed}|{url}", image["w"], image["h"])
    return dw.entry_jpeg(seed, url, entry)


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """One byte range as (start, end-exclusive); "unsatisfiable"; or None to ignore it
    (several ranges or bad syntax: RFC 9110 allows answering with the whole body)."""
    m = _BYTES_RANGE.fullmatch(header.strip())
    if m is None or m.group(1) == m.group(2) == "":
        return None
    first, last = m.group(1), m.group(2)
    if first == "":  # suffix range: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size
    start = int(first)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    end = size if last == "" else min(size, int(last) + 1)
    return start, end


class DemoServer:
    """The demo world's proxy + origin on loopback, in a daemon thread.

    ``with DemoServer(world_dir) as server: requests.get(url, proxies={"http": server.proxy_url})``
    """

    def __init__(
        self,
        world_dir: Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        self.world_dir = Path(world_dir) if world_dir is not None else None
        self.world: dict[str, Any] | None = dw.load_world(self.world_dir) if self.world_dir else None
        self.host = host
        self.port = port
        self.latency = (float(latency[0]), float(latency[1]))
        self.seed = self.world["seed"] if self.world else 0
        settings = self.world["settings"] if self.world else {}
        self.slow_seconds = float(settings.get("slow_seconds", dw.DEFAULT_SLOW_SECONDS))
        # /files-slow/<name>: this many bytes per interval.
        self.slow_chunk = 16 * 1024
        self.slow_chunk_interval = 0.02
        # url_key -> (URL as listed, entry): lookups must survive requests' re-quoting.
        self._table: dict[str, tuple[str, dict[str, Any]]] = {}
        self._mirrors: dict[str, str | None] = {}
        if self.world:
            for mapping in (self.world["urls"], self.world["redirect_targets"]):
                for url, entry in mapping.items():
                    self._table[dw.url_key(url)] = (url, entry)
            self._mirrors = {dw.url_key(u): name for u, name in self.world["mirrors"].items()}
        self._rendered: dict[str, bytes] = {}  # URL as listed -> body, see prerender()
        self._lock = threading.Lock()
        self._log: list[tuple[str, str, int]] = []
        self._hits: Counter[str] = Counter()
        self._attempts: Counter[str] = Counter()  # never cleared: transient faults fail once per URL
        self._cut_done: set[str] = set()
        self._conns: set[socket.socket] = set()
        self._stop_event = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- bodies
    def body(self, url: str, entry: dict[str, Any]) -> bytes:
        """The image a world entry serves (rendered on demand, or taken from ``prerender``)."""
        found = self._rendered.get(url)
        return found if found is not None else render_entry(self.seed, url, entry)

    def prerender(self, cache: Path | None = None) -> int:
        """Render every image of the world now, so that serving costs no rendering: a
        benchmark's mirror should spend its CPU on HTTP, as a real web server would.
        ``cache``: a file that keeps the renders for the next server of the same world."""
        if self.world is None:
            return 0
        key = self._render_key()
        if cache is not None and cache.is_file():
            try:
                with cache.open("rb") as fh:
                    stored = marshal.load(fh)
            except (EOFError, ValueError, TypeError):  # cut short, or another Python's format
                stored = None
            if isinstance(stored, dict) and stored.get("key") == key:
                self._rendered = stored["bodies"]
                return len(self._rendered)
        self._rendered = {
            url: render_entry(self.seed, url, entry)
            for mapping in (self.world["urls"], self.world["redirect_targets"])
            for url, entry in mapping.items()
            if entry["behaviour"] in _IMAGE_BEHAVIOURS
        }
        if cache is not None:
            with atomic_path(cache) as tmp, tmp.open("wb") as fh:
                marshal.dump({"key": key, "bodies": self._rendered}, fh)
        return len(self._rendered)

    def _render_key(self) -> str:
        """What the renders depend on: the world and the code that paints it."""
        assert self.world_dir is not None
        digest = hashlib.sha256((self.world_dir / dw.WORLD_JSON).read_bytes())
        digest.update(Path(dw.__file__).read_bytes())
        return digest.hexdigest()

    # -- lifecycle
    def start(self) -> DemoServer:
        if self._httpd is not None:
            return self
        self._stop_event.clear()
        httpd = _Server((self.host, self.port), _Handler)
        httpd.demo = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"demo-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stop_event.set()  # wakes every waiting handler
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:  # unblock handlers stuck in a read or a write
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=2)

    def __enter__(self) -> DemoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.netloc}"

    @property
    def proxy_url(self) -> str:
        return self.url

    @property
    def proxies(self) -> dict[str, str]:
        """For ``requests``: ``requests.get(url, proxies=server.proxies)``."""
        return {"http": self.proxy_url}

    def file_url(self, name: str, mode: str = "files") -> str:
        """``http://127.0.0.1:PORT/<mode>/<name>`` for a file of the world directory."""
        if mode not in _FILE_MODES:
            raise ValueError(f"mode must be one of {_FILE_MODES}")
        return f"{self.url}/{mode}/{name}"

    def fault_url(self, behaviour: str, name: str = "x", *, direct: bool = False) -> str:
        """A fault URL: through the proxy (``http://faults.test/...``) or, with
        ``direct``, on this server (``http://127.0.0.1:PORT/faults/...``)."""
        return (
            f"{self.url}/faults/{behaviour}/{name}"
            if direct
            else f"http://{dw.FAULT_HOST}/{behaviour}/{name}"
        )

    # -- request log
    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """(method, URL as received, status) of every request, oldest first; status 0
        means no response (reset, closed, hung).  Health checks and /__stats are left out."""
        with self._lock:
            return list(self._log)

    def hits(self, url: str) -> int:
        """How many requests reached ``url`` (any spelling: raw UTF-8 or percent-encoded)."""
        if url.startswith("/"):
            url = self.url + url
        with self._lock:
            return self._hits[dw.url_key(url)]

    def clear_log(self) -> None:
        """Forget the log and hit counts (transient faults still remember their first hit)."""
        with self._lock:
            self._log.clear()
            self._hits.clear()

    def _stats(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": [list(r) for r in self._log], "hits": dict(self._hits)}

    def _record(self, method: str, url: str, status: int) -> None:
        with self._lock:
            self._log.append((method, url, status))

    def _count(self, key: str) -> int:
        with self._lock:
            self._hits[key] += 1
            self._attempts[key] += 1
            return self._attempts[key]

    def _first_cut(self, name: str, method: str) -> bool:
        with self._lock:
            if method != "GET" or name in self._cut_done:
                return False
            self._cut_done.add(name)
            return True

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _is_self(self, host: str, port: int) -> bool:
        return port == self.port and host in {"127.0.0.1", "localhost", self.host.lower()}

    def _latency_for(self, key: str) -> float:
        lo, hi = self.latency
        if hi <= 0:
            return 0.0
        # Seeded per URL: the same URL always waits the same time, so runs are comparable.
        fraction = int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()[:4], "big")
        return lo + (hi - lo) * fraction / 2**32


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.server",
        description="Serve a demo world on loopback until SIGTERM/SIGINT.",
    )
    parser.add_argument("--world", type=Path, default=None, help="directory made by demo.world")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument(
        "--latency",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        default=(0.0, 0.0),
        help="per-request delay range in seconds, e.g. 0.01 0.04",
    )
    parser.add_argument("--pidfile", type=Path, default=None)
    parser.add_argument(
        "--prerender",
        type=Path,
        metavar="CACHE",
        default=None,
        help="render every image before serving, kept in CACHE for the next start (benchmarks)",
    )
    args = parser.parse_args(argv)

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    server = DemoServer(args.world, host=args.host, port=args.port, latency=tuple(args.latency))
    if args.prerender is not None:
        server.prerender(args.prerender)
    server.start()
    try:
        if args.pidfile:
            args.pidfile.write_text(f"{os.getpid()}\n")
        print(server.url, flush=True)  # one line, machine-readable: the proxy and origin URL
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
        if args.pidfile:
            with contextlib.suppress(FileNotFoundError):
                args.pidfile.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
