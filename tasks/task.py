"""``SamplerTask``, the base of every task, and ``ActionTask``, one that acts when asked.

* **Identity.** Every task has a significant ``data_dir`` (absolute, so two folders never
  share a task id) and receives every upstream setting that changes its output through
  ``requires()``; tuning knobs are insignificant and hidden from luigid's UI
  (tasks.parameters).
* **Validation.** A task checks its parameters, and builds its dependencies, when it is
  built: a bad setting fails the command before any stage runs, naming the flag.
* **Concurrency.** ``run()`` holds a lock keyed on the task's outputs (tasks.locks).
* **No waiting on the impossible.** The worker's event handlers (tasks.worker_hooks) are
  registered on SamplerTask when the ``tasks`` package is imported.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import luigi

from sampler.atomic import SymlinkedOutput, refuse_symlinked_outputs
from tasks.configuration import flag
from tasks.errors import ConfigError, check_config_path, check_scheduler_for
from tasks.locks import LOCKED_RUNS, locked_run
from tasks.parameters import DataDirParameter, FromSection

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Settings = TypeVar("Settings", bound="DataclassInstance")


class SamplerTask(luigi.Task):
    """One base class for every task of the sampler (see the module docstring)."""

    data_dir = DataDirParameter()

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is not None and run not in LOCKED_RUNS:
            locked = locked_run(run)
            LOCKED_RUNS.add(locked)
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
                        # (FromSection's own attributes: tasks.parameters)
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
    (luigi.util.inherits) have done so by then.  (``get_params.__func__`` applied to any
    class: tests/test_luigi_private_api.py.)"""
    return tuple(luigi.Task.get_params.__func__(task_class))  # type: ignore[attr-defined]


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
