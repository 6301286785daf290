"""What the sampler adds to luigi's worker: its event handlers, and SIGTERM.

A task that cannot be scheduled stops the worker from asking for more work (luigi would
otherwise keep a keep-alive worker waiting for ever), a fault of the environment fails
fast, and a task luigid disabled after an earlier failure is re-enabled by a new command.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import sys

import luigi
import luigi.rpc
import luigi.worker

from tasks.errors import (
    fail_fast_on_environment_fault,
    fail_fast_on_vanished_dependencies,
    no_scheduler_hint,
    scheduler_url,
)
from tasks.task import SamplerTask

log = logging.getLogger("luigi-interface")


def current_worker() -> luigi.worker.Worker | None:
    """The luigi Worker of this process, found through the SIGUSR1 handler it installs
    (luigi offers no other way to reach it from a task's event handler).

    luigi's private API (tests/test_luigi_private_api.py): the handler is the Worker's bound
    ``handle_interrupt``, installed when the Worker is made."""
    handler = signal.getsignal(signal.SIGUSR1)
    worker = getattr(handler, "__self__", None)
    return worker if isinstance(worker, luigi.worker.Worker) else None


_no_luigid_said: list[str] = []


def say_no_luigid() -> None:
    """One line, printed last (after luigi's traceback), saying how to get a scheduler."""
    if _no_luigid_said:
        return
    _no_luigid_said.append(no_scheduler_hint(scheduler_url()))
    atexit.register(lambda: print(_no_luigid_said[0], file=sys.stderr, flush=True))


@SamplerTask.event_handler(luigi.Event.BROKEN_TASK)
def stop_on_unschedulable(task: luigi.Task, error: BaseException) -> None:
    """A task that cannot be scheduled: run nothing and exit, instead of luigi's keep-alive
    worker waiting for ever for a dependency nobody can run."""
    if isinstance(error, luigi.rpc.RPCError):
        say_no_luigid()
    else:
        log.error("cannot schedule %s: %s; nothing will run", task, error)
    worker = current_worker()
    if worker is not None:
        worker.handle_interrupt(signal.SIGUSR1, None)  # luigi's own "stop asking for work"


@SamplerTask.event_handler(luigi.Event.FAILURE)
def fail_fast(task: luigi.Task, error: BaseException) -> None:
    """A full disk or an unwritable data_dir, or dependencies whose outputs vanished: one line
    at the end, no retries (tasks.errors)."""
    fail_fast_on_environment_fault(task, error, current_worker())
    fail_fast_on_vanished_dependencies(task, error, current_worker())


_reenabled_by: dict[str, set[str]] = {}


@SamplerTask.event_handler(luigi.Event.DEPENDENCY_DISCOVERED)
def reenable_disabled(task: luigi.Task, dependency: luigi.Task) -> None:
    """A new command asks again for what luigid disabled after failures: let it run now.

    luigid keeps a task that failed ``retry_count`` times disabled for ``disable_persist``
    seconds, and a command started meanwhile would exit "not granted run permission".
    """
    worker = current_worker()
    if worker is None:
        return
    # luigi's private Worker._scheduler and ._id (tests/test_luigi_private_api.py).
    scheduler = worker._scheduler
    disabled = _reenabled_by.get(worker._id)
    if disabled is None:
        try:
            listed = scheduler.task_list(status="DISABLED", upstream_status="", limit=False)
        except luigi.rpc.RPCError:
            say_no_luigid()
            listed = {}
        except Exception:  # any: an old or odd luigid; rerunning later still works
            listed = {}
        disabled = _reenabled_by[worker._id] = set(listed or {})
    for candidate in (task, dependency):
        if candidate.task_id in disabled:
            disabled.discard(candidate.task_id)
            scheduler.re_enable_task(candidate.task_id)
            log.info("re-enabled %s, which luigid had disabled after an earlier failure", candidate)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: luigi's worker then terminates its task processes, and
    every atomic write in progress removes its temporary."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(f"signal {signum}")


def stop_whole_run_on_sigterm() -> None:
    """Make SIGTERM stop the run, worker processes included (they inherit the handler)."""
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _raise_terminated)
