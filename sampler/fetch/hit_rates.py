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
version of it, never half of one.  Only the *size* of a look-ahead reads these
numbers, never a decision about an image, so a stale, lost or damaged file costs
some requests or some time, not a different result.
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

    def close(self) -> None:
        """Write the final counts (a round with no fetch writes nothing)."""
        with self._lock:
            if (self.valid, self.finished) != self._written:
                self._write()

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

    def _read_others(self) -> float | None:
        found: list[tuple[int, float]] = []  # (last written, rate) of every other round
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return None
        for entry in entries:
            if not entry.name.endswith(SUFFIX) or entry.path == str(self.path):
                continue
            text = read_small(entry.path)  # a FIFO, a link or a folder in its place: None
            try:
                fields = (text or "").split()
                valid, finished = int(fields[0]), int(fields[1])
                written = entry.stat(follow_symlinks=False).st_mtime_ns
            except (ValueError, IndexError, OSError):
                continue  # being replaced, or not ours
            if 0 <= valid <= finished and finished:
                found.append((written, (valid + 0.5) / (finished + 1)))
        rates = [rate for _, rate in sorted(found)[-RECENT:]]
        return sum(rates) / len(rates) if rates else None
