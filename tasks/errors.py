"""What a user sees when a command cannot go on: one line saying what, where and what to do.

* **Mistakes** (a setting that cannot work, no luigid to talk to) are found when the tasks
  are built, before any stage runs.  luigi logs such an error as "Uncaught exception in
  luigi" with the whole traceback; ``ShortErrors`` turns that record into the error's own
  sentence.  The command exits ``[retcode] unhandled_exception`` (40), as luigi makes it.
* **Where a value came from**: ``setting()`` names the command-line flag, or the config file
  that set it (the file LUIGI_CONFIG_PATH names, the folder's luigi.cfg, the package
  defaults), the way luigi itself looked them up.
* **Faults in the surroundings** (a full disk, a read-only or unwritable data_dir) fail
  the task that met them; no retry can fix them, so the process stops asking for work at
  once, and the run ends with one line: what failed, the path, what to do.  Every task
  process's fault goes down one pipe to the process the user started, which prints it last.

The traceback is kept for ``--log-level DEBUG``: under it, every record passes unchanged.
"""

from __future__ import annotations

import atexit
import configparser
import errno
import fcntl
import logging
import os
import select
import signal
import sys
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

import luigi
import luigi.configuration
import luigi.interface
import luigi.rpc
from luigi.cmdline_parser import CmdlineParser

from sampler.categories.words import SynsetError

if TYPE_CHECKING:
    import luigi.worker

log = logging.getLogger("luigi-interface")

PACKAGE_CONFIG = Path(__file__).resolve().parent / "luigi.cfg"
MAIN_PID = os.getpid()  # the process the user started: task processes are forked from it


class ConfigError(ValueError):
    """A setting is unusable; the message names it, where it was set, and what would do."""


class NoScheduler(ConfigError):
    """No luigid answers where the configuration says one is."""


# --------------------------------------------------------------------------- where a value came from


def setting(section: str, name: str) -> str:
    """``[section] name`` as the user gave it: the flag, or the file that set it.

    ``--FetchFives-per-category (on the command line)``,
    ``[FetchFives] per_category (in /x/my.cfg, the file LUIGI_CONFIG_PATH names)``,
    ``[FetchFives] per_category (in /x/luigi.cfg, this folder's luigi.cfg)``,
    ``[FetchFives] per_category (the package default, /…/tasks/luigi.cfg)``.
    """
    option = f"--{section}-{name.replace('_', '-')}"
    if on_command_line(section, name):
        return f"{option} (on the command line)"
    path = config_file_setting(section, name)
    if path is None:
        return f"{option} (not set: its default)"
    return f"[{section}] {name} ({describe_config_file(path)})"


def on_command_line(section: str, name: str) -> bool:
    parser = CmdlineParser.get_instance()
    if parser is None:
        return False
    args = parser.known_args
    if getattr(args, f"{section}_{name}", None) is not None:
        return True
    # The root task's own parameters also have an unprefixed flag (--per-category).
    return getattr(args, "root_task", None) == section and getattr(args, name, None) is not None


def config_file_setting(section: str, name: str) -> str | None:
    """The config file whose ``[section] name`` luigi uses: the last of its files that sets it."""
    spellings = {name, name.replace("_", "-"), name.replace("-", "_")}
    # luigi's private list of config files, in order (tests/test_luigi_private_api.py).
    for path in reversed(luigi.configuration.LuigiConfigParser._config_paths):
        if not os.path.isfile(path):
            continue
        one = configparser.ConfigParser(interpolation=None, strict=False)
        one.optionxform = str  # type: ignore[assignment,method-assign]  # as luigi's parser: case kept
        try:
            one.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError):
            continue
        if one.has_section(section) and any(one.has_option(section, spelling) for spelling in spellings):
            return path
    return None


