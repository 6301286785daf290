"""A run right after a crash: what a dead run left behind, in data_dir and in luigid.

* **Temporaries.** The first time a run schedules a task of a ``data_dir``, it sweeps every
  temporary under that folder whose owner is dead (``sampler.atomic``), whatever it was asked
  for: a kill -9 can leave them beside outputs no later run asks for.
* **Leases.** Once it schedules a task to run there, the process holds a lease in that
  data_dir (``sampler.lease``),
  renewed by a daemon thread: other machines of the fleet read it to tell whether this
  process, and so its host's temporaries, are alive.  ``[fleet] lease_seconds`` sets how
  long a process that stopped renewing counts as alive (120 s by default, beyond NFS's
  attribute cache).
* **luigid's memory of the dead.** luigid goes on believing that a killed worker runs its
  tasks until it gives the worker up (``worker_disconnect_delay``, a minute, then its next
  prune): a rerun meanwhile would find its tasks "being run by another worker" and exit 10.
  A worker runs nothing any more when it is of this host and its process is gone, or of
  another host and its lease in the task's data_dir expired (a machine lost, or a kill -9
  there); the task's output lock tells whether a process it left behind still writes.  Such
  a task is reported to luigid as failed by the dead worker, with one line saying so, and
  this run then schedules and runs it.  A running process (this host) or a fresh lease
  (another host) is never overruled, nor a worker of another host that holds no lease (an
  older version: luigid gives it up in time): two live workers never run one task.
* **A fleet's watch.** A keep-alive worker waiting for tasks other machines run would wait
  for luigid to give a dead one up; a daemon thread looks every ``lease_seconds / 2`` for
  tasks run by workers whose leases expired, takes them over as above and hands them back
  to luigid as pending, so that a waiting worker of the fleet runs them.  (With
  ``--local-scheduler`` the scheduler dies with its run.)  A task whose output is complete
  is told to luigid as done instead: its worker died after the task wrote its output and
  before it told luigid.  The fleet's other workers found it complete when they scheduled
  it, and luigid ignored them, because it listed the task as running: none of them would
  ever take it as pending, and whoever waits for it would wait for ever.
* **Orphans.** luigid lets a task run only in a worker that scheduled it, and a dynamic
  dependency (FetchFives' top-up rounds, yielded from its run) is scheduled by the one worker
  that ran the task yielding it.  Once that worker is dead, its round (handed back, or still
  pending) has no worker that may run it, and whoever waits for FetchFives waits for ever.
  The watch makes this worker a worker of every pending task whose workers are all dead (or
  all given up by luigid) and that a task this worker waits for depends on; luigi's worker
  then loads it from luigid's record (module, family, parameters) and runs it.

luigi fires ``DEPENDENCY_PRESENT`` for every complete task it schedules and
``DEPENDENCY_DISCOVERED`` for every incomplete one with dependencies and for each of them,
before it tells the scheduler about them: every task of a run but an incomplete root
without dependencies passes through here first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from pathlib import Path

import luigi
import luigi.configuration
import luigi.rpc
import luigi.scheduler
import luigi.task_register

from sampler.atomic import sweep_dead_temporaries
from sampler.lease import DEFAULT_SECONDS, boot_id, forget_old_leases, hold_lease, pid_runs, process_lease
from tasks.locks import lock_is_free
from tasks.task import SamplerTask
from tasks.worker_hooks import current_worker

log = logging.getLogger("luigi-interface")

_swept: set[str] = set()  # data_dirs swept by this process
# task id -> the task, for every task this process scheduled (the watch asks if it is complete)
_scheduled: dict[str, luigi.Task] = {}
# worker id -> {task id: (dead worker, pid, host)}
_dead_running: dict[str, dict[str, tuple[str, int, str]]] = {}


def sweep_once(data_dir: str) -> None:
    if data_dir in _swept:
        return
    _swept.add(data_dir)
    forget_old_leases(data_dir)
    removed = sweep_dead_temporaries(Path(data_dir))
    if removed:
        log.info(
            "removed %d temporaries left under %s by processes that died (e.g. %s)",
            len(removed),
            data_dir,
            os.path.relpath(removed[0], data_dir),
        )


def worker_is_dead(worker: dict, task: dict | None = None) -> bool:
    """Whether ``worker`` (an entry of luigid's worker_list) runs nothing any more: a process
    of this host that is gone, or one of another host whose lease in the data_dir of
    ``task`` (an entry of its ``running``) expired."""
    pid = worker.get("pid")
    if not isinstance(pid, int) or (worker.get("host") == socket.gethostname() and pid == os.getpid()):
        return False
    data_dir = ((task or {}).get("params") or {}).get("data_dir")
    lease = process_lease(data_dir, str(worker.get("host")), pid) if data_dir else None
    if worker.get("host") == socket.gethostname() and (lease is None or lease.boot_id == boot_id()):
        return not pid_runs(pid)
    # Another host, or another machine with this one's name (another boot id): its lease says.
    return lease is not None and not lease.fresh()


def dead_workers_tasks(scheduler: luigi.rpc.RemoteScheduler) -> dict[str, tuple[str, int, str]]:
    """{task id: (worker id, pid, host)} for what luigid says runs in a dead worker."""
    try:
        workers = scheduler.worker_list()  # type: ignore[attr-defined]
    except Exception:  # any: an old or odd luigid, or none (the run says so elsewhere)
        return {}
    found = {}
    for worker in workers or []:
        for task_id, task in (worker.get("running") or {}).items():
            if worker_is_dead(worker, task if isinstance(task, dict) else None):
                found[task_id] = (worker["name"], worker["pid"], str(worker.get("host")))
    return found


def declare_failed(
    scheduler: luigi.rpc.RemoteScheduler, task_id: str, dead_worker: str, pid: int, host: str
) -> bool:
    """Tell luigid that ``task_id`` failed in ``dead_worker`` (and may run again at once)."""
    where = "on this host" if host == socket.gethostname() else f"on {host}, its lease expired"
    try:
        scheduler.add_task(  # type: ignore[attr-defined]
            task_id=task_id,
            status=luigi.scheduler.FAILED,
            worker=dead_worker,
            runnable=False,
            expl=f"its worker (pid {pid} {where}) died",
        )
        # A task that failed often is disabled by that failure: this command asks for it again.
        scheduler.re_enable_task(task_id)  # type: ignore[attr-defined]
    except luigi.rpc.RPCError:
        return False  # no luigid: the run stops saying so
    return True


def take_over_if_dead(task: luigi.Task) -> None:
    """If luigid says ``task`` runs in a dead worker, tell it the task failed."""
    # luigi's private Worker._scheduler and ._id (tests/test_luigi_private_api.py).
    worker = current_worker()
    if worker is None or not isinstance(worker._scheduler, luigi.rpc.RemoteScheduler):
        return
    dead = _dead_running.get(worker._id)
    if dead is None:
        dead = _dead_running[worker._id] = dead_workers_tasks(worker._scheduler)
        if isinstance(task, SamplerTask):
            watch_the_fleet(worker._scheduler, lease_seconds(), worker._id)
    if task.task_id not in dead:
        return
    dead_worker, pid, host = dead.pop(task.task_id)
    free = not isinstance(task, SamplerTask) or lock_is_free(task.data_dir, task.lock_key())
    if not declare_failed(worker._scheduler, task.task_id, dead_worker, pid, host):
        return
    log.warning(
        "%s: luigid still listed it as run by worker pid %d on %s, which died (%s); this run does it",
        task.task_id,
        pid,
        host,
        "its lock is free" if free else "a process it left behind holds its lock: this run waits for it",
    )


_watching: list[threading.Thread] = []


def watch_the_fleet(scheduler: luigi.rpc.RemoteScheduler, seconds: float, worker_id: str) -> None:
    """Start (once per process) the daemon thread that takes over tasks run by workers whose
    leases expired while this process waits, handing them back to luigid as pending, and
    makes ``worker_id`` a worker of the dead workers' pending tasks it waits for."""
    if _watching:
        return
    # luigi's private RemoteScheduler._url (tests/test_luigi_private_api.py).
    url = scheduler._url  # its own client: the worker's is not shared across threads

    def watch() -> None:
        own = luigi.rpc.RemoteScheduler(url)
        while True:
            time.sleep(max(seconds / 2, 0.2))
            try:
                take_over_from_the_dead(own)
                adopt_orphans(own, worker_id)
            except Exception:  # any: the watch goes on; the run itself reports luigid's absence
                log.debug("fleet watch: luigid did not answer", exc_info=True)

    thread = threading.Thread(target=watch, name="fleet-watch", daemon=True)
    _watching.append(thread)
    thread.start()


def completed_before_its_worker_died(task_id: str) -> bool:
    """Whether ``task_id``, scheduled by this process, is complete (its output written)."""
    task = _scheduled.get(task_id)
    if task is None:
        return False  # not asked for here: the workers that asked for it judge it
    try:
        return bool(task.complete())
    except Exception:  # any: a damaged output is not complete; the task runs again and says so
        log.debug("fleet watch: %s.complete() failed", task_id, exc_info=True)
        return False


def declare_done(scheduler: luigi.rpc.RemoteScheduler, task_id: str, dead_worker: str) -> bool:
    """Tell luigid that ``task_id`` was done by ``dead_worker`` (what it died before saying)."""
    try:
        scheduler.add_task(  # type: ignore[attr-defined]
            task_id=task_id, status=luigi.scheduler.DONE, worker=dead_worker, runnable=False
        )
    except luigi.rpc.RPCError:
        return False
    return True


def take_over_from_the_dead(scheduler: luigi.rpc.RemoteScheduler) -> None:
    """Every task luigid says a dead worker runs: done if its output is complete, else failed
    by it, then pending for the fleet."""
    for task_id, (dead_worker, pid, host) in dead_workers_tasks(scheduler).items():
        if completed_before_its_worker_died(task_id):
            if declare_done(scheduler, task_id, dead_worker):
                log.warning(
                    "%s: its worker (pid %d on %s) died after finishing it, before telling luigid; "
                    "told luigid it is done",
                    task_id, pid, host,
                )  # fmt: skip
            continue
        if declare_failed(scheduler, task_id, dead_worker, pid, host):
            with contextlib.suppress(luigi.rpc.RPCError):
                scheduler.forgive_failures(task_id)  # type: ignore[attr-defined]
            log.warning(
                "%s: its worker (pid %d on %s) died; handed back to luigid for the fleet", task_id, pid, host
            )


_not_needed: set[str] = set()  # orphans no task of this worker waits for (a dependent adds itself)


def runnable_sampler_task(family: str) -> bool:
    """Whether tasks of ``family`` are the sampler's and run here (not external)."""
    try:
        cls = luigi.task_register.Register.get_task_cls(family)
    except luigi.task_register.TaskClassException:
        return False  # not importable here: another version's task, left to its workers
    return issubclass(cls, SamplerTask) and cls.run is not luigi.Task.run


def adopt_orphans(scheduler: luigi.rpc.RemoteScheduler, worker_id: str) -> list[str]:
    """Make ``worker_id`` a worker of every pending task whose workers are all dead (or none
    left: luigid gave them up) and that a task ``worker_id`` works for depends on: e.g. a
    top-up round a dead worker yielded.  Returns their ids."""
    pending = scheduler.task_list(status=luigi.scheduler.PENDING, upstream_status="", limit=False)  # type: ignore[attr-defined]
    if not pending or not isinstance(next(iter(pending.values())), dict):
        return []
    listed = {worker["name"]: worker for worker in scheduler.worker_list() or []}  # type: ignore[attr-defined]

    def dead(worker: str, task: dict) -> bool:
        return worker not in listed or worker_is_dead(listed[worker], task)

    orphans = [
        task_id
        for task_id, task in pending.items()
        if task_id not in _not_needed
        and worker_id not in task["workers"]
        and all(dead(worker, task) for worker in task["workers"])
        and runnable_sampler_task(str(task.get("name")))
    ]
    adopted = []
    for task_id in orphans:
        dependents = scheduler.inverse_dep_graph(task_id=task_id, include_done=False)  # type: ignore[attr-defined]
        if not any(worker_id in entry.get("workers", ()) for entry in (dependents or {}).values()):
            _not_needed.add(task_id)
            continue
        # status PENDING, runnable: luigid adds this worker to the task's workers (as when it
        # schedules the task), and its get_work hands the task here, where luigi's worker
        # loads it from luigid's record ("Did not schedule ..., will load it dynamically"):
        # luigi's private Worker._get_work, and luigid's entries (tests/test_luigi_private_api.py).
        scheduler.add_task(  # type: ignore[attr-defined]
            task_id=task_id, status=luigi.scheduler.PENDING, worker=worker_id, runnable=True
        )
        adopted.append(task_id)
        log.warning("%s: pending for dead workers only; this run does it", task_id)
    return adopted


def lease_seconds() -> float:
    return luigi.configuration.get_config().getfloat("fleet", "lease_seconds", DEFAULT_SECONDS)


def on_scheduling(task: luigi.Task) -> None:
    _scheduled[task.task_id] = task
    if isinstance(task, SamplerTask):
        sweep_once(task.data_dir)
    take_over_if_dead(task)


@SamplerTask.event_handler(luigi.Event.DEPENDENCY_PRESENT)
def complete_task_scheduled(task: luigi.Task) -> None:
    on_scheduling(task)


@SamplerTask.event_handler(luigi.Event.DEPENDENCY_DISCOVERED)
def incomplete_task_scheduled(task: luigi.Task, dependency: luigi.Task) -> None:
    if isinstance(task, SamplerTask):
        # Something will be written: from now on other machines must see this process alive.
        # (A run with nothing to do leaves data_dir untouched, its lease folder included.)
        hold_lease(task.data_dir, lease_seconds())
    on_scheduling(task)
    on_scheduling(dependency)
