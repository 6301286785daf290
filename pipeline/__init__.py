"""Entry point for ``luigi --module pipeline <Task>``: every task of the sampler.

DownloadUrlTarball -> ExtractUrls -> ParseSynsets -> SampleUrls -> FetchCategory (x N) -> FetchFives,
then ContactSheet, RunReport and Gallery; All runs everything.  ExportDataset turns the
sample into a dataset (ImageFolder, WebDataset).

Imported as the command line's module, it also makes SIGTERM stop the whole run (worker
processes included) the way Ctrl-C does, leaving nothing half-written.
"""

from tasks.base import stop_whole_run_on_sigterm
from tasks.download_url_tarball import DownloadUrlTarball
from tasks.export_dataset import ExportDataset
from tasks.extract_urls import ExtractUrls
from tasks.fetch_fives import FetchCategory, FetchFives
from tasks.parse_synsets import ParseSynsets
from tasks.report import All, ContactSheet, Gallery, RunReport
from tasks.sample_urls import SampleUrls

stop_whole_run_on_sigterm()

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
    "RunReport",
    "SampleUrls",
]
