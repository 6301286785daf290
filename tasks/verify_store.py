"""VerifyStore: every body in ``store/`` read back and checked against its sha256.

``luigi --module pipeline VerifyStore`` quarantines damaged entries (``store/quarantine/``),
restores what a whole copy in images/ can restore, and says what the next FetchFives run
will fetch again (``store/verify_report.json``, and a line on the terminal).
"""

from __future__ import annotations

import dataclasses
import json
import logging

from sampler.store import ImageStore
from tasks.targets import AtomicTarget
from tasks.task import ActionTask

log = logging.getLogger(__name__)


class VerifyStore(ActionTask):
    """Check every store entry; ``store/verify_report.json`` says what was found and done."""

    def output(self) -> AtomicTarget:
        return AtomicTarget(self.path("store", "verify_report.json"))

    def act(self) -> None:
        from sampler.verify_store import verify_store

        report = verify_store(
            ImageStore(self.path("store")),
            self.path("fetch"),
            self.path("manifest.csv"),
            self.path("images"),
            self.path("runs"),
        )
        self.output().write_text(json.dumps(dataclasses.asdict(report), indent=1) + "\n")
        print(report.message(), flush=True)  # the user asked for this: say it on the terminal
        log.log(logging.WARNING if report.damaged else logging.INFO, "%s", report.message())
