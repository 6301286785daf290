"""Fleet-wide politeness: a cap on requests in flight, in total and per host.

Every worker process that shares a data_dir (on one machine or over NFS) takes a
slot before each request and gives it back after: at most ``total`` requests in
flight at once across the fleet, and to any one host at most its current limit.

A host's limit fits the host (additive increase, multiplicative decrease, as TCP
does): it starts at ``per_host``; each answer that is not a "slow down" raises it
(by one per answer until the host first pushes back, then by one per limit's worth
of answers), up to ``per_host_max``; a 429, 503, 408, 504, a reset before the
answer or a timeout halves it, once per push-back: the answers to requests sent before
the last halving (in this process, or seen in the shared file) are the same push-back and
do not halve it again, as TCP halves once per window.  (A caller that cannot say when its
request was sent gets at most one halving per ``cooldown`` seconds instead.)  So
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
import math
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sampler.fetch.http_fetch import FetchMachineryError, FetchOutcome
from sampler.fetch.shared_files import read_small, replace_small
from sampler.naming import host_port
from sampler.outcomes import Outcome

_POLL_FIRST = 0.002
_POLL_MAX = 0.05


def _try_lock(path: Path) -> int | None:
    try:
        # Never through a link (it would create a file out of data_dir); a FIFO opens at once.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise FetchMachineryError(
            exc.errno,
            f"request slot {path} cannot be used ({exc.strerror}): something other than a "
            "file the fetch made is in its place; remove it (the request-slots folder holds "
            "no results and may be deleted whole while no fetch runs)",
        ) from exc
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

    def record(self, host: str, fetched: FetchOutcome, sent: float | None = None) -> None:
        """Adapt ``host``'s limit to what a request to it met; ``sent``: ``time.monotonic()``
        when the request was sent."""
        if pushed_back(fetched):
            self._halve(host, sent)
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
            # A link, FIFO, folder or huge file in its place reads as no file (never followed,
            # waited on or read whole); so does a value that is not a finite number.
            text = read_small(self.folder / _digest(host))
            try:
                fields = (text or "").split()
                value, careful = float(fields[0]), fields[1] == "1"
            except (ValueError, IndexError):
                return entry  # no file yet (or being replaced): what this process has
            if not math.isfinite(value):
                return entry
            value = min(max(value, 1.0), float(self.most))
            if value < entry.seen:  # another process met a push-back: follow it down
                entry.value, entry.careful, entry.halved_at = value, True, now
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

    def _halve(self, host: str, sent: float | None = None) -> None:
        with self._lock:
            entry = self._current(host)
            now = time.monotonic()
            # The same push-back, met by a request already in flight when the limit was halved.
            # A fixed cooldown alone lets a host with answers 50 ms apart grow the limit twenty
            # times between halvings: a host that says "too many" would hear it ever more often.
            if (sent if sent is not None else now - self.cooldown) < entry.halved_at:
                return
            entry.value, entry.careful, entry.halved_at = max(1.0, entry.value / 2), True, now
            self._write(host, entry)

    def _write(self, host: str, entry: _Limit) -> None:
        entry.seen = entry.value = round(entry.value, 3)  # as the file says it
        entry.written_at = time.monotonic()
        path = self.folder / _digest(host)
        tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            replace_small(path, f"{entry.value:.3f} {int(entry.careful)}\n", tmp)
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
                sent = time.monotonic()
                fetched = fetch(url)
            self.limits.record(host, fetched, sent)
            return fetched

        return fetch_in_slot
