"""Every piece of luigi's private API the project uses, checked against the installed luigi.

A luigi release that renames or reshapes one of them fails here, by name, instead of
somewhere deep in a run.  Where each is used:

* ``LuigiConfigParser._config_paths``: tasks/base.py register_package_config (the package's
  luigi.cfg first), tasks/errors.py config_file_setting (which file set a value);
* ``Parameter._value_iterator(task_name, param_name)``: tasks/base.py FromSection (a
  setting read from its owning task's section);
* the SIGUSR1 handler a Worker installs, bound to it: tasks/base.py current_worker;
* ``Worker._scheduler``, ``._id``, ``._scheduled_tasks``, ``._first_task``: tasks/base.py
  reenable_disabled, tasks/recovery.py take_over_if_dead, tasks/summary.py root_task;
* ``execution_summary._summary_dict``, ``._summary_format``, ``._create_one_line_summary``:
  tasks/summary.py (the closing summary, the exit code, and publishing at the end).
"""

from __future__ import annotations

import inspect
import signal

import luigi
import luigi.configuration
import luigi.execution_summary as execution_summary
import luigi.parameter
import luigi.scheduler
import luigi.worker
from luigi.execution_summary import LuigiStatusCode

from tasks.base import current_worker


class Nothing(luigi.Task):
    def complete(self) -> bool:
        return True


def test_the_config_parser_keeps_its_files_in_a_class_list():
    paths = luigi.configuration.LuigiConfigParser._config_paths
    assert isinstance(paths, list) and all(isinstance(p, str) for p in paths)


def test_a_parameter_reads_its_values_through_value_iterator():
    method = luigi.parameter.Parameter._value_iterator
    assert list(inspect.signature(method).parameters) == ["self", "task_name", "param_name"]
    assert inspect.isgeneratorfunction(method)


def test_a_worker_is_found_through_its_sigusr1_handler_and_holds_what_we_read():
    before = signal.getsignal(signal.SIGUSR1)
    try:
        check_a_worker()
    finally:  # no other test may find this worker as the process's own
        signal.signal(signal.SIGUSR1, before)


def check_a_worker() -> None:
    with luigi.worker.Worker(scheduler=luigi.scheduler.Scheduler(), worker_processes=1) as worker:
        handler = signal.getsignal(signal.SIGUSR1)
        assert getattr(handler, "__self__", None) is worker and handler.__name__ == "handle_interrupt"
        assert current_worker() is worker
        task = Nothing()
        assert worker.add(task)
        assert isinstance(worker._scheduler, luigi.scheduler.Scheduler)
        assert isinstance(worker._id, str) and worker._id
        assert worker._first_task == task.task_id
        assert worker._scheduled_tasks[task.task_id] is task
        set_tasks = execution_summary._summary_dict(worker)
        assert {
            "completed",
            "already_done",
            "failed",
            "ever_failed",
            "run_by_other_worker",
            "not_run",
        } <= set(set_tasks)
        assert task in set_tasks["already_done"]
        assert isinstance(execution_summary._summary_format(set_tasks, worker), str)


def test_the_summary_functions_keep_their_signatures():
    assert list(inspect.signature(execution_summary._summary_dict).parameters) == ["worker"]
    assert list(inspect.signature(execution_summary._summary_format).parameters) == ["set_tasks", "worker"]
    line = execution_summary._create_one_line_summary(LuigiStatusCode.SUCCESS)
    assert ":)" in line
