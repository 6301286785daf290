"""Stage 1: the ImageNet fall 2011 URL tarball."""

from __future__ import annotations

from pathlib import Path

import luigi

from sampler.progress import task_progress
from tasks.base import HIDDEN, ConfigError, SamplerTask, flag

ARCHIVE_SNAPSHOT = (
    "http://web.archive.org/web/20190130005544id_/"
    "http://image-net.org/imagenet_data/urls/imagenet_fall11_urls.tgz"
)
ORIGINAL_ADDRESS = "http://image-net.org/imagenet_data/urls/imagenet_fall11_urls.tgz"


class DownloadUrlTarball(SamplerTask):
    """imagenet_fall11_urls.tgz from the first mirror that serves a valid copy."""

    mirrors = luigi.ListParameter(
        default=[ARCHIVE_SNAPSHOT, ORIGINAL_ADDRESS],
        significant=False,  # any mirror yields the same (verified) file
        visibility=HIDDEN,
        description="URLs, file:// URLs or local paths, tried in order (a JSON list)",
    )
    timeout = luigi.FloatParameter(
        default=60.0, significant=False, visibility=HIDDEN, description="Seconds per socket read"
    )

    # Each mirror is already tried several times inside one run; a broken tarball stays broken.
    retry_count = 1

    def validate(self) -> None:
        if not self.mirrors or not all(isinstance(m, str) and m.strip() for m in self.mirrors):
            raise ConfigError(
                f"{flag('DownloadUrlTarball', 'mirrors')} must be a non-empty JSON list of URLs or paths, "
                f"not {list(self.mirrors)!r}"
            )
        if not self.timeout > 0:
            raise ConfigError(f"{flag('DownloadUrlTarball', 'timeout')} must be positive, not {self.timeout}")

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(self.path("download", "imagenet_fall11_urls.tgz"))

    def run(self) -> None:
        from sampler.download import download_url_tarball

        progress = task_progress(self)
        mirror = download_url_tarball(
            list(self.mirrors), Path(self.output().path), progress=progress, timeout=self.timeout
        )
        progress(100, f"downloaded from {mirror}")
