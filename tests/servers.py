"""Shared pieces of the tests' own loopback HTTP handlers: a body under each HTTP framing,
whole or trickled.

A client must find the end of a body however the server delimits it: Content-Length
("length"), chunks ("chunked"), the connection closing ("close"), or an HTTP/1.0 answer
("http10", also ended by the close).  The demo world's server (``demo.server``) plays the
web; these serve the tests that build a handler of their own.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler

FRAMINGS = ("length", "chunked", "close", "http10")


def start_body(
    handler: BaseHTTPRequestHandler,
    framing: str,
    *,
    length: int,
    status: int = 200,
    content_type: str = "image/jpeg",
    headers: Mapping[str, str] | None = None,
) -> None:
    """Send the status line and headers of a body of ``length`` bytes delimited by ``framing``
    (``length`` is announced only under "length"); after a close-delimited body the
    connection closes."""
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")
    if framing == "http10":
        handler.protocol_version = "HTTP/1.0"
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    if framing == "length":
        handler.send_header("Content-Length", str(length))
    elif framing == "chunked":
        handler.send_header("Transfer-Encoding", "chunked")
    elif framing == "close":
        handler.send_header("Connection", "close")
    handler.end_headers()
    if framing in ("close", "http10"):
        handler.close_connection = True


def framed(framing: str, data: bytes) -> bytes:
    """``data`` as it goes on the wire under ``framing``: one chunk when chunked."""
    return b"%x\r\n%s\r\n" % (len(data), data) if framing == "chunked" and data else data


def send_body(
    handler: BaseHTTPRequestHandler,
    body: bytes,
    framing: str = "length",
    *,
    status: int = 200,
    content_type: str = "image/jpeg",
    headers: Mapping[str, str] | None = None,
) -> None:
    """A whole response: ``body`` delimited by ``framing``."""
    start_body(handler, framing, length=len(body), status=status, content_type=content_type, headers=headers)
    handler.wfile.write(framed(framing, body) + (b"0\r\n\r\n" if framing == "chunked" else b""))


def trickle_body(
    handler: BaseHTTPRequestHandler,
    framing: str,
    *,
    first: bytes,
    then: bytes,
    every: float,
    stop: threading.Event,
    length: int = 10_000_000,
) -> None:
    """A 200 whose body never ends: ``first`` at once, then ``then`` every ``every`` seconds
    until ``stop`` is set, under ``framing`` (announcing ``length`` bytes, far more than come).
    Raises OSError when the client hangs up, as a deadline makes it do."""
    start_body(handler, framing, length=length)
    handler.close_connection = True
    handler.wfile.write(framed(framing, first))
    while not stop.wait(every):
        handler.wfile.write(framed(framing, then))
        handler.wfile.flush()
