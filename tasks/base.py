"""What every task of the sampler shares: identity, configuration, validation, locking, freshness.

* **Identity.** Every task has a significant ``data_dir`` (absolute, so two folders never
  share a task id) and receives every upstream setting that changes its output through
  ``requires()``; tuning knobs are insignificant and hidden from luigid's UI.
* **Configuration.** The package's own ``tasks/luigi.cfg`` is registered on import *below*
  luigi's usual files, so the pipeline behaves the same from any folder; the folder's
  ``luigi.cfg`` and ``LUIGI_CONFIG_PATH`` still override it.
* **Parameters.** A setting its section owns (``FromSection``: FetchFives' seed is
  SampleUrls'), a tuning ``knob`` (insignificant, hidden), and ``settings_of`` to hand a
  plain module its settings dataclass from the parameters of the same names.
* **Validation.** A task checks its parameters, and builds its dependencies, when it is
  built: a bad setting fails the command before any stage runs, naming the flag.
* **Concurrency.** ``run()`` holds a lock keyed on the task's outputs in ``data_dir``, so two
  processes (two ``--local-scheduler`` runs, or runs of two configurations sharing an
  output) never write one output at once; the second finds it done and returns.
* **Freshness.** ``RebuiltWhenInputsChange``: a view (report, export) older than what it
  was made from is made again.
* **No waiting on the impossible.** A task that cannot be scheduled stops the worker from
  asking for more work (luigi would otherwise keep a keep-alive worker waiting for ever), and
  a task luigid disabled after an earlier failure is re-enabled by a new command.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import inspect
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import luigi
import luigi.configuration
import luigi.interface
import luigi.rpc
import luigi.worker
from luigi.cmdline_parser import CmdlineParser
from luigi.parameter import ParameterVisibility, _no_value

from sampler.atomic import SymlinkedOutput, refuse_symlinked_outputs
from sampler.categories.sets import parse_spec, read_preset
from sampler.categories.words import SynsetError, read_categories
from tasks.errors import (
    PACKAGE_CONFIG,
    ConfigError,
    ShortErrors,
    check_config_path,
    check_scheduler_for,
    fail_fast_on_environment_fault,
    fail_fast_on_vanished_dependencies,
    no_scheduler_hint,
    scheduler_url,
    setting,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

log = logging.getLogger("luigi-interface")

HIDDEN = ParameterVisibility.HIDDEN
DIGEST_MARK = "#sha256="


# --------------------------------------------------------------------------- configuration


def register_package_config() -> None:
    """Put the package's luigi.cfg first in luigi's list of config files (lowest priority).

    luigi reads /etc/luigi/luigi.cfg, then ./luigi.cfg, then LUIGI_CONFIG_PATH, each
    overriding the one before; ``add_config_path`` would append ours last, above them all.
    """
    parser = luigi.configuration.LuigiConfigParser
    path = str(PACKAGE_CONFIG)
    if path in parser._config_paths:
        return
    parser._config_paths.insert(0, path)
    if parser._instance is not None:  # already read: read every file again, in order
        parser.reload()
    for kind in (QuietScheduling, ShortErrors):
        if not any(isinstance(f, kind) for f in log.filters):
            log.addFilter(kind())
    # luigi.rpc reads [core] rpc_retry_attempts/rpc_retry_wait/rpc_connect_timeout with
    # config.get*, not as parameters of its [core] class, which then warns that they are
    # "not consumed".  They are: tell the class so.
    core = luigi.interface.core
    core.ignore_unconsumed = set(core.ignore_unconsumed) | {
        "rpc_retry_attempts",
        "rpc_retry_wait",
        "rpc_connect_timeout",
    }


class QuietScheduling(logging.Filter):
    """Drop luigi's "Informed scheduler that task X has status Y" lines (one per task and
    change of state: hundreds for 200 categories); each task's running/done/failed line
    and the execution summary stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno <= logging.INFO and str(record.msg).startswith("Informed scheduler that task")
        )


def flag(section: str, name: str) -> str:
    """The setting as the user gave it: its flag, or the config file that set it (tasks.errors)."""
    return setting(section, name)


class paths(luigi.Config):  # lower case: luigi maps the class name to the [paths] section
    data_dir = luigi.Parameter(default="data", description="Folder that holds every output of the pipeline")


# --------------------------------------------------------------------------- parameters


