"""The one place that knows where outputs live."""

from __future__ import annotations

from pathlib import Path

import luigi


class paths(luigi.Config):  # noqa: N801 - luigi maps the class name to the [paths] section
    data_dir = luigi.Parameter(default="data", description="Folder that holds every output of the pipeline")


def data_path(*parts: str) -> Path:
    """A path under ``[paths] data_dir``; nothing the pipeline writes lives elsewhere."""
    return Path(paths().data_dir).joinpath(*parts)


class ParamsListedOnce:
    """Luigi lists a task class's parameters with ``dir(cls)`` at every instantiation,
    every ``str()`` and every scheduler call: thousands of times for the category
    tasks.  A class's parameters do not change after it is defined, so list them once.
    (Listed before luigi.Task.)"""

    @classmethod
    def get_params(cls) -> list[tuple[str, luigi.Parameter]]:
        listed = cls.__dict__.get("_params_listed")
        if listed is None:
            listed = super().get_params()  # type: ignore[misc]
            cls._params_listed = listed
        return list(listed)


class RebuiltWhenInputsChange:
    """Make's rule on top of luigi's: an output older than one of its inputs is stale.

    Luigi calls a task complete once its output exists, so a report made from an
    earlier manifest, or a sample drawn for an earlier category list, would stay for
    ever; with this mixin (listed before luigi.Task) it is made again.
    """

    def complete(self) -> bool:
        outputs = luigi.task.flatten(self.output())
        if not outputs or not all(target.exists() for target in outputs):
            return False
        inputs = [target for target in luigi.task.flatten(self.input()) if target.exists()]
        if not inputs:
            return True
        newest_input = max(Path(target.path).stat().st_mtime_ns for target in inputs)
        return all(Path(target.path).stat().st_mtime_ns >= newest_input for target in outputs)
