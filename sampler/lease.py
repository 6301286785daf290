"""Leases: which processes of a fleet sharing one data_dir are alive, on any machine.

A pid means nothing across machines, so every pipeline process that works on a data_dir
holds a small lease file there, ``.leases/<host>-<pid>.lease``, naming its host, pid and
boot id and the wall-clock time of its last renewal.  A daemon thread renews it every
``seconds / RENEWALS`` seconds; a clean exit removes it.  A process that dies without a
goodbye (kill -9, a machine lost) stops renewing, and once ``seconds`` have passed since
the last renewal its lease is *expired*: its temporaries may be swept and luigid's tasks
run by its worker may be taken over by another machine (``tasks.recovery``).

What this assumes: the machines' clocks agree to well within ``seconds`` (NTP), and a
renewal becomes visible to the others within ``seconds`` (on NFS, ``seconds`` must exceed
the attribute cache, ``acdirmax``, 60 s by default: the fleet recipe uses 120 s).
A lease is an answer to "may it still be writing?", never a lock: two live processes are
kept apart by the output locks (flock) as before.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

FOLDER = ".leases"
SUFFIX = ".lease"
RENEWALS = 6  # renewals per lease period: a late one or two still leave it fresh
DEFAULT_SECONDS = 120.0
FORGOTTEN_AFTER = 24 * 3600.0  # an expired lease's file is removed once this old


def host_name(host: str | None = None) -> str:
    """``host`` (this machine's by default) as it appears in file names: no ``-`` or ``/``."""
    name = socket.gethostname() if host is None else host
    return name.replace("-", "_").replace("/", "_") or "localhost"


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def lease_path(data_dir: Path | str, host: str, pid: int) -> Path:
    return Path(data_dir, FOLDER, f"{host_name(host)}-{pid}{SUFFIX}")


@dataclass(frozen=True)
class LeaseRecord:
    host: str
    pid: int
    boot_id: str
    renewed: float  # time.time() of the owner's last renewal
    seconds: float  # the lease period the owner promised to renew within

    def fresh(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) - self.renewed <= self.seconds


def read_lease(path: Path) -> LeaseRecord | None:
    """The lease in ``path``, or None if there is none (or it is being replaced or damaged)."""
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
        return LeaseRecord(
            str(fields["host"]), int(fields["pid"]), str(fields["boot_id"]),
            float(fields["renewed"]), float(fields["seconds"]),
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None


def process_lease(data_dir: Path | str, host: str, pid: int) -> LeaseRecord | None:
    """The lease of process ``pid`` of ``host`` in ``data_dir``, if it ever held one there."""
    return read_lease(lease_path(data_dir, host, pid))


def host_leases(data_dir: Path | str, host: str) -> list[LeaseRecord]:
    """Every lease file of ``host`` (its name as in file names) in ``data_dir``."""
    folder = Path(data_dir, FOLDER)
    try:
        names = [entry.name for entry in os.scandir(folder)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    prefix = host_name(host) + "-"
    found = []
    for name in names:
        if name.startswith(prefix) and name.endswith(SUFFIX) and name[len(prefix) : -len(SUFFIX)].isdigit():
            record = read_lease(folder / name)
            if record is not None:
                found.append(record)
    return found


def leased_data_dir(path: Path) -> Path | None:
    """The data_dir above ``path`` that holds leases (a few stat calls), or None."""
    for parent in list(Path(path).parents)[:16]:
        if (parent / FOLDER).is_dir():
            return parent
    return None


class Lease:
    """This process's lease in one data_dir, renewed by a daemon thread until ``release``."""

    def __init__(self, data_dir: Path | str, seconds: float = DEFAULT_SECONDS) -> None:
        self.seconds = max(float(seconds), 0.5)
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.path = lease_path(data_dir, self.host, self.pid)
        self._boot = boot_id()
        self._stop = threading.Event()
        self.renew()
        self._thread = threading.Thread(target=self._renew_until_released, name="lease", daemon=True)
        self._thread.start()

    def renew(self) -> None:
        record = {
            "host": self.host, "pid": self.pid, "boot_id": self._boot,
            "renewed": time.time(), "seconds": self.seconds,
        }  # fmt: skip
        tmp = self.path.with_name(f".{self.path.name}.{threading.get_ident()}.new")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(record), encoding="utf-8")
            os.replace(tmp, self.path)  # replaced whole: a reader never sees half a lease
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()  # a full disk: the lease may expire, and then the process is "dead"

    def _renew_until_released(self) -> None:
        while not self._stop.wait(self.seconds / RENEWALS):
            self.renew()

    def release(self) -> None:
        """Stop renewing and remove the lease (a clean exit); only the owner process does."""
        self._stop.set()
        if os.getpid() == self.pid:  # a forked task process inherits the object, not the lease
            with contextlib.suppress(OSError):
                self.path.unlink()


_held: dict[str, Lease] = {}
_held_lock = threading.Lock()


def hold_lease(data_dir: Path | str, seconds: float = DEFAULT_SECONDS) -> Lease:
    """This process's lease in ``data_dir``, taken on first call, released at exit."""
    key = str(Path(data_dir).resolve())
    with _held_lock:
        lease = _held.get(key)
        if lease is None or lease.pid != os.getpid():
            if not _held:
                atexit.register(release_all)
            lease = _held[key] = Lease(data_dir, seconds)
        return lease


def release_all() -> None:
    with _held_lock:
        for lease in _held.values():
            lease.release()
        _held.clear()


def forget_old_leases(data_dir: Path | str, now: float | None = None) -> int:
    """Remove lease files expired for more than a day (left by processes that died)."""
    now = time.time() if now is None else now
    folder, removed = Path(data_dir, FOLDER), 0
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        if not entry.name.endswith(SUFFIX):
            continue
        record = read_lease(Path(entry.path))
        if record is not None and now - record.renewed > record.seconds + FORGOTTEN_AFTER:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed += 1
    return removed


# --------------------------------------------------------------------------- may it still write?

# Another host's leftovers (a shared data_dir) that no lease speaks for are swept only when
# this old: we cannot ask whether a process on another machine still runs.
FOREIGN_TEMPORARY_AGE = 24 * 3600


def pid_runs(pid: int) -> bool:
    """Whether process ``pid`` (of this host) runs; a zombie does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    try:  # a zombie (exited, not yet reaped) no longer writes anything
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def may_still_write(written: Path, host: str, pid: int | None) -> bool:
    """Whether process ``pid`` of ``host`` (``None``: unknown) may still be writing ``written``,
    a file in a data_dir (sampler.atomic's temporaries): a process of this host that runs,
    or a host that leases in the data_dir say so."""
    if host != host_name():
        return foreign_owner_is_alive(written, host)
    if pid is not None and pid_runs(pid):
        return True
    return twin_host_is_alive(written)


def twin_host_is_alive(temporary: Path) -> bool:
    """Whether another machine with this host's name (another boot id) holds a fresh lease in
    the data_dir: its pids mean nothing here, so its temporaries are kept."""
    data_dir = leased_data_dir(temporary)
    if data_dir is None:
        return False
    ours = boot_id()
    return any(lease.fresh() and lease.boot_id != ours for lease in host_leases(data_dir, host_name()))


def foreign_owner_is_alive(temporary: Path, host: str) -> bool:
    """Whether a process of another ``host`` may still write ``temporary``: while any process
    of that host renews a lease in the data_dir, yes (that host judges its own pids); once
    every lease of it expired, not unless the temporary was written within a lease period.
    A host that never held a lease there (an older version, or the library used directly)
    keeps its temporaries for ``FOREIGN_TEMPORARY_AGE``."""
    try:
        age = time.time() - temporary.lstat().st_mtime
    except FileNotFoundError:
        return False
    data_dir = leased_data_dir(temporary)
    leases = host_leases(data_dir, host) if data_dir is not None else []
    if not leases:
        return age < FOREIGN_TEMPORARY_AGE
    if any(lease.fresh() for lease in leases):
        return True
    return age < max(lease.seconds for lease in leases)
