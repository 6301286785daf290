"""The run's alive rate, shared by every process fetching categories of one configuration.

A category sizes its look-ahead by the share of candidates that turned out good
(``sampler.fetch.sample_order.HitRate``).  Its own outcomes say little at first;
what the run's other categories met says more -- on today's web most links are
dead, in 2017 half were alive.  The run's share counts the candidates decided in
sample order, the ones a one-at-a-time loop would have asked for too.  Each category
round writes its counts to its own small file, ``<folder>/<wnid>-round<R>.rate``
(``valid decided``), replaced whole (write, then rename) at most every ``refresh``
seconds and when it ends; every reader averages the rates of the ``RECENT`` files
written last, re-read at most every ``refresh`` seconds.

No locks, no appends: a file has one writer, and a reader sees an old or a new
version of it, never half of one.  The folder is read at most every ``refresh`` seconds per
process (the categories a shard runs on threads share one reading), and a round that ends
removes all but the ``KEEP`` files written last, which no reader's answer needs: so a run of
21,841 categories reads a few dozen files, not a folder that grows with the run.

Only the *size* of a look-ahead reads these numbers, never a decision about an image, so a
stale, lost or damaged file costs some requests or some time, not a different result.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from sampler.fetch.shared_files import read_small, replace_small

SUFFIX = ".rate"
# The rounds whose files were written last: the part of the sample the run is in now.  A run
# whose first categories were all dead and whose later ones live (or the reverse) must not
# size its look-ahead by the rounds long gone: 60 categories, 30 dead then 30 alive, fetched
# 3.2x what the alive ones needed with every round counted, 1.6x with the last 8.
RECENT = 8
# Files left in the folder when a round ends: the RECENT newest are all a reader uses (its own
# file excluded); the margin keeps rounds still running whose file was just replaced.
KEEP = 4 * RECENT


class _FolderReadings:
    """Each folder's files as last read by this process: (written, rate, path), oldest first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read: dict[Path, tuple[float, list[tuple[int, float, str]]]] = {}

    def get(self, folder: Path, refresh: float) -> list[tuple[int, float, str]]:
        with self._lock:
            cached = self._read.get(folder)
            if cached is not None and time.monotonic() < cached[0]:
                return cached[1]
            found = _read_folder(folder)
            self._read[folder] = (time.monotonic() + refresh, found)
            return found

    def forget(self, folder: Path) -> None:
        """A round of this process ended: the next round started here must see its counts."""
        with self._lock:
            self._read.pop(folder, None)


_READINGS = _FolderReadings()


def _read_folder(folder: Path) -> list[tuple[int, float, str]]:
    found: list[tuple[int, float, str]] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return found
    for entry in entries:
        if not entry.name.endswith(SUFFIX):
            continue
        text = read_small(entry.path)  # a FIFO, a link or a folder in its place: None
        try:
            fields = (text or "").split()
            valid, finished = int(fields[0]), int(fields[1])
            written = entry.stat(follow_symlinks=False).st_mtime_ns
        except (ValueError, IndexError, OSError):
            continue  # being replaced, or not ours
        if 0 <= valid <= finished and finished:
            found.append((written, (valid + 0.5) / (finished + 1), entry.path))
    found.sort()
    return found


def _prune(folder: Path) -> None:
    """Remove all but the KEEP files written last (a round still running writes its file again)."""
    try:
        entries = [entry for entry in os.scandir(folder) if entry.name.endswith(SUFFIX)]
        dated = sorted((entry.stat(follow_symlinks=False).st_mtime_ns, entry.path) for entry in entries)
    except OSError:
        return
    for _, path in dated[:-KEEP]:
        try:
            os.unlink(path)
        except OSError:
            pass  # another process pruned it first


class RunHitRates:
    """One category round's fetch outcomes, written to ``folder``, and the run's totals."""

    def __init__(self, folder: Path, name: str, refresh: float = 0.5) -> None:
        self.folder = Path(folder)
        self.path = self.folder / f"{name}{SUFFIX}"
        self.refresh = refresh
        self.valid = 0
        self.finished = 0
        self._lock = threading.Lock()
        self._written = (0, 0)
        self._next_write = 0.0
        self._others: float | None = None  # every other file's mean rate, as last read
        self._next_read = 0.0

    def add(self, valid: bool) -> None:
        with self._lock:
            self.finished += 1
            self.valid += valid
            if time.monotonic() >= self._next_write:
                self._write()

    def others(self) -> float | None:
        """The mean alive rate of the run's other category rounds written last (``RECENT``), as
        last read (None before any).  A mean of the categories' rates, not a pooled one: one category with
        its fifth good image at its 98th URL must not make the next hundred fetch far ahead."""
        with self._lock:
            if time.monotonic() >= self._next_read:
                self._others = self._read_others()
                self._next_read = time.monotonic() + self.refresh
            return self._others

    def _read_others(self) -> float | None:
        readings = _READINGS.get(self.folder, self.refresh)
        rates = [rate for _, rate, path in readings if path != str(self.path)][-RECENT:]
        return sum(rates) / len(rates) if rates else None

    def close(self) -> None:
        """Write the final counts (a round with no fetch writes nothing)."""
        with self._lock:
            if (self.valid, self.finished) != self._written:
                self._write()
        _prune(self.folder)
        _READINGS.forget(self.folder)

    def __enter__(self) -> RunHitRates:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self) -> None:
        self._next_write = time.monotonic() + self.refresh
        counts = (self.valid, self.finished)
        tmp = self.folder / f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            replace_small(self.path, f"{counts[0]} {counts[1]}\n", tmp)
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk: the run goes on with its own counts
            return
        self._written = counts
