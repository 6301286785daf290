"""Luigi's own cost per task, for bench_fetch.py: FetchFives' shape with empty tasks.

``luigi --module benchmarks.luigi_floor EmptyFives --folder DIR --tasks N --workers W``
schedules N ``EmptyCategory`` tasks that only write an empty output file: every
task still costs luigi a scheduler round trip and a forked process (with more than
one worker), as each FetchCategory does.  The run's wall time is therefore a floor
under any FetchFives run of N category tasks with W workers on this machine,
whatever the downloads cost.
"""

from __future__ import annotations

from pathlib import Path

import luigi

import pipeline  # noqa: F401 - the same imports as a real run, so the same process is forked


class EmptyCategory(luigi.Task):
    folder = luigi.Parameter()
    number = luigi.IntParameter()

    resources = {"fetch_slots": 1}  # scheduled like FetchCategory

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(Path(self.folder) / f"{self.number}.done"))

    def run(self) -> None:
        Path(self.output().path).write_text("")


class EmptyFives(luigi.WrapperTask):
    folder = luigi.Parameter()
    tasks = luigi.IntParameter()

    def requires(self) -> list[EmptyCategory]:
        return [EmptyCategory(folder=self.folder, number=n) for n in range(self.tasks)]
