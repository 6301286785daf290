"""Fleet-wide politeness: a cap on requests in flight, in total and per host.

Every worker process that shares a data_dir (on one machine or over NFS) takes a
slot before each request and gives it back after: at most ``total`` requests in
flight at once across the fleet, and to any one host at most its current limit.

A host's limit fits the host (additive increase, multiplicative decrease, as TCP
does): it starts at ``per_host``; each answer that is not a "slow down" raises it
(by one per answer until the host first pushes back, then by one per limit's worth
of answers), up to ``per_host_max``; a 429, 503, 408, 504, a reset before the
answer or a timeout halves it, at most once per ``cooldown`` seconds (the requests
in flight when the host pushed back would otherwise halve it again and again).  So
a CDN such as Flickr's farms soon takes many requests at once while a small site
that says "too many" gets fewer.  The limits live in ``limit/<digest>`` files
(``limit careful``, replaced whole), read again at most every ``refresh`` seconds:
every process of the fleet learns what one of them met.  Two processes raising a
limit at once may lose one raise; a halving is written at once.  This caps
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
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sampler.fetch.http_fetch import FetchOutcome
from sampler.naming import host_port
from sampler.outcomes import Outcome

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


def _digest(host: str) -> str:
    return hashlib.sha1(host.encode("utf-8", "surrogateescape")).hexdigest()[:20]


@dataclass
class _Limit:
    value: float
    careful: bool  # the host has pushed back once: grow by one per limit's worth of answers
    read_at: float  # time.monotonic() of the last look at the shared file
    seen: float  # the value the shared file held then (or this process wrote since)
    halved_at: float = float("-inf")
    written_at: float = float("-inf")


def pushed_back(fetched: FetchOutcome) -> bool:
    """Did the host say "slow down": a retryable answer (429, 503, 408, 504, a reset before
    the answer) or a timeout?"""
    return fetched.retryable or fetched.outcome == Outcome.TIMEOUT


def answered(fetched: FetchOutcome) -> bool:
    """Did the host answer at all (a 404 is an answer; a dead host or a refused URL is not)?"""
    return fetched.status is not None and fetched.attempts > 0


class HostLimits:
    """Each host's limit on requests in flight, adapted to the host (AIMD), shared in ``folder``."""

    def __init__(
        self, folder: Path, start: int, most: int, refresh: float = 0.5, cooldown: float = 1.0
    ) -> None:
        self.folder = Path(folder)
        self.start, self.most = start, max(start, most)
        self.refresh, self.cooldown = refresh, cooldown
        self._lock = threading.Lock()
        self._limits: dict[str, _Limit] = {}

    def limit(self, host: str) -> int:
        """Requests ``host`` may have in flight now (at least 1)."""
        with self._lock:
            return int(self._current(host).value)

    def record(self, host: str, fetched: FetchOutcome) -> None:
        """Adapt ``host``'s limit to what a request to it met."""
        if pushed_back(fetched):
            self._halve(host)
        elif answered(fetched):
            self._raise(host)

    def _current(self, host: str) -> _Limit:
        """The host's limit, read again from its file when older than ``refresh`` (lock held)."""
        now = time.monotonic()
        entry = self._limits.get(host)
        if entry is None:
            entry = self._limits[host] = _Limit(float(self.start), False, float("-inf"), float(self.start))
        if now - entry.read_at >= self.refresh:
            entry.read_at = now
            try:
                fields = (self.folder / _digest(host)).read_text(encoding="ascii").split()
                value, careful = min(max(float(fields[0]), 1.0), float(self.most)), fields[1] == "1"
            except (OSError, ValueError, IndexError, UnicodeDecodeError):
                return entry  # no file yet (or being replaced): what this process has
            if value < entry.seen:  # another process met a push-back: follow it down
                entry.value, entry.careful = value, True
            elif value > entry.seen:  # another process raised it: keep the larger
                entry.value, entry.careful = max(value, entry.value), entry.careful or careful
            entry.seen = value
        return entry

    def _raise(self, host: str) -> None:
        with self._lock:
            entry = self._current(host)
            if entry.value >= self.most:
                return
            before = int(entry.value)
            entry.value = min(self.most, entry.value + (1.0 / entry.value if entry.careful else 1.0))
            # A raise is shared at most every ``refresh`` seconds: a file write per answer would
            # cost more than the request (a halving is written at once).
            if int(entry.value) != before and time.monotonic() - entry.written_at >= self.refresh:
                self._write(host, entry)

    def _halve(self, host: str) -> None:
        with self._lock:
            entry = self._current(host)
            now = time.monotonic()
            if now - entry.halved_at < self.cooldown:
                return  # the same push-back, met by the requests already in flight
            entry.value, entry.careful, entry.halved_at = max(1.0, entry.value / 2), True, now
            self._write(host, entry)

    def _write(self, host: str, entry: _Limit) -> None:
        entry.seen = entry.value = round(entry.value, 3)  # as the file says it
        entry.written_at = time.monotonic()
        path = self.folder / _digest(host)
        tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp.write_text(f"{entry.value:.3f} {int(entry.careful)}\n", encoding="ascii")
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk: this process keeps its own view


class RequestSlots:
    """``total`` request slots for the fleet and an adaptive number per host (``HostLimits``:
    from ``per_host``, up to ``per_host_max``), kept in ``folder``."""

    def __init__(self, folder: Path, total: int, per_host: int, per_host_max: int | None = None) -> None:
        if total < 1 or per_host < 1:
            raise ValueError(f"total and per_host must be at least 1, got {total} and {per_host}")
        self.folder = Path(folder)
        self.total = total
        self.per_host = per_host
        # No host gets more than the fleet's total.
        self.per_host_max = min(max(per_host, per_host_max or per_host), total)
        (self.folder / "total").mkdir(parents=True, exist_ok=True)
        (self.folder / "host").mkdir(parents=True, exist_ok=True)
        self.limits = HostLimits(self.folder / "limit", per_host, self.per_host_max)
        self._paths: dict[tuple[str, int], list[Path]] = {}  # (host digest, limit) -> its slot files

    def _host_paths(self, host: str, digest: str) -> list[Path]:
        """The host's slot files its current limit allows: processes of the fleet that see
        different limits still share the lowest-numbered ones."""
        limit = self.limits.limit(host)
        paths = self._paths.get((digest, limit))
        if paths is None:
            if len(self._paths) >= 10_000:  # a bound for runs over very many hosts
                self._paths.clear()
            paths = self._paths[(digest, limit)] = [
                self.folder / "host" / f"{digest}-{i}" for i in range(limit)
            ]
        return paths

    def _take(self, slots: Callable[[], list[Path]], give_up: Callable[[], bool]) -> int | None:
        delay = _POLL_FIRST
        while True:
            paths = slots()  # a host's limit may change while we wait
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
        digest = _digest(host)
        total_paths = [self.folder / "total" / f"slot-{i}" for i in range(self.total)]
        held: list[int] = []
        try:
            for paths in (lambda: self._host_paths(host, digest), lambda: total_paths):
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
                if settled is not None:
                    return settled
                fetched = fetch(url)
            self.limits.record(host, fetched)
            return fetched

        return fetch_in_slot
