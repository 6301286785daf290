"""``python -m pipeline <Task> [luigi flags]``: luigi's command line for a fleet of processes.

Same as ``luigi --module pipeline <Task>``, except for the exit code: luigi's covers only the
tasks this process saw finish, so a process whose tasks were partly run by other processes
exits ``already_running`` or ``not_run`` although the pipeline is complete.  Here a process
exits 0 whenever the task it was asked for is complete, whoever ran it.
"""

from __future__ import annotations

import sys

import luigi.retcodes
from luigi.cmdline_parser import CmdlineParser


def main(argv: list[str] | None = None) -> int:
    argv = ["--module", "pipeline", *(sys.argv[1:] if argv is None else argv)]
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