def describe_config_file(path: str) -> str:
    full = os.path.abspath(path)
    if full == str(PACKAGE_CONFIG):
        return f"the package default, {full}"
    named = os.environ.get("LUIGI_CONFIG_PATH")
    if named and os.path.abspath(named) == full:
        return f"in {full}, the file LUIGI_CONFIG_PATH names"
    if not os.path.isabs(path):
        return f"in {full}, this folder's luigi.cfg"
    return f"in {full}"


def check_config_path() -> None:
    """Raise ConfigError when LUIGI_CONFIG_PATH names no file.  luigi only warns and goes on
    with the defaults: the real sources, and data_dir ./data of whatever folder this is."""
    named = os.environ.get("LUIGI_CONFIG_PATH")
    if named and not os.path.isfile(named):
        raise ConfigError(
            f"LUIGI_CONFIG_PATH names {named}, which is not a file: correct the path, or unset it"
        )


# --------------------------------------------------------------------------- the scheduler


def scheduler_url() -> str:
    core = luigi.interface.core()
    return (core.scheduler_url or f"http://{core.scheduler_host}:{core.scheduler_port}").rstrip("/")


def no_scheduler_hint(url: str) -> str:
    """How to get a scheduler, for a checkout and a pip install alike: the ``luigid`` command
    luigi installs, given the package's [scheduler] and [resources] (without them luigid
    would run one category task at a time), or no luigid at all."""
    port = url.rpartition(":")[2].strip("/") or "8082"
    # A scheduler asked for on loopback is started on loopback: luigid listens on every
    # interface by default, and its API can run nothing but can be read by anyone.
    host = urllib.parse.urlsplit(url).hostname or ""
    address = f"--address {host} " if host in ("127.0.0.1", "localhost", "::1") else ""
    return (
        f"no luigid answers at {url}: start one with "
        f"`LUIGI_CONFIG_PATH={PACKAGE_CONFIG} luigid --background {address}--port {port} --logdir luigid "
        "--pidfile luigid/luigid.pid`, or run with --local-scheduler"
    )


_scheduler_checked: list[str] = []
# luigid's [resources] as its resource_list answered the check: {name: total}.  luigid gives
# a resource it was not configured with a limit of 1 (GUIDE.md), whatever the client's file says.
_scheduler_resources: dict[str, int] = {}


def check_scheduler() -> None:
    """Raise NoScheduler at once when the configured luigid does not answer.

    luigi would find out at its first request, after its RPC retries ([core] rpc_retry_*,
    3 x 30 s by default), with a traceback per retry; those retries are for a luigid that
    goes away during a run, not for one that was never started.  One request, no retry.
    """
    if luigi.interface.core().local_scheduler:
        return
    url = scheduler_url()
    if url in _scheduler_checked:
        return
    probe = luigi.rpc.RemoteScheduler(url)
    # luigi's private retry settings of its client (tests/test_luigi_private_api.py).
    probe._rpc_retry_attempts = 1  # this one question only: nobody answering now is the answer
    probe._rpc_log_retries = False
    try:
        listed = probe.resource_list()  # type: ignore[attr-defined]  # an RPC method luigi adds at import
    except luigi.rpc.RPCError as error:
        raise NoScheduler(no_scheduler_hint(url)) from error
    finally:
        probe.close()
    _scheduler_resources.clear()
    _scheduler_resources.update({str(r["name"]): int(r["num_total"]) for r in listed or [] if "name" in r})
    _scheduler_checked.append(url)


def scheduler_resource(name: str) -> int | None:
    """How much of resource ``name`` the luigid this run uses grants at once (1 where its
    configuration does not name it), or None without one (--local-scheduler, which reads
    this process's [resources]) or outside a command line."""
    if luigi.interface.core().local_scheduler:
        return None
    if not _scheduler_checked and CmdlineParser.get_instance() is not None:
        check_scheduler()  # a task's requires() may ask before the command's check_scheduler_for
    if not _scheduler_checked:
        return None
    return _scheduler_resources.get(name, 1)


