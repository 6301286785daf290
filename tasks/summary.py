"""luigi's closing summary and exit code, made to agree with what the run did.

Both ``luigi --module pipeline X`` and ``python -m pipeline X`` end in luigi's
``run_with_retcodes``, which reads ``luigi.execution_summary._summary_dict`` for the exit code
and prints ``summary()`` (which reads ``_summary_format``).  Two things luigi gets wrong here:

* It prints "This progress looks :)" over a run that exits 10 or 25 because the task asked
  for was being run by another worker, or not run at all.  The line then says ``:|`` and why.
  And it exits 10 or 25 when another worker ran some dependency, even though the task asked
  for is done: that run exits 0, and what the other worker finished counts as complete.

The end of a run whose task asked for is done is also where the published view is made
(``SamplerTask.publish``: data_dir's manifest.csv, images/, reports and export/<name>/ become
copies of that configuration's keyed outputs), under one lock per data_dir: the view is the
configuration asked for last, and a run that cannot publish (a body lost from the store
meanwhile) fails with one line saying why instead of exiting 0.  Every output is keyed by its
configuration, so nothing another configuration does can make a finished task incomplete.

A run whose luigid went away (killed, restarted, unreachable) and that did not finish says
so in one line, last: rerunning the same command resumes.
"""

from __future__ import annotations

import atexit
import logging
import sys
from typing import Any

import luigi
import luigi.execution_summary as execution_summary
from luigi.execution_summary import LuigiStatusCode

from tasks.errors import scheduler_url
from tasks.locks import output_lock
from tasks.task import SamplerTask

log = logging.getLogger("luigi-interface")

# luigi's private summary functions, replaced by install() (tests/test_luigi_private_api.py).
_original_summary_dict = execution_summary._summary_dict
_original_summary_format = execution_summary._summary_format
_published: dict[str, bool] = {}  # worker id -> whether its root was published at the end
_scheduler_lost: list[str] = []
_scheduler_url: list[str] = []  # the luigid this run talks to, noted when its worker starts


def root_task(worker: luigi.worker.Worker) -> luigi.Task | None:
    # luigi's private Worker._scheduled_tasks and ._first_task (tests/test_luigi_private_api.py)
    return worker._scheduled_tasks.get(worker._first_task)


PUBLISHED_VIEW = "published view"  # the lock key of data_dir's top-level copies


def published(worker: luigi.worker.Worker, task: SamplerTask) -> bool:
    """Publish ``task``'s configuration (once per worker); whether that worked."""
    # luigi's private Worker._id (tests/test_luigi_private_api.py).
    if worker._id not in _published:
        try:
            with output_lock(task.data_dir, PUBLISHED_VIEW):  # one configuration's copies at a time
                task.publish()
            _published[worker._id] = True
        except Exception as error:  # any: the run must not exit 0 over a view it could not make
            log.error("%s is done, but publishing it at the top of %s failed: %s", task, task.data_dir, error)
            _published[worker._id] = False
    return _published[worker._id]


# The statuses luigi gives a task another worker ran, or ran first.
SOMEONE_ELSES = ("still_pending_not_ext", "run_by_other_worker", "upstream_run_by_other_worker", "not_run")


def is_complete(task: luigi.Task) -> bool:
    try:
        return bool(task.complete())
    except Exception:  # any: not known to be complete
        return False


def honest_summary_dict(worker: luigi.worker.Worker) -> dict[str, Any]:
    set_tasks = _original_summary_dict(worker)
    root = root_task(worker)
    done = set_tasks["completed"] | set_tasks["already_done"]
    if not isinstance(root, SamplerTask) or root not in done:
        return set_tasks
    if not getattr(root, "checked_again_at_end", True):  # an action, not a product (PruneStore)
        return set_tasks
    if published(worker, root):
        # Done, whoever ran some of its dependencies: luigi would exit 10 (already_running) or
        # 25 (not_run) for them, under its ":)" or ":|".  What another worker finished is
        # complete: say so.
        elsewhere = set().union(*(set_tasks[kind] for kind in SOMEONE_ELSES))
        finished = {task for task in elsewhere if is_complete(task)}
        for kind in SOMEONE_ELSES:
            set_tasks[kind] -= finished
        set_tasks["run_by_other_worker"] = set_tasks["not_run"] = set()  # the exit code: done
        set_tasks["already_done"] |= finished
    else:
        set_tasks["completed"].discard(root)
        set_tasks["already_done"].discard(root)
        set_tasks["failed"].add(root)
        set_tasks["ever_failed"].add(root)
    return set_tasks


def unfinished_reason(set_tasks: dict[str, Any], worker: luigi.worker.Worker) -> str | None:
    """Why a run luigi calls a success did not do what it was asked, or None."""
    root = root_task(worker)
    if root is None or root in set_tasks["completed"] | set_tasks["already_done"]:
        return None
    others = set_tasks["run_by_other_worker"]
    if others:
        return f"{len(others)} task(s) were run by another worker: {root.task_family} is not done by this run"
    return f"{root.task_family} was not run"


def honest_summary_format(set_tasks: dict[str, Any], worker: luigi.worker.Worker) -> str:
    text = _original_summary_format(set_tasks, worker)
    reason = unfinished_reason(set_tasks, worker)
    success = execution_summary._create_one_line_summary(LuigiStatusCode.SUCCESS)
    if reason and success in text:
        text = text.replace(success, f"This progress looks :| because {reason}")
    if reason and _scheduler_lost:
        say_scheduler_lost()
    return text


class SchedulerLost(logging.Filter):
    """Notes luigi's "Failed pinging scheduler" and "Failed connecting to remote scheduler",
    once the worker has run (no luigid at all is another message: tasks.worker_hooks.say_no_luigid)."""

    running = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("Running Worker with"):
            SchedulerLost.running = True
            # Now, while luigi's command line is in scope: luigi's last "Uncaught exception"
            # comes after it, when only the files' (default) port is left.
            _scheduler_url[:] = [scheduler_url()]
        elif not SchedulerLost.running:
            pass
        elif message.startswith(("Failed pinging scheduler", "Failed connecting to remote scheduler")):
            if not _scheduler_lost:
                _scheduler_lost.append(message)
        elif message.startswith("Uncaught exception in luigi") and _scheduler_lost:
            say_scheduler_lost()  # luigi's worker itself gave up on an RPC
        return True


def say_scheduler_lost() -> None:
    """One line, printed last: luigid went away during the run, and a rerun resumes."""
    if len(_scheduler_lost) > 1:
        return
    url = _scheduler_url[0] if _scheduler_url else scheduler_url()
    line = (
        f"luigid at {url} went away during the run (killed or restarted), so luigi could not finish "
        "it: once luigid answers again, rerun the same command; it resumes where this one stopped"
    )
    _scheduler_lost.append(line)
    atexit.register(lambda: print(line, file=sys.stderr, flush=True))


def install() -> None:
    execution_summary._summary_dict = honest_summary_dict
    execution_summary._summary_format = honest_summary_format
    if not any(isinstance(f, SchedulerLost) for f in log.filters):
        log.addFilter(SchedulerLost())
