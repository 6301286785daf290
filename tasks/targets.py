"""The tasks' outputs: luigi targets that are written whole or not at all.

``AtomicTarget`` is a file, ``AtomicFolderTarget`` a folder written whole and renamed into
place.  Both are ``luigi.LocalTarget``s whose ``temporary_path()`` (and, for a file,
``open("w")``) is the project's atomic path (``sampler.atomic``): a marked temporary sibling
that names its owner, renamed into place on success, deleted on failure, and swept on the
next write once its owner is dead (a kill -9 leaves no chance to clean up).  luigi's own
``temporary_path()`` leaves its temporary behind on failure, under a name nothing sweeps.

A task writes through its output and reads through its inputs::

    with self.output().temporary_path() as tmp:
        write_something(tmp)
    rows = read_something(self.input().fs_path)

sampler/ stays luigi-free: the plain modules take paths; a target is path-like
(``os.fspath``), so the readers take it as it is, and a writer that needs a ``Path`` gets
``target.fs_path`` (where a plain module writes atomically itself, the final path).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import luigi
from luigi.local_target import atomic_file

from sampler.atomic import (
    atomic_path,
    atomic_write_text,
    fsync_path,
    remove_stale_temporaries,
    temporary_sibling,
)


class _MarkedAtomicFile(atomic_file):
    """luigi's write-then-rename file object, with the project's marked temporary name."""

    def generate_tmp_path(self, path: str) -> str:
        return str(temporary_sibling(Path(path)))

    def move_to_final_destination(self) -> None:
        fsync_path(Path(self.tmp_path))
        os.replace(self.tmp_path, self.path)


class _AtomicOutput(luigi.LocalTarget):
    """What both kinds share: a path for the plain modules, and the atomic temporary path."""

    directory = False

    def __init__(self, path: Path | str) -> None:
        super().__init__(os.fspath(path))

    @property
    def fs_path(self) -> Path:
        """The output's path, for the plain modules (which take paths, not targets)."""
        return Path(self.path)

    def __fspath__(self) -> str:
        # A target is a path-like object: the plain readers (read_manifest, read_result,
        # read_json_object...) take it as it is, without unwrapping.
        return self.path

    @contextlib.contextmanager
    def temporary_path(self) -> Iterator[Path]:  # luigi's yields a str
        """A temporary sibling to write; renamed to the output on success, removed on failure."""
        with atomic_path(self.fs_path, directory=self.directory) as tmp:
            yield tmp

    def mtime_ns(self) -> int:
        return self.fs_path.stat().st_mtime_ns


class AtomicTarget(_AtomicOutput):
    """A file output that appears whole or not at all."""

    def open(self, mode: str = "r") -> Any:  # luigi's file objects
        if mode.replace("b", "").replace("t", "") != "w":
            return super().open(mode)
        self.fs_path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.fs_path)
        return self.format.pipe_writer(_MarkedAtomicFile(self.path))

    def write_text(self, text: str) -> None:
        """Replace the output with ``text`` (UTF-8), atomically."""
        atomic_write_text(self.fs_path, text)

    def read_text(self) -> str:
        return self.fs_path.read_text(encoding="utf-8")


class AtomicFolderTarget(_AtomicOutput):
    """A folder output: ``temporary_path()`` yields an empty folder, and the whole folder
    replaces the output at once (an earlier one included) when the block succeeds."""

    directory = True

    def open(self, mode: str = "r") -> Any:
        raise IsADirectoryError(f"{self.path} is a folder: write it with temporary_path()")

    def child(self, *parts: str) -> Path:
        """A path inside the folder."""
        return self.fs_path.joinpath(*parts)
