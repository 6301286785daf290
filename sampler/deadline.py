"""A whole-download deadline for requests/urllib3, whatever the response's framing.

requests' ``timeout`` bounds each socket read, so a server that trickles a byte
every few seconds keeps a download alive for ever.  Here a watchdog thread shuts
the sockets of any download that outlives its deadline: a thread blocked in
``recv()`` then sees EOF at once (on Linux, ``shutdown`` wakes it; ``close``
would not), and the download returns instead of leaving a thread behind that
keeps its process from exiting.

Sockets are remembered when urllib3 creates or reuses them, not looked up on the
connection at expiry time: for a close-delimited response (no Content-Length,
HTTP/1.0 style) http.client sets ``conn.sock = None`` once the headers are read,
and the body is then read through the response's own file object over that same
socket.  A socket closed meanwhile is harmless: Python marks a closed socket
object with fd -1, so a late shutdown can never hit a reused descriptor.

Use: mount ``WatchedAdapter`` on a ``requests.Session`` and run each download
inside ``with deadline_guard(seconds) as guard:``; check ``guard.expired`` when
a read fails or ends early.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import requests.adapters
import urllib3.connectionpool

_active = threading.local()  # .guard: the Guard of the download running on this thread


class DeadlineExceeded(Exception):
    """Raised inside urllib3 when a request would start after its deadline."""


@dataclass(eq=False)
class Guard:
    """One download's deadline and the sockets it has used so far."""

    deadline: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    sockets: list[socket.socket] = field(default_factory=list)
    expired: bool = False
    done: bool = False

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check(self) -> None:
        """Raise DeadlineExceeded when the deadline has passed (before starting a request)."""
        if self.expired or self.remaining() <= 0:
            self.expire()
            raise DeadlineExceeded()

    def attach(self, sock: object) -> None:
        """Remember a socket this download uses; shut it at once if the deadline has passed."""
        raw = getattr(sock, "socket", sock)  # urllib3's TLS-in-TLS transport wraps the real one
        if not isinstance(raw, socket.socket):
            return
        with self.lock:
            if not any(raw is s for s in self.sockets):
                self.sockets.append(raw)
            late = self.expired
        if late:
            _shut(raw)

    def expire(self) -> None:
        with self.lock:
            if self.done:
                return
            self.expired = True
            sockets = list(self.sockets)
        for sock in sockets:
            _shut(sock)

    def finish(self) -> None:
        with self.lock:
            self.done = True
            self.sockets.clear()


def _shut(sock: socket.socket) -> None:
    # shutdown (not close) wakes a thread blocked in recv() and makes it see EOF;
    # socket.socket.shutdown skips SSLSocket's bookkeeping, which would race with the reader.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed (fd -1) or never connected


class Watchdog:
    """One daemon thread that expires guards whose deadline passed; it exits when idle."""

    _IDLE_EXIT = 5.0  # seconds without work before the thread exits (restarted on demand)

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Guard]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, guard: Guard) -> None:
        with self._cond:
            heapq.heappush(self._heap, (guard.deadline, next(self._seq), guard))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deadline-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            due: list[Guard] = []
            with self._cond:
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now or self._heap[0][2].done):
                    due.append(heapq.heappop(self._heap)[2])
                if not due:
                    if not self._heap:
                        self._cond.wait(self._IDLE_EXIT)
                        if not self._heap:
                            self._thread = None
                            return
                    else:
                        self._cond.wait(self._heap[0][0] - now)
                    continue
            for guard in due:
                guard.expire()  # no-op for guards already finished


WATCHDOG = Watchdog()


def current_guard() -> Guard | None:
    return getattr(_active, "guard", None)


def start_guard(seconds: float) -> Guard:
    """Arm a deadline ``seconds`` from now for this thread's requests; pair with ``end_guard``."""
    guard = Guard(time.monotonic() + seconds)
    WATCHDOG.arm(guard)
    _active.guard = guard
    return guard


def end_guard(guard: Guard) -> None:
    guard.finish()
    if current_guard() is guard:
        _active.guard = None


@contextlib.contextmanager
def deadline_guard(seconds: float) -> Iterator[Guard]:
    """Run the block's requests (on this thread, through a WatchedAdapter) under one deadline."""
    guard = start_guard(seconds)
    try:
        yield guard
    finally:
        end_guard(guard)


class WatchedConnectionMixin:
    """Tells the thread's guard about every socket urllib3 opens or reuses."""

    def _new_conn(self) -> socket.socket:
        guard = current_guard()
        if guard is not None:
            guard.check()
        sock = super()._new_conn()  # type: ignore[misc]
        if guard is not None:
            guard.attach(sock)
        return sock

    # urllib3 calls request() on the caller's thread for every request, also on a
    # kept-alive connection whose socket _new_conn recorded for an earlier download.
    def request(self, *args: object, **kwargs: object) -> None:
        guard = current_guard()
        if guard is not None:
            guard.check()
            guard.attach(getattr(self, "sock", None))
        super().request(*args, **kwargs)  # type: ignore[misc]
        if guard is not None:
            guard.attach(getattr(self, "sock", None))  # connected just now (plain HTTP)


def pool_classes(*mixins: type) -> dict[str, type]:
    """urllib3 pool classes (by scheme) whose connections carry ``mixins`` and the watch."""
    bases = (*mixins, WatchedConnectionMixin)
    http_conn = type("WatchedHTTPConnection", (*bases, urllib3.connectionpool.HTTPConnection), {})
    https_conn = type("WatchedHTTPSConnection", (*bases, urllib3.connectionpool.HTTPSConnection), {})
    return {
        "http": type(
            "WatchedHTTPPool", (urllib3.connectionpool.HTTPConnectionPool,), {"ConnectionCls": http_conn}
        ),
        "https": type(
            "WatchedHTTPSPool", (urllib3.connectionpool.HTTPSConnectionPool,), {"ConnectionCls": https_conn}
        ),
    }


WATCHED_POOLS = pool_classes()


class WatchedAdapter(requests.adapters.HTTPAdapter):
    """An HTTPAdapter whose pools (direct and through an HTTP proxy) use ``pools``."""

    def __init__(self, *args: object, pools: dict[str, type] | None = None, **kwargs: object) -> None:
        self._pools = pools or WATCHED_POOLS
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]
        self.poolmanager.pool_classes_by_scheme = self._pools

    def proxy_manager_for(self, proxy: str, **kwargs: object) -> object:
        manager = super().proxy_manager_for(proxy, **kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS pools keep their own classes
            manager.pool_classes_by_scheme = self._pools
        return manager

    # HTTPAdapter pickles its attributes by name; keep ours across a copy.
    __attrs__ = [*requests.adapters.HTTPAdapter.__attrs__, "_pools"]
