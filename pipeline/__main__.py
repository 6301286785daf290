"""``python -m pipeline <Task> [luigi flags]``: luigi's command line for a fleet of processes.

Same as ``luigi --module pipeline <Task>``, except for the exit code: luigi's covers only the
tasks this process saw finish, so a process whose tasks were partly run by other processes
exits ``already_running`` or ``not_run`` although the pipeline is complete.  Here a process
exits 0 whenever the task it was asked for is complete, whoever ran it.

A subtree category set (``--ParseSynsets-categories under:<wnid>``) is resolved first, by
ParseSynsets alone: what it selects depends on the URL index, and FetchFives must name every
category task up front so that every process of a fleet schedules all of them.
"""

from __future__ import annotations

import sys

import luigi
import luigi.retcodes
from luigi.cmdline_parser import CmdlineParser


def resolve_category_set(argv: list[str]) -> int:
    """Run ParseSynsets alone when the category set is a subtree not yet resolved (else 0)."""
    from tasks.parse_synsets import ParseSynsets

    with CmdlineParser.global_instance(argv):
        synsets = ParseSynsets()
        if synsets.spec().kind != "under" or synsets.complete():
            return 0
        return 0 if luigi.build([synsets]) else luigi.retcodes.retcode().task_failed


def main(argv: list[str] | None = None) -> int:
    argv = ["--module", "pipeline", *(sys.argv[1:] if argv is None else argv)]
    code = resolve_category_set(argv)
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
            if parser.get_task_obj().complete():
                return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
