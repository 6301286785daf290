"""Fleet-wide politeness: a cap on requests in flight, in total and per host.

Every worker process that shares a data_dir (on one machine or over NFS) takes a
slot before each request and gives it back after: at most ``total`` requests in
flight at once across the fleet, at most ``per_host`` to any one host.  This caps
*requests*, not category tasks: a task whose URLs wait for a retry or for their
turn holds no slot, and many categories can be in flight at once.

A slot is an exclusive ``flock`` on one of N small files under ``folder``
(``total/slot-<i>`` and ``host/<digest>-<i>``).  The kernel drops a dead
process's locks, so a crash never leaks a slot; Linux emulates ``flock`` on NFS
with POSIX byte-range locks, which the NFS lock protocol shares between clients.
Free slots are tried in a random order without blocking; when all are taken the
caller polls with a short growing sleep (a blocking ``flock`` would wait on one
file while another frees up).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sampler.fetch.http_fetch import FetchOutcome
from sampler.naming import host_port

_POLL_FIRST = 0.002
_POLL_MAX = 0.05


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


class RequestSlots:
    """``total`` request slots for the fleet, ``per_host`` per host, kept in ``folder``."""

    def __init__(self, folder: Path, total: int, per_host: int) -> None:
        if total < 1 or per_host < 1:
            raise ValueError(f"total and per_host must be at least 1, got {total} and {per_host}")
        self.folder = Path(folder)
        self.total = total
        self.per_host = per_host
        (self.folder / "total").mkdir(parents=True, exist_ok=True)
        (self.folder / "host").mkdir(parents=True, exist_ok=True)

    def _take(self, paths: list[Path], give_up: Callable[[], bool]) -> int | None:
        delay = _POLL_FIRST
        while True:
            start = random.randrange(len(paths))
            for path in paths[start:] + paths[:start]:
                fd = _try_lock(path)
                if fd is not None:
                    return fd
            if give_up():
                return None
            time.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)

    @contextlib.contextmanager
    def hold(self, host: str, give_up: Callable[[], bool] = lambda: False) -> Iterator[bool]:
        """Hold a host slot and a total slot (in that order) for the block; yields False
        (holding nothing) when ``give_up()`` turns true while waiting."""
        digest = hashlib.sha1(host.encode("utf-8", "surrogateescape")).hexdigest()[:20]
        host_paths = [self.folder / "host" / f"{digest}-{i}" for i in range(self.per_host)]
        total_paths = [self.folder / "total" / f"slot-{i}" for i in range(self.total)]
        held: list[int] = []
        try:
            for paths in (host_paths, total_paths):
                fd = self._take(paths, give_up)
                if fd is None:
                    yield False
                    return
                held.append(fd)
            yield True
        finally:
            for fd in reversed(held):
                os.close(fd)  # closing the only descriptor releases its flock

    def guard(
        self,
        fetch: Callable[[str], FetchOutcome],
        recheck: Callable[[str], FetchOutcome | None] | None = None,
    ) -> Callable[[str], FetchOutcome]:
        """``fetch`` run while holding a slot for the URL's host.  ``recheck(url)``, if
        given, may settle the URL once the slot is held (e.g. its host was found dead
        while it waited) without a request."""

        def fetch_in_slot(url: str) -> FetchOutcome:
            host = host_port(url)
            if host is None:
                return fetch(url)  # refused by fetch itself, no request
            with self.hold(host):
                settled = recheck(url) if recheck is not None else None
                return settled if settled is not None else fetch(url)

        return fetch_in_slot