def check_scheduler_for(task: luigi.Task) -> None:
    """check_scheduler() when ``task`` is the one the command line asks for (built in the
    user's process, after its settings were checked and before luigi schedules anything)."""
    parser = CmdlineParser.get_instance()
    if parser is None or os.getpid() != MAIN_PID:
        return
    if getattr(parser.known_args, "root_task", None) in (task.get_task_family(), type(task).__name__):
        check_scheduler()


# --------------------------------------------------------------------------- faults in the surroundings

ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def environment_fault(error: BaseException | None) -> OSError | None:
    """The full-disk, read-only or permission error behind ``error`` (its causes included)."""
    seen = 0
    while error is not None and seen < 20:
        if isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS:
            return error
        error = error.__cause__ or error.__context__
        seen += 1
    return None


def fault_line(task: luigi.Task, fault: OSError) -> str:
    """One line: what failed, where, what to do."""
    data_dir = str(getattr(task, "data_dir", "") or "")
    where = str(fault.filename) if fault.filename else data_dir or "its output folder"
    what = f"{task.get_task_family()} failed"
    inside = f" (data_dir {data_dir})" if data_dir and where != data_dir else ""
    rerun = "then run the same command again: it resumes where it stopped"
    elsewhere = "or give --paths-data-dir a folder on another disk"
    told = f"{what}: {fault.strerror or os.strerror(fault.errno or 0)}: {where}{inside}"
    if fault.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{told}: free some space there ({elsewhere}); {rerun}"
    if fault.errno == errno.EROFS:
        return f"{told}: make it writable ({elsewhere}); {rerun}"
    return f"{told}: make data_dir writable for this user ({elsewhere}); {rerun}"


