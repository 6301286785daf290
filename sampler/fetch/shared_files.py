"""Small state files that every process of a fleet reads and replaces (hit rates, host limits).

Anything may sit in their place -- a link out of data_dir, a FIFO, a device, a folder, a huge
file -- and none of it may hang a reader, feed it without end, or be written through: these
files only tune timing, so whatever is not a small regular file reads as absent.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def read_small(path: Path | str, most: int = 64) -> str | None:
    """The first ``most`` characters of ``path`` if it is a regular file (not a link), else None."""
    try:
        fd = os.open(path, _READ_FLAGS)  # a link: ELOOP; a FIFO: opened without waiting for a writer
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, most).decode("ascii")
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)


def replace_small(path: Path, text: str, tmp: Path) -> None:
    """Write ``text`` to ``tmp`` (made afresh, never through a link), then rename it over ``path``
    (a rename replaces a link itself, never what it leads to).  Raises OSError."""
    tmp.unlink(missing_ok=True)  # a crashed process's leftover with a reused pid, or a planted link
    fd = os.open(tmp, _WRITE_FLAGS, 0o644)
    try:
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
