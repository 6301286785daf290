"""Entry point for ``luigi --module pipeline <Task>``: every task of the sampler.

DownloadUrlTarball -> ExtractUrls -> ParseSynsets -> SampleUrls -> FetchCategory (x N) -> FetchFives,
then ContactSheet, RunReport and Gallery; All runs everything.  ExportDataset turns the
sample into a dataset (ImageFolder, WebDataset); PruneStore trims store/, VerifyStore checks it.

Imported as the command line's module, it also makes SIGTERM stop the whole run (worker
processes included) the way Ctrl-C does, leaving nothing half-written.

Task modules import only luigi and light helpers; the heavy modules the work needs (numpy,
pyarrow, Pillow) are imported where they are used, so a command that runs nothing (``--help``,
a pipeline already complete, a configuration that fails to schedule) does not pay for them.
"""

from __future__ import annotations

import importlib
import sys

import luigi

from tasks import recovery, summary  # noqa: F401  (recovery: its event handlers, for a rerun after a crash)
from tasks.download_url_tarball import DownloadUrlTarball
from tasks.errors import short_unknown_task
from tasks.export_dataset import ExportDataset
from tasks.extract_urls import ExtractUrls
from tasks.fetch_fives import FetchCategory, FetchFives
from tasks.parse_synsets import ParseSynsets
from tasks.prune_store import PruneStore
from tasks.report import All, ContactSheet, Gallery, RunReport
from tasks.sample_urls import SampleUrls
from tasks.verify_store import VerifyStore
from tasks.worker_hooks import stop_whole_run_on_sigterm

# What a category task process imports: FetchCategory.run's modules.  (tasks.report's
# PROCESSING_TIME handler needs only sampler.report.run_files, light and loaded with the tasks.)
FETCH_STACK = (
    "sampler.fetch.category_round",
    "sampler.fetch.http_fetch",
    "sampler.fetch.image_check",
    "sampler.sampling",
    "sampler.index.read",
)


@FetchCategory.event_handler(luigi.Event.DEPENDENCY_DISCOVERED)
def import_fetch_stack(task: FetchCategory, dependency: luigi.Task) -> None:
    """Import the fetch stack in the scheduling process as soon as a category is to be run.

    With workers > 1, luigi forks one process per task from this process (luigi/worker.py,
    Worker._run_task), and this process never runs a task itself.  Imported here, before the
    first fork, the modules are inherited by every category task instead of imported again
    by each of them (about 0.1 s of CPU each, 200+ times a run).  Luigi fires this event
    while it schedules a FetchCategory that is not complete (Worker._add), in this process
    even with ``parallel_scheduling``; a complete pipeline never gets here.
    """
    for module in FETCH_STACK:
        importlib.import_module(module)


stop_whole_run_on_sigterm()
summary.install()  # the closing summary and exit code agree with what the run did
sys.excepthook = short_unknown_task  # a mistyped task name: one line (tasks/errors.py)

__all__ = [
    "All",
    "ContactSheet",
    "DownloadUrlTarball",
    "ExportDataset",
    "ExtractUrls",
    "FetchCategory",
    "FetchFives",
    "Gallery",
    "ParseSynsets",
    "PruneStore",
    "RunReport",
    "SampleUrls",
    "VerifyStore",
]
