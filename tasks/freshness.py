"""Make's rule on top of luigi's: a view (report, export) older than what it was made from
is made again."""

from __future__ import annotations

import luigi

from tasks.task import SamplerTask


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
