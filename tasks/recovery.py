"""A run right after a crash: what a dead run left behind, in data_dir and in luigid.

* **Temporaries.** The first time a run schedules a task of a ``data_dir``, it sweeps every
  temporary under that folder whose owner is dead (``sampler.atomic``), whatever it was asked
  for: a kill -9 can leave them beside outputs no later run asks for.
* **luigid's memory of the dead.** luigid goes on believing that a killed worker runs its
  tasks until it gives the worker up (``worker_disconnect_delay``, a minute, then its next
  prune): a rerun meanwhile would find its tasks "being run by another worker" and exit 10.
  A worker of this host whose process is gone runs nothing, and the task's output lock tells
  whether a process it left behind still writes.  Such a task is reported to luigid as failed
  by the dead worker, with one line saying so, and this run then schedules and runs it.  A
  live worker (its process runs) or one of another host is never overruled: two live workers
  never run one task.  (With ``--local-scheduler`` the scheduler dies with its run.)

luigi fires ``DEPENDENCY_PRESENT`` for every complete task it schedules and
``DEPENDENCY_DISCOVERED`` for every incomplete one with dependencies and for each of them,
before it tells the scheduler about them: every task of a run but an incomplete root
without dependencies passes through here first.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import luigi
import luigi.rpc
import luigi.scheduler

from sampler.atomic import pid_runs, sweep_dead_temporaries
from tasks.base import SamplerTask, current_worker, lock_is_free

log = logging.getLogger("luigi-interface")

_swept: set[str] = set()  # data_dirs swept by this process
_dead_running: dict[str, dict[str, tuple[str, int]]] = {}  # worker id -> {task id: (dead worker, pid)}


def sweep_once(data_dir: str) -> None:
    if data_dir in _swept:
        return
    _swept.add(data_dir)
    removed = sweep_dead_temporaries(Path(data_dir))
    if removed:
        log.info(
            "removed %d temporaries left under %s by processes that died (e.g. %s)",
            len(removed),
            data_dir,
            os.path.relpath(removed[0], data_dir),
        )


def dead_workers_tasks(scheduler: luigi.rpc.RemoteScheduler) -> dict[str, tuple[str, int]]:
    """{task id: (worker id, pid)} for what luigid says runs in a dead worker of this host."""
    try:
        workers = scheduler.worker_list()  # type: ignore[attr-defined]
    except Exception:  # any: an old or odd luigid, or none (the run says so elsewhere)
        return {}
    host, found = socket.gethostname(), {}
    for worker in workers or []:
        pid = worker.get("pid")
        if worker.get("host") != host or not isinstance(pid, int) or pid == os.getpid() or pid_runs(pid):
            continue
        for task_id in worker.get("running") or {}:
            found[task_id] = (worker["name"], pid)
    return found


def take_over_if_dead(task: luigi.Task) -> None:
    """If luigid says ``task`` runs in a dead worker of this host, tell it the task failed."""
    worker = current_worker()
    if worker is None or not isinstance(worker._scheduler, luigi.rpc.RemoteScheduler):
        return
    dead = _dead_running.get(worker._id)
    if dead is None:
        dead = _dead_running[worker._id] = dead_workers_tasks(worker._scheduler)
    if task.task_id not in dead:
        return
    dead_worker, pid = dead.pop(task.task_id)
    free = not isinstance(task, SamplerTask) or lock_is_free(task.data_dir, task.lock_key())
    try:
        worker._scheduler.add_task(  # type: ignore[attr-defined]
            task_id=task.task_id,
            status=luigi.scheduler.FAILED,
            worker=dead_worker,
            runnable=False,
            expl=f"its worker (pid {pid} on this host) died",
        )
        # A task that failed often is disabled by that failure: this command asks for it again.
        worker._scheduler.re_enable_task(task.task_id)  # type: ignore[attr-defined]
    except luigi.rpc.RPCError:
        return  # no luigid: the run stops saying so
    log.warning(
        "%s: luigid still listed it as run by worker pid %d, which died (%s); this run does it",
        task.task_id,
        pid,
        "its lock is free" if free else "a process it left behind holds its lock: this run waits for it",
    )


def on_scheduling(task: luigi.Task) -> None:
    if isinstance(task, SamplerTask):
        sweep_once(task.data_dir)
    take_over_if_dead(task)


@SamplerTask.event_handler(luigi.Event.DEPENDENCY_PRESENT)
def complete_task_scheduled(task: luigi.Task) -> None:
    on_scheduling(task)


@SamplerTask.event_handler(luigi.Event.DEPENDENCY_DISCOVERED)
def incomplete_task_scheduled(task: luigi.Task, dependency: luigi.Task) -> None:
    on_scheduling(task)
    on_scheduling(dependency)
