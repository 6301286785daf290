"""Shared helpers of the tasks; the base class and parameters live in ``tasks.base``."""

from __future__ import annotations

from pathlib import Path

import luigi

from tasks.base import paths


def data_path(*parts: str) -> Path:
    """A path under the configured ``[paths] data_dir`` (tasks use ``self.path``, which
    follows the task's own data_dir parameter)."""
    return Path(paths().data_dir).joinpath(*parts)


class RebuiltWhenInputsChange:
    """Make's rule on top of luigi's: an output older than one of its inputs is stale.

    Luigi calls a task complete once its output exists, so a report made from an
    earlier manifest would stay for ever; with this mixin (listed before the task
    class) it is made again.
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
