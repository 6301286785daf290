"""Atomic outputs: nothing half-written ever carries an output's name.

Modelled on luigi's ``LocalTarget.temporary_path``: write to a sibling temporary
name, rename into place on success, delete on failure.  Unlike luigi's, the
temporary name has a fixed, recognisable suffix so that a rerun after a crash
(kill -9 leaves no chance to clean up) can find and remove the leftovers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

TMP_MARK = ".tmp-"


def temporary_sibling(path: Path) -> Path:
    """A unique temporary name next to ``path`` (same filesystem, so rename is atomic)."""
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete temporaries that a crashed earlier attempt at ``path`` left behind.

    Only call this from the one task that owns ``path``: luigi guarantees that no
    other live worker is writing the same output at the same time.
    """
    removed = []
    if path.parent.is_dir():
        for leftover in path.parent.glob(f"{path.name}{TMP_MARK}*"):
            remove_path(leftover)
            removed.append(leftover)
    return removed


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path | str, *, directory: bool = False, clean_stale: bool = True) -> Iterator[Path]:
    """Yield a temporary path; on success it is renamed to ``path``.

    With ``directory=True`` the temporary is created as an empty directory and
    the whole directory appears at once.  An existing ``path`` is replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if clean_stale:  # callers writing many files to one folder sweep it once instead
        remove_stale_temporaries(path)
    tmp = temporary_sibling(path)
    remove_path(tmp)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        if directory:
            for child in tmp.iterdir():
                if child.is_file():
                    fsync_path(child)
            if path.exists():
                remove_path(path)
        else:
            fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise


def atomic_write_bytes(path: Path | str, data: bytes, *, clean_stale: bool = True) -> None:
    with atomic_path(path, clean_stale=clean_stale) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
