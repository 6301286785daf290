"""Every piece of luigi's private API the project uses, checked against the installed luigi.

A luigi release that renames or reshapes one of them fails here, by name, instead of
somewhere deep in a run.  Where each is used (each use carries a comment pointing here):

* ``LuigiConfigParser._config_paths``, ``._instance`` and ``reload()``: tasks/configuration.py
  register_package_config (the package's luigi.cfg first), tasks/errors.py
  config_file_setting (which file set a value);
* ``luigi.interface.core.ignore_unconsumed``, read by ``Task.get_param_values``:
  tasks/configuration.py register_package_config (rpc settings luigi reads by hand);
* ``Parameter._value_iterator(task_name, param_name)``, ``Parameter._parser_global_dest``
  and ``luigi.parameter._no_value``: tasks/parameters.py FromSection (a setting read from
  its owning task's section; an empty flag refused);
* the SIGUSR1 handler a Worker installs, its bound ``handle_interrupt``, which stops asking
  for work: tasks/worker_hooks.py current_worker, stop_on_unschedulable;
* ``Worker._scheduler``, ``._id``, ``._scheduled_tasks``, ``._first_task``:
  tasks/worker_hooks.py reenable_disabled, tasks/recovery.py take_over_if_dead,
  tasks/summary.py root_task;
* ``RemoteScheduler._url``, ``._rpc_retry_attempts``, ``._rpc_log_retries``:
  tasks/recovery.py watch_the_fleet, tasks/errors.py check_scheduler_for;
* ``execution_summary._summary_dict``, ``._summary_format``, ``._create_one_line_summary``:
  tasks/summary.py (the closing summary, the exit code, and publishing at the end);
* ``luigi.Task.get_params`` called on another class through ``__func__``: tasks/task.py
  _parameters_of;
* luigid's task entries (``task_list``: ``workers``, ``name``), ``inverse_dep_graph``, a
  worker made a task's worker by ``add_task(status=PENDING, runnable=True)``, and a Worker
  loading a task it did not schedule from luigid's record (``Worker._get_work``):
  tasks/recovery.py adopt_orphans.
"""

from __future__ import annotations

import inspect
import signal

import luigi
import luigi.configuration
import luigi.execution_summary as execution_summary
import luigi.interface
import luigi.parameter
import luigi.rpc
import luigi.scheduler
import luigi.task
import luigi.worker
from luigi.cmdline_parser import CmdlineParser
from luigi.execution_summary import LuigiStatusCode

from tasks.worker_hooks import current_worker


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


def test_the_config_parser_is_read_once_into_a_class_instance_and_reloads_every_file():
    parser = luigi.configuration.LuigiConfigParser
    assert "_instance" in vars(parser) or any("_instance" in vars(base) for base in parser.__mro__)
    assert parser.instance() is parser._instance
    assert inspect.ismethod(parser.reload) and parser.reload.__self__ is parser  # a classmethod


def test_core_settings_luigi_reads_by_hand_are_declared_through_ignore_unconsumed():
    assert isinstance(luigi.interface.core.ignore_unconsumed, (set, frozenset))
    assert "ignore_unconsumed" in inspect.getsource(luigi.task.Task.get_param_values)


class Flagged(luigi.Task):
    colour = luigi.Parameter(default="red")


def test_a_flag_lands_in_the_parsed_command_line_under_parser_global_dest():
    dest = luigi.Parameter._parser_global_dest("colour", "Flagged")
    with CmdlineParser.global_instance(["Flagged", "--Flagged-colour", ""]) as parser:
        assert getattr(parser.known_args, dest) == ""  # how FromSection tells an empty flag


def test_a_parameter_without_default_holds_no_value():
    assert luigi.Parameter()._default is luigi.parameter._no_value


def test_sigusr1_makes_a_worker_stop_asking_for_work():
    assert "_start_phasing_out" in inspect.getsource(luigi.worker.Worker.handle_interrupt)
    before = signal.getsignal(signal.SIGUSR1)
    try:
        with luigi.worker.Worker(scheduler=luigi.scheduler.Scheduler(), worker_processes=1) as worker:
            worker.handle_interrupt(signal.SIGUSR1, None)
            assert worker._stop_requesting_work
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_a_remote_scheduler_keeps_its_url_and_retry_settings():
    scheduler = luigi.rpc.RemoteScheduler("http://127.0.0.1:1/")
    try:
        assert scheduler._url == "http://127.0.0.1:1"
        assert isinstance(scheduler._rpc_retry_attempts, int)
        assert isinstance(scheduler._rpc_log_retries, bool)
        retrying = inspect.getsource(luigi.rpc.RemoteScheduler._get_retryer)
        assert "self._rpc_retry_attempts" in retrying and "self._rpc_log_retries" in retrying
    finally:
        scheduler.close()


def test_task_get_params_is_a_classmethod_whose_function_takes_any_class():
    assert list(inspect.signature(luigi.Task.get_params.__func__).parameters) == ["cls"]
    assert [name for name, _ in luigi.Task.get_params.__func__(Flagged)] == ["colour"]


class Leaf(luigi.Task):
    n = luigi.IntParameter()


def test_a_worker_made_a_tasks_worker_by_add_task_loads_and_gets_it_though_it_never_scheduled_it():
    scheduler = luigi.scheduler.Scheduler()
    leaf = Leaf(n=1)
    scheduler.add_task(
        worker="alpha", task_id=leaf.task_id, family="Leaf", module=__name__, params=leaf.to_str_params()
    )
    scheduler.add_task(worker="beta", task_id="Root_1", family="Root", deps=[leaf.task_id])
    entry = scheduler.task_list(status="PENDING", upstream_status="", limit=False)[leaf.task_id]
    assert entry["workers"] == ["alpha"] and entry["name"] == "Leaf"
    dependents = scheduler.inverse_dep_graph(task_id=leaf.task_id, include_done=False)
    assert "beta" in dependents["Root_1"]["workers"]
    scheduler.add_task(task_id=leaf.task_id, status="PENDING", worker="beta", runnable=True)
    assert set(scheduler.task_list(status="PENDING", upstream_status="")[leaf.task_id]["workers"]) == {
        "alpha",
        "beta",
    }
    assert "will load it dynamically" in inspect.getsource(luigi.worker.Worker._get_work)
    before = signal.getsignal(signal.SIGUSR1)
    try:
        with luigi.worker.Worker(scheduler=scheduler, worker_id="beta", worker_processes=1) as worker:
            assert worker._get_work().task_id == leaf.task_id
            assert worker._scheduled_tasks[leaf.task_id] == leaf
    finally:
        signal.signal(signal.SIGUSR1, before)
