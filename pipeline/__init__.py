"""Entry point for ``luigi --module pipeline <Task>``: every task of the sampler.

DownloadUrlTarball -> ExtractUrls -> ParseSynsets -> SampleUrls -> FetchCategory (x N) -> FetchFives,
then ContactSheet, RunReport and Gallery; All runs everything.  PruneStore trims store/.
"""

from tasks.download_url_tarball import DownloadUrlTarball
from tasks.extract_urls import ExtractUrls
from tasks.fetch_fives import FetchCategory, FetchFives
from tasks.parse_synsets import ParseSynsets
from tasks.prune_store import PruneStore
from tasks.report import All, ContactSheet, Gallery, RunReport
from tasks.sample_urls import SampleUrls

__all__ = [
    "All",
    "ContactSheet",
    "DownloadUrlTarball",
    "ExtractUrls",
    "FetchCategory",
    "FetchFives",
    "Gallery",
    "ParseSynsets",
    "PruneStore",
    "RunReport",
    "SampleUrls",
]