class FaultPipe:
    """Fault lines from every task process, printed once by the user's process as it exits.

    A pipe made before luigi forks its task processes: each of them writes its line (short
    writes to a pipe are atomic), the process that made it reads them at exit and prints the
    first, with how many more there were, as the run's last line.
    """

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.read_end, self.write_end = os.pipe()
        for end in (self.read_end, self.write_end):
            fcntl.fcntl(end, fcntl.F_SETFL, fcntl.fcntl(end, fcntl.F_GETFL) | os.O_NONBLOCK)
        atexit.register(self.print_lines)

    def add(self, line: str) -> None:
        data = (" ".join(line.split()) + "\n").encode("utf-8", "replace")[: select.PIPE_BUF]
        try:
            os.write(self.write_end, data)
        except OSError:  # full (hundreds of lines): the first ones are what counts
            pass

    def lines(self) -> list[str]:
        data = b""
        while True:
            try:
                chunk = os.read(self.read_end, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        return [line for line in data.decode("utf-8", "replace").splitlines() if line]

    def print_lines(self) -> None:
        if os.getpid() != self.owner:
            return
        lines = self.lines()
        if lines:
            more = f" ({len(lines) - 1} more tasks failed the same way)" if len(lines) > 1 else ""
            print(f"ERROR: {lines[0]}{more}", file=sys.stderr, flush=True)


FAULTS = FaultPipe()


def stop_asking_for_work(worker: luigi.worker.Worker | None) -> None:
    """luigi's own graceful stop (SIGUSR1): run nothing more, exit once the running tasks end."""
    if worker is None:
        return
    if os.getpid() == MAIN_PID:
        worker.handle_interrupt(signal.SIGUSR1, None)
    else:  # a task process: its worker is a copy; tell the one in the user's process
        os.kill(MAIN_PID, signal.SIGUSR1)


def fail_fast_on_environment_fault(task: luigi.Task, error: BaseException, worker: object) -> None:
    """A full disk or an unwritable folder: say so once, retry nothing, start nothing more."""
    fault = environment_fault(error)
    if fault is None:
        return
    FAULTS.add(fault_line(task, fault))
    stop_asking_for_work(worker)  # type: ignore[arg-type]


def vanished_dependencies(error: BaseException | None) -> bool:
    """Whether ``error`` is luigi's check before a run: "Unfulfilled dependencies at run time"."""
    message = str(error)
    return (
        isinstance(error, RuntimeError)
        and message.startswith("Unfulfilled depend")
        and " at run time: " in message
    )


def fail_fast_on_vanished_dependencies(task: luigi.Task, error: BaseException, worker: object) -> None:
    """luigid calls a task's dependencies done, but their outputs are gone (removed, or replaced
    by another configuration, since they were made).  The worker never asks luigid to make them
    again, so every retry fails the same way, for ever: say so once and stop; a new command
    schedules them again."""
    if not vanished_dependencies(error):
        return
    FAULTS.add(
        f"{task.get_task_family()} failed: luigid called its dependencies done, but their outputs are "
        "missing now (removed, or replaced by another configuration, since they were made) and no "
        "retry in this run can make them: rerun the same command; it makes them again"
    )
    stop_asking_for_work(worker)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the console


FAILED_PREFIX = "[pid %s] Worker %s failed"


def debug_asked() -> bool:
    """Whether the user asked for DEBUG logs.  luigi logs an error that stops the command from
    starting after it has left the command line's scope, with [core] log_level from the
    files only: ``--log-level DEBUG`` is read from the command line here."""
    if log.isEnabledFor(logging.DEBUG):
        return True
    argv = sys.argv[1:]
    return "--log-level=DEBUG" in argv or any(
        arg == "--log-level" and argv[i + 1 : i + 2] == ["DEBUG"] for i, arg in enumerate(argv)
    )


def report_mistake(error: BaseException) -> int:
    """For a command line that runs code of its own before luigi's (python -m pipeline): the
    mistake as luigi's log would show it, and luigi's exit code for a command that could not start."""
    import traceback

    import luigi.retcodes

    if debug_asked():
        traceback.print_exception(error)
    print(f"ERROR: {short_message(error) or error}", file=sys.stderr, flush=True)
    return luigi.retcodes.retcode().unhandled_exception


def short_message(error: BaseException) -> str | None:
    """The one line to show for ``error``, or None to leave the traceback (a bug's)."""
    if isinstance(error, ConfigError | SynsetError):
        return " ".join(str(error).split())
    return None


def short_unknown_task(kind: type[BaseException], error: BaseException, traceback: object) -> None:
    """sys.excepthook for the command line: luigi lets "No task FetchFvies. Did you mean:
    FetchFives" escape as a traceback (exit 1); say just that."""
    import luigi.task_register

    if isinstance(error, luigi.task_register.TaskClassNotFoundException) and not debug_asked():
        print("ERROR: " + " ".join(str(error).split()), file=sys.stderr, flush=True)
        return
    sys.__excepthook__(kind, error, traceback)  # type: ignore[arg-type]


class ShortErrors(logging.Filter):
    """Our errors as one line instead of luigi's traceback (kept under --log-level DEBUG).

    * "Uncaught exception in luigi" (the command could not start) with a ConfigError:
      the error's sentence.
    * "[pid N] Worker ... failed <task>" with a full disk or an unwritable folder: dropped;
      FAULTS prints one line for the run at its end.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.levelno < logging.ERROR or debug_asked():
            return True
        error = record.exc_info[1]
        if error is None:
            return True
        failed = str(record.msg).startswith(FAILED_PREFIX)
        if failed and (environment_fault(error) is not None or vanished_dependencies(error)):
            return False
        short = short_message(error)
        if short is None:
            return True
        if failed:  # a mistake found while running (an unknown wnid): which task, and the sentence
            task = record.args[-1] if isinstance(record.args, tuple) and record.args else None
            family = task.get_task_family() if isinstance(task, luigi.Task) else "a task"
            short = f"{family} failed: {short}"
        record.msg, record.args, record.exc_info, record.exc_text = short, (), None, None
        return True
