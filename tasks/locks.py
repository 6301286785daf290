"""Output locks: a task's ``run()`` holds a lock keyed on its outputs in ``data_dir``.

Two processes (two ``--local-scheduler`` runs, or runs of two configurations sharing an
output) then never write one output at once; the second finds it done and returns.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import inspect
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("luigi-interface")


class LockedTask(Protocol):
    """What a locked run needs of its task (tasks.task.SamplerTask)."""

    data_dir: str

    def lock_key(self) -> str: ...

    def complete(self) -> bool: ...


def lock_path(data_dir: str, key: str) -> Path:
    return Path(data_dir, ".locks", hashlib.sha256(key.encode("utf-8")).hexdigest()[:24] + ".lock")


def lock_is_free(data_dir: str, key: str) -> bool:
    """Whether no process holds ``output_lock(data_dir, key)`` now (a probe: taken, let go)."""
    try:
        # Opened for writing: on NFS flock is emulated by a POSIX write lock, which an fd
        # opened read-only cannot take (EBADF, not "held").
        with os.fdopen(os.open(lock_path(data_dir, key), os.O_WRONLY), "wb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(handle, fcntl.LOCK_UN)
    except FileNotFoundError:
        pass
    return True


@contextlib.contextmanager
def output_lock(data_dir: str, key: str) -> Iterator[None]:
    """An exclusive lock on ``key`` in ``data_dir``, shared by every process using that folder.

    flock on a file in ``data_dir/.locks``: released by the kernel when its holder dies, so a
    crash never leaves a stale lock.  On NFS Linux emulates flock with a whole-file POSIX
    lock held by the server (NLM for v3, the protocol itself for v4), so it holds across
    machines unless the mount says ``local_lock=flock``/``all`` or ``nolock``; a lost
    machine's locks are freed when its NFS lease (v4, 90 s by default) runs out.
    """
    path = lock_path(data_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process writing %s", key)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


LOCKED_RUNS: set = set()  # the wrappers made below: a run() is wrapped once


def locked_run(run: Callable[..., Any]) -> Callable[..., Any]:
    """``run`` under the task's output lock; skipped if another process finished it meanwhile."""
    if inspect.isgeneratorfunction(run):  # dynamic dependencies: keep it a generator

        @functools.wraps(run)
        def locked_generator(self: LockedTask) -> Iterator[Any]:
            with output_lock(self.data_dir, self.lock_key()):
                if self.complete():
                    return
                yield from run(self)

        return locked_generator

    @functools.wraps(run)
    def locked(self: LockedTask) -> Any:
        with output_lock(self.data_dir, self.lock_key()):
            if self.complete():
                return None
            return run(self)

    return locked