class FromSection:
    """A parameter mixin: when this task's own flag and section say nothing, take the value
    of ``[section] name`` (its command-line flag, then luigi.cfg), then ``fallback``.

    FetchFives' ``seed`` is SampleUrls' ``seed``: ``--SampleUrls-seed 7`` sets both, and
    FetchFives passes it down, so the seed is part of FetchFives' identity too.
    """

    def __init__(self, *args, section: str, name: str, fallback: object = _no_value, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._section, self._name, self._fallback = section, name, fallback

    def _value_iterator(self, task_name, param_name):  # luigi's (untyped) signature: a mixin of its Parameter
        # luigi takes an empty flag (`--paths-data-dir ''`) for an absent one and falls back
        # to luigi.cfg or the default: data_dir would silently become ./data, the category
        # set det200.  An empty value here is a mistake: say so.
        parser = CmdlineParser.get_instance()
        if parser is not None:
            for section, name in ((task_name, param_name), (self._section, self._name)):
                if getattr(parser.known_args, self._parser_global_dest(name, section), None) == "":
                    raise ConfigError(f"{flag(section, name)} is empty")
        yield from super()._value_iterator(task_name, param_name)
        if (task_name, param_name) != (self._section, self._name):
            yield from super()._value_iterator(self._section, self._name)
        yield (self._fallback, None)


P = TypeVar("P", bound="luigi.Parameter[Any]")
Settings = TypeVar("Settings", bound="DataclassInstance")


def knob(kind: type[P], default: Any, description: str | None = None) -> P:
    """A tuning knob: changes how a task works, never what it outputs.  Insignificant (not
    part of the task's identity) and hidden from luigid's UI; still a flag and a luigi.cfg
    option like any parameter."""
    return kind(default=default, significant=False, visibility=HIDDEN, description=description)


class SectionIntParameter(FromSection, luigi.IntParameter):
    pass


class ListParameter(luigi.ListParameter):
    """A list setting, written as a JSON list (``'["imagefolder", "webdataset"]'``) or as
    people type one: a bare word (``imagefolder``) or a comma-separated list (``a,b``).

    Items of a bare list are stripped; an item holding a comma needs the JSON form.  With
    ``item=int`` the items of a bare list are whole numbers (``0,320,160``).
    """

    def __init__(self, *args: Any, item: type = str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._item = item

    def parse(self, x: Any) -> Any:
        if isinstance(x, str) and not x.lstrip().startswith(("[", "(")):
            items = [item.strip() for item in x.split(",") if item.strip()]
            try:
                return tuple(self._item(item) for item in items)
            except ValueError as error:
                raise ValueError(f"expected a list of {self._item.__name__}s, not {x!r}") from error
        try:
            return super().parse(x)
        except ValueError as error:
            raise ValueError(
                f'{error}: expected a JSON list such as \'["a", "b"]\', or a,b (a word or a comma list)'
            ) from error


class DataDirParameter(FromSection, luigi.Parameter):
    """``data_dir``, absolute: the same folder named two ways is one identity, and the same
    relative name run from two folders is two."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("description", "Folder that holds every output (default: [paths] data_dir)")
        super().__init__(section="paths", name="data_dir", fallback="data", **kwargs)

    def normalize(self, x: str) -> str:
        if not str(x).strip():  # abspath("") is the current folder: every output loose in it
            raise ConfigError(f"{flag('paths', 'data_dir')} is empty")
        return os.path.abspath(os.path.expanduser(str(x)))


def categories_digest(categories: list) -> str:
    text = "".join(f"{c.wnid},{c.label}\n" for c in categories)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class CategoryListParameter(FromSection, luigi.Parameter):
    """The category set, as ``<preset | under:<wnid> | absolute CSV path>#sha256=<digest>``.

    For a preset or a CSV the digest is that of the list's rows, so every task that depends
    on the list changes identity when the file is edited, not only when it is renamed.  A
    subtree (``under:<wnid>``) is resolved against the URL index by ParseSynsets, so its
    digest is that of the subtree's name.  The list is read (and its syntax checked) when the
    value is first normalised; values passed down through ``requires()`` already carry it.
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault(
            "description",
            "A preset (det200, imagenette, imagewoof, mini-imagenet, imagenet-a, imagenet-r, ilsvrc2012), "
            "all (every synset with URLs), under:<wnid> (a WordNet subtree) or a CSV `wnid,label`",
        )
        super().__init__(section="ParseSynsets", name="categories", fallback="det200", **kwargs)

    def normalize(self, x: str) -> str:
        x = str(x)
        if DIGEST_MARK in x:
            return x
        try:
            spec = parse_spec(x)
            if spec.resolved_from_index:
                return f"{x.strip()}{DIGEST_MARK}{hashlib.sha256(x.strip().encode()).hexdigest()[:16]}"
            if spec.kind == "preset":
                return f"{spec.value}{DIGEST_MARK}{categories_digest(read_preset(spec))}"
            source = os.path.abspath(os.path.expanduser(x)) if os.path.exists(os.path.expanduser(x)) else x
            categories = read_categories(source)
        except (SynsetError, ValueError) as error:
            raise ConfigError(f"{flag('ParseSynsets', 'categories')}: {error}") from error
        return f"{source}{DIGEST_MARK}{categories_digest(categories)}"


def category_source(value: str) -> str:
    """The set part of a CategoryListParameter value: a preset, all, under:<wnid> or a CSV path."""
    return value.rpartition(DIGEST_MARK)[0] or value


def category_digest(value: str) -> str:
    return value.rpartition(DIGEST_MARK)[2]


def category_stem(value: str) -> str:
    """A readable name of the set: the preset, ``under-<wnid>``, or the CSV file's stem."""
    return parse_spec(category_source(value)).stem


def keyed_name(readable: str, significant: Mapping[str, Any]) -> str:
    """``<readable>-<digest>``: a folder name for an output, unique to its significant settings
    (as gokart's unique ids): two configurations never share a path, so an output's existence
    is its completeness."""
    text = json.dumps(dict(significant), sort_keys=True, separators=(",", ":"))
    return f"{readable}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"


# --------------------------------------------------------------------------- locks


def lock_path(data_dir: str, key: str) -> Path:
    return Path(data_dir, ".locks", hashlib.sha256(key.encode("utf-8")).hexdigest()[:24] + ".lock")


def lock_is_free(data_dir: str, key: str) -> bool:
    """Whether no process holds ``output_lock(data_dir, key)`` now (a probe: taken, let go)."""
    try:
        # Opened for writing: on NFS flock is emulated by a POSIX write lock, which an fd
        # opened read-only cannot take (EBADF, not "held").
        with os.fdopen(os.open(lock_path(data_dir, key), os.O_WRONLY), "wb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(handle, fcntl.LOCK_UN)
    except FileNotFoundError:
        pass
    return True


@contextlib.contextmanager
def output_lock(data_dir: str, key: str) -> Iterator[None]:
    """An exclusive lock on ``key`` in ``data_dir``, shared by every process using that folder.

    flock on a file in ``data_dir/.locks``: released by the kernel when its holder dies, so a
    crash never leaves a stale lock.  On NFS Linux emulates flock with a whole-file POSIX
    lock held by the server (NLM for v3, the protocol itself for v4), so it holds across
    machines unless the mount says ``local_lock=flock``/``all`` or ``nolock``; a lost
    machine's locks are freed when its NFS lease (v4, 90 s by default) runs out.
    """
    path = lock_path(data_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process writing %s", key)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_LOCKED_RUNS: set = set()  # the wrappers made below: a run() is wrapped once


def _locked_run(run: Callable[..., Any]) -> Callable[..., Any]:
    """``run`` under the task's output lock; skipped if another process finished it meanwhile."""
    if inspect.isgeneratorfunction(run):  # dynamic dependencies: keep it a generator

        @functools.wraps(run)
        def locked_generator(self: SamplerTask) -> Iterator[Any]:
            with output_lock(self.data_dir, self.lock_key()):
                if self.complete():
                    return
                yield from run(self)

        return locked_generator

    @functools.wraps(run)
    def locked(self: SamplerTask) -> Any:
        with output_lock(self.data_dir, self.lock_key()):
            if self.complete():
                return None
            return run(self)

    return locked


# --------------------------------------------------------------------------- the base task


class SamplerTask(luigi.Task):
    """One base class for every task of the sampler (see the module docstring)."""

    data_dir = DataDirParameter()

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is not None and run not in _LOCKED_RUNS:
            locked = _locked_run(run)
            _LOCKED_RUNS.add(locked)
            setattr(cls, "run", locked)  # noqa: B010 - mypy refuses to assign to a method

    @classmethod
    def get_params(cls) -> list[tuple[str, luigi.Parameter]]:
        # What for: luigi lists a class's parameters (dir(cls), a getattr per name: 26 us for
        # FetchCategory) at every instantiation, str() and scheduler call -- 19,000 times to
        # schedule 1000 categories, 7% of that CPU.  How: luigi's own listing of the final
        # class, made once per class and kept in a table keyed by the class itself.  Neither
        # a super() chain nor a class attribute (which subclasses would inherit) is involved,
        # so where mixins stand in a task's bases does not matter.
        return list(_parameters_of(cls))

    @classmethod
    def get_param_values(cls, params, args, kwargs):  # luigi's signature
        try:
            return super().get_param_values(params, args, kwargs)
        except ConfigError:
            raise
        except ValueError as error:
            # luigi's message names the task and parameter; name the flag and the cause.
            family = cls.get_task_family()
            for name, param in params:
                if name in kwargs:
                    continue
                try:
                    param.task_value(family, name)
                except Exception as cause:  # any: re-raised with its flag named
                    if isinstance(cause, ConfigError):  # names its flag already
                        raise cause from error
                    if isinstance(param, FromSection):  # most likely set in its owning section
                        raise ConfigError(f"{flag(param._section, param._name)}: {cause}") from error
                    raise ConfigError(f"{flag(family, name)}: {cause}") from error
            raise

    def __init__(self, *args, **kwargs) -> None:
        check_config_path()  # before any value read from the files is trusted or checked
        super().__init__(*args, **kwargs)
        _refuse_symlinked_outputs(self.data_dir)
        self.validate()
        # Build every dependency now: a bad upstream setting then fails this task's
        # construction (the command, before any stage runs) instead of luigi's scheduling.
        luigi.task.flatten(self.requires())
        # The settings are sound: is there a luigid to run them with?  (Once, for the task
        # the command line asks for.)
        check_scheduler_for(self)

    def validate(self) -> None:
        """Raise ConfigError naming the flag of a parameter value that cannot work."""

    def require_at_least(self, name: str, minimum: int, section: str | None = None) -> None:
        value = getattr(self, name)
        if value < minimum:
            raise ConfigError(
                f"{flag(section or self.get_task_family(), name)} must be at least {minimum}, not {value}"
            )

    def settings_of(self, kind: type[Settings], **others: Any) -> Settings:
        """``kind`` (a plain module's dataclass of settings) from this task's parameters of
        the same names, plus ``others``; its fields no parameter names keep their defaults."""
        fields = {field.name for field in dataclasses.fields(kind)}
        given = {name: getattr(self, name) for name, _ in self.get_params() if name in fields}
        return kind(**given, **others)

    def path(self, *parts: str) -> Path:
        """A path under this task's data_dir; nothing the pipeline writes lives elsewhere."""
        return Path(self.data_dir).joinpath(*parts)

    def publish(self) -> None:
        """Make data_dir's published view (manifest.csv, images/, export/<name>/) this task's
        configuration's; called at the end of a run that asked for this task (tasks/summary.py)."""

    def lock_key(self) -> str:
        """What this task's run() must not share with another process: its outputs."""
        outputs = sorted(target.path for target in luigi.task.flatten(self.output()))
        return "\n".join(outputs) or self.task_id


_CHECKED_DATA_DIRS: set[str] = set()


def _refuse_symlinked_outputs(data_dir: str) -> None:
    """ConfigError when an output folder in ``data_dir`` is a symbolic link (once per process
    and data_dir: every task instance passes here)."""
    if data_dir in _CHECKED_DATA_DIRS:
        return
    try:
        refuse_symlinked_outputs(data_dir)
    except SymlinkedOutput as error:
        raise ConfigError(str(error)) from None
    _CHECKED_DATA_DIRS.add(data_dir)


@functools.cache
def _parameters_of(task_class: type[luigi.Task]) -> tuple[tuple[str, luigi.Parameter], ...]:
    """luigi's list of ``task_class``'s parameters (its Task.get_params, called directly).

    Made at the first call, like luigi's own: class decorators that add parameters
    (luigi.util.inherits) have done so by then."""
    return tuple(luigi.Task.get_params.__func__(task_class))  # type: ignore[attr-defined]


class RebuiltWhenInputsChange(SamplerTask):
    """A task under make's rule on top of luigi's: an output older than one of its inputs is stale.

    Luigi calls a task complete once its output exists, so a report made from an earlier
    manifest would stay for ever; a task of this kind is made again.
    """

    def complete(self) -> bool:
        outputs = luigi.task.flatten(self.output())
        if not outputs or not all(target.exists() for target in outputs):
            return False
        # Its inputs may have been made again since (a category repaired, a 429 asked again):
        # only outputs made after them count.
        if not all(task.complete() for task in luigi.task.flatten(self.requires())):
            return False
        inputs = [target for target in luigi.task.flatten(self.input()) if target.exists()]
        if not inputs:
            return True
        # (Every output of the pipeline is a tasks.targets target.)
        newest_input = max(target.mtime_ns() for target in inputs)
        return all(target.mtime_ns() >= newest_input for target in outputs)


class ActionTask(SamplerTask):
    """A task that acts on data_dir when asked (PruneStore, VerifyStore), not a product.

    It runs once per invocation: complete() is true only in the process that ran it, so the
    end-of-run check that the requested output is still there (tasks/summary.py) skips it.
    """

    checked_again_at_end = False

    def complete(self) -> bool:
        return getattr(self, "_acted", False)

    def run(self) -> None:
        self.act()
        self._acted = True

    def act(self) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------- luigi's worker


def current_worker() -> luigi.worker.Worker | None:
    """The luigi Worker of this process, found through the SIGUSR1 handler it installs
    (luigi offers no other way to reach it from a task's event handler)."""
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
