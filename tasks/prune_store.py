"""PruneStore: bounded growth of ``store/``, the images every configuration fetched.

``luigi --module pipeline PruneStore`` removes every store entry that no configuration
in data_dir references (see ``sampler.fetch.category_round.referenced_hashes``) and reports
what it freed.  To give up a configuration, delete its ``fetch/seed<S>-n<N>-k<K>/``
folder first (and its ``runs/<run>/`` and ``exports/<export>/``, which hold copies of the
images).  Run it when no fetch is running on this data_dir.
"""

from __future__ import annotations

import dataclasses
import json
import logging

from sampler.store import ImageStore
from tasks.targets import AtomicTarget
from tasks.task import ActionTask

log = logging.getLogger(__name__)


class PruneStore(ActionTask):
    """Remove store entries no configuration references; ``store/prune_report.json`` says what went."""

    def output(self) -> AtomicTarget:
        return AtomicTarget(self.path("store", "prune_report.json"))

    def act(self) -> None:
        from sampler.fetch.category_round import referenced_hashes

        store = ImageStore(self.path("store"))
        report = store.prune(referenced_hashes(self.path("fetch"), self.path("manifest.csv")))
        self.output().write_text(json.dumps(dataclasses.asdict(report), indent=1) + "\n")
        print(report.message(), flush=True)  # the user asked for this: say it on the terminal
        log.info("%s", report.message())
