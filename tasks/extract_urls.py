"""Stage 2: stream the tarball once into an index of every URL, by synset."""

from __future__ import annotations

import logging

import luigi

from tasks.download_url_tarball import DownloadUrlTarball
from tasks.parameters import knob
from tasks.progress import task_progress
from tasks.targets import AtomicFolderTarget
from tasks.task import SamplerTask

log = logging.getLogger(__name__)

PUBLISHED_LINES = 14_197_122
PUBLISHED_BYTES = 1_134_662_781


class ExtractUrls(SamplerTask):
    """``urls/``: the URL index, per-synset counts and an extraction report."""

    compare_published = knob(
        luigi.BoolParameter,
        True,
        "Compare line and byte counts with the published fall11_urls.txt (off for the demo)",
    )

    # A malformed tarball or a full disk does not get better by retrying in 10 s.
    retry_count = 1

    def requires(self) -> DownloadUrlTarball:
        return DownloadUrlTarball(data_dir=self.data_dir)

    def output(self) -> AtomicFolderTarget:
        return AtomicFolderTarget(self.path("urls"))

    def run(self) -> None:
        from sampler.index.stream import build_url_index

        with self.output().temporary_path() as tmp:
            report = build_url_index(
                self.input().fs_path,
                tmp,
                progress=task_progress(self),
                expected_lines=PUBLISHED_LINES if self.compare_published else None,
                expected_bytes=PUBLISHED_BYTES if self.compare_published else None,
            )
        malformed = (
            sum(report.get("malformed", {}).values()) if isinstance(report.get("malformed"), dict) else 0
        )
        log.info(
            "indexed %s URLs of %s synsets; %s malformed lines skipped",
            f"{report.get('urls', 0):,}",
            f"{report.get('synsets', 0):,}",
            f"{malformed:,}",
        )
        if report.get("warning"):
            log.warning("%s", report["warning"])
