"""``python -m pipeline <Task> [luigi flags]``: luigi's command line for a fleet of processes.

Same as ``luigi --module pipeline <Task>``, except for the exit code: luigi's covers only the
tasks this process saw finish, so a process whose tasks were partly run by other processes
exits ``already_running`` or ``not_run`` although the pipeline is complete.  Here a process
exits 0 whenever the task it was asked for is complete, whoever ran it.  A luigi worker stops
as soon as nothing is left for *it* to run, which can be while another process still runs the
task asked for (FetchFives' last step, or its top-up rounds): such a process waits for that
one, as long as luigid says a live worker is on it.

A subtree category set (``--ParseSynsets-categories under:<wnid>``) or ``all`` is resolved first, by
ParseSynsets alone: what it selects depends on the URL index, and FetchFives must name every
category task up front so that every process of a fleet schedules all of them.
"""

from __future__ import annotations

import sys
import time

import luigi
import luigi.interface
import luigi.retcodes
import luigi.rpc
from luigi.cmdline_parser import CmdlineParser
from luigi.scheduler import PENDING, RUNNING

from sampler.categories.words import SynsetError
from tasks.errors import ConfigError, check_scheduler, report_mistake

WAIT_POLL_SECONDS = 2.0


def resolve_category_set(argv: list[str]) -> int:
    """Run ParseSynsets alone when the category set is a subtree or ``all``, not yet resolved (else 0)."""
    from tasks.parse_synsets import ParseSynsets

    with CmdlineParser.global_instance(argv):
        synsets = ParseSynsets()
        if not synsets.spec().resolved_from_index or synsets.complete():
            return 0
        check_scheduler()  # before luigi's RPC retries: one line if no luigid answers
        return 0 if luigi.build([synsets]) else luigi.retcodes.retcode().task_failed


def main(argv: list[str] | None = None) -> int:
    argv = ["--module", "pipeline", *(sys.argv[1:] if argv is None else argv)]
    try:
        code = resolve_category_set(argv)
    except (ConfigError, SynsetError) as mistake:  # one line, as luigi's run shows it (tasks.errors)
        return report_mistake(mistake)
    if code:
        return code
    try:
        luigi.retcodes.run_with_retcodes(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    retcodes = luigi.retcodes.retcode()
    if code in (retcodes.already_running, retcodes.not_run):
        with CmdlineParser.global_instance(argv) as parser:
            task = parser.get_task_obj()
            if complete_once_others_are_done(task):
                # luigi's summary above said ":|" (another process ran it): the last word.
                print(
                    f"{task.get_task_family()} is complete (another process of the fleet ran part of it): "
                    "this command exits 0",
                    file=sys.stderr,
                    flush=True,
                )
                return 0
    return code


def complete_once_others_are_done(task: luigi.Task) -> bool:
    """Whether ``task`` is complete, once no live worker of the fleet is on it any more."""
    core = luigi.interface.core()
    if core.local_scheduler:
        return task.complete()
    url = core.scheduler_url or f"http://{core.scheduler_host}:{core.scheduler_port}/"
    scheduler = luigi.rpc.RemoteScheduler(url)
    while not task.complete():
        try:
            # task_list: an RPC method luigi makes at import.  luigid searches pretty ids and
            # answers by task id.
            found = scheduler.task_list(search=task.get_task_family())  # type: ignore[attr-defined]
            entry = found.get(task.task_id)
        except luigi.rpc.RPCError:
            return False
        # RUNNING, or PENDING between top-up rounds; a dead worker is dropped by luigid after
        # worker_disconnect_delay, and then nobody is on the task.
        if not entry or entry["status"] not in (RUNNING, PENDING) or not entry["workers"]:
            return task.complete()
        time.sleep(WAIT_POLL_SECONDS)
    return True


if __name__ == "__main__":
    sys.exit(main())
