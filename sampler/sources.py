"""Where inputs come from: an http(s) URL, a file:// URL or a local path.

HTTP downloads of inputs (words.txt, the URL tarball) run under a whole-download
deadline (sampler/deadline.py) as well as a per-read timeout: a server trickling
a byte every few seconds would otherwise keep ParseSynsets running for ever.
The address policy of image URLs does not apply here: these addresses come from
the operator's configuration (a LAN mirror is legitimate), not from the URL list.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

import requests

from sampler import USER_AGENT
from sampler.deadline import DeadlineExceeded, WatchedAdapter, deadline_guard

WORDS_DEADLINE = 300.0  # words.txt is 2.6 MB: five minutes is a very slow mirror already


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
    """A session whose requests obey the thread's ``deadline_guard``."""
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    adapter = WatchedAdapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session  # trust_env stays on: HTTP_PROXY / HTTPS_PROXY / NO_PROXY apply


def read_source_bytes(
    source: str, *, timeout: float = 30.0, deadline: float = WORDS_DEADLINE, max_bytes: int = 200_000_000
) -> bytes:
    """The whole content of a small input (words.txt, a category list).

    ``timeout`` bounds each socket read, ``deadline`` the whole download.
    """
    path = local_path(source)
    if path is not None:
        try:
            return path.read_bytes()
        except OSError as error:
            raise SourceError(f"cannot read {source}: {error.strerror or error}") from error
    late = SourceError(f"{source} was not downloaded within {deadline:g} s")
    with deadline_guard(deadline) as guard:
        try:
            with new_session() as session:
                response = session.get(source, timeout=timeout, stream=True)
                with response:
                    if response.status_code != 200:
                        raise SourceError(f"{source} answered HTTP {response.status_code}")
                    data = bytearray()
                    for chunk in response.iter_content(1 << 16):
                        data += chunk
                        if len(data) > max_bytes:
                            raise SourceError(f"{source} is larger than {max_bytes:,} bytes")
                        if guard.expired:
                            raise late
        except (requests.RequestException, DeadlineExceeded) as error:
            if guard.expired:
                raise late from error
            raise SourceError(f"cannot download {source}: {error}") from error
        if guard.expired:  # the deadline's shutdown ends a close-delimited body like EOF
            raise late
    return bytes(data)
