"""Hosts found dead during a run, shared by every process that uses one data_dir.

Once a host fails at the name or connection level (DNS failure, connection
refused, or a proxy's own "origin unreachable" page: ``sampler.fetch.retry_policy``),
every later URL on it is settled without a request, as ``dead_host_known``, in any
category and any worker process.  A dead host is dead for every URL on it, so the
kept images do not depend on which category met it first: only the outcome name
and the number of requests do.

Storage, chosen to be crash-safe and NFS-friendly without locks: each process
appends to its own file (``<folder>/<machine>-<pid>-<random>.hosts``), one
``host<TAB>reason`` line per dead host, with one ``write`` per line.  No two
writers share a file, so no append can interleave (O_APPEND is not atomic on
NFS); a line cut short by a kill has no newline and is ignored by readers.
Readers re-read only what grew since their last look, at most every
``refresh`` seconds.

"For the run" is a time, not a process: a line carries the wall-clock time it was
written, and a host found dead more than ``max_age`` seconds ago (an hour by default:
a run, its fleet and its reruns after a crash) is asked again.  Otherwise one refused
connection today would settle that host's URLs for every later run on this data_dir.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sampler.fetch.http_fetch import FetchOutcome
from sampler.naming import host_port
from sampler.outcomes import Outcome

SUFFIX = ".hosts"
MAX_AGE = 3600.0  # seconds a host found dead stays dead for every process of the data_dir


class DeadHosts:
    """The run's dead hosts, read from and appended to ``folder`` (created on first write)."""

    def __init__(self, folder: Path, refresh: float = 0.2, max_age: float = MAX_AGE) -> None:
        self.folder = Path(folder)
        self.refresh = refresh
        self.max_age = max_age
        self._lock = threading.Lock()
        self._dead: dict[str, tuple[str, float]] = {}  # host -> (reason, when found: time.time())
        self._read_upto: dict[str, int] = {}  # file name -> bytes consumed (complete lines)
        self._next_scan = 0.0
        self._own = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        self._fd: int | None = None

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> DeadHosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _scan(self) -> None:
        """Read what other processes appended since the last scan (lock held)."""
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return
        for entry in entries:
            if not entry.name.endswith(SUFFIX) or entry.name == self._own:
                continue
            done = self._read_upto.get(entry.name, 0)
            try:
                if entry.stat().st_size <= done:
                    continue
                with open(entry.path, "rb") as src:
                    src.seek(done)
                    data = src.read()
            except OSError:
                continue
            complete = data.rfind(b"\n") + 1  # a torn last line waits (or is a crash's leftover)
            for line in data[:complete].decode("utf-8", "replace").splitlines():
                host, _, rest = line.partition("\t")
                reason, _, when = rest.rpartition("\t")
                try:
                    found = float(when)
                except ValueError:
                    continue  # no time (or a damaged line): as good as expired
                if host and found > self._dead.get(host, ("", float("-inf")))[1]:
                    self._dead[host] = (reason, found)
            self._read_upto[entry.name] = done + complete

    def reason(self, host: str) -> str | None:
        """Why ``host`` is dead, or None if no process of the run found it dead."""
        with self._lock:
            found = self._fresh(host)
            if found is None and time.monotonic() >= self._next_scan:
                self._scan()
                self._next_scan = time.monotonic() + self.refresh
                found = self._fresh(host)
            return found

    def _fresh(self, host: str) -> str | None:
        entry = self._dead.get(host)
        if entry is None or time.time() - entry[1] > self.max_age:
            return None
        return entry[0]

    def add(self, host: str, reason: str) -> None:
        reason = " ".join(reason.split())[:300]  # one line, no tabs
        host = "".join(host.split())
        with self._lock:
            if self._fresh(host) is not None:
                return
            now = time.time()
            self._dead[host] = (reason, now)
            if self._fd is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.folder / self._own, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.write(self._fd, f"{host}\t{reason}\t{now:.3f}\n".encode())

    def guard(self, fetch: Callable[[str], FetchOutcome]) -> Callable[[str], FetchOutcome]:
        """``fetch`` that settles URLs on known-dead hosts without a request, and
        remembers the hosts that ``fetch`` reports dead."""

        def fetch_unless_dead(url: str) -> FetchOutcome:
            known = self.known_dead(url)
            if known is not None:
                return known
            fetched = fetch(url)
            if fetched.dead_host:
                host = host_port(fetched.final_url or url)  # after redirects: the host that failed
                if host is not None:
                    self.add(host, fetched.error or fetched.outcome)
            return fetched

        return fetch_unless_dead

    def known_dead(self, url: str) -> FetchOutcome | None:
        """The ``dead_host_known`` outcome for ``url`` if its host is known dead."""
        host = host_port(url)
        reason = self.reason(host) if host is not None else None
        if reason is None:
            return None
        return FetchOutcome(
            url=url,
            final_url=url,
            status=None,
            outcome=Outcome.DEAD_HOST_KNOWN,
            body=None,
            bytes=0,
            ms=0,
            error=f"host {host} found dead earlier in the run: {reason}"[:300],
            redirects=0,
            attempts=0,
        )
