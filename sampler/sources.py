"""Where inputs come from: an http(s) URL, a file:// URL or a local path."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

import requests

from sampler import USER_AGENT


class SourceError(RuntimeError):
    """An input could not be read; the message names the source and the reason."""


def local_path(source: str) -> Path | None:
    """The local file a source names, or None for an http(s) URL."""
    parts = urlsplit(source)
    if parts.scheme in ("http", "https"):
        return None
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme and len(parts.scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise SourceError(f"unsupported source {source!r}: use http(s)://, file:// or a local path")
    return Path(source)


def new_session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    return session  # trust_env stays on: HTTP_PROXY / HTTPS_PROXY / NO_PROXY apply


def read_source_bytes(source: str, *, timeout: float = 30.0, max_bytes: int = 200_000_000) -> bytes:
    """The whole content of a small input (words.txt, a category list)."""
    path = local_path(source)
    if path is not None:
        try:
            return path.read_bytes()
        except OSError as error:
            raise SourceError(f"cannot read {source}: {error.strerror or error}") from error
    try:
        with new_session() as session:
            response = session.get(source, timeout=timeout, stream=True)
            if response.status_code != 200:
                raise SourceError(f"{source} answered HTTP {response.status_code}")
            data = bytearray()
            for chunk in response.iter_content(1 << 16):
                data += chunk
                if len(data) > max_bytes:
                    raise SourceError(f"{source} is larger than {max_bytes:,} bytes")
            return bytes(data)
    except requests.RequestException as error:
        raise SourceError(f"cannot download {source}: {error}") from error
