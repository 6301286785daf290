"""Stage 1: the ImageNet fall 2011 URL tarball."""

from __future__ import annotations

import luigi

from sampler.download import ARCHIVE_SNAPSHOT, ORIGINAL_ADDRESS
from sampler.sources import SourceError, local_path
from tasks.configuration import flag
from tasks.errors import ConfigError
from tasks.parameters import ListParameter, knob
from tasks.progress import task_progress
from tasks.targets import AtomicTarget
from tasks.task import SamplerTask


class DownloadUrlTarball(SamplerTask):
    """imagenet_fall11_urls.tgz from the first mirror that serves a valid copy."""

    # Any mirror yields the same (verified) file.
    mirrors = knob(
        ListParameter,
        (ARCHIVE_SNAPSHOT, ORIGINAL_ADDRESS),
        "URLs, file:// URLs or local paths, tried in order (a JSON list, or a,b)",
    )
    timeout = knob(luigi.FloatParameter, 60.0, "Seconds per socket read")

    # Each mirror is already tried several times inside one run; a broken tarball stays broken.
    retry_count = 1

    def validate(self) -> None:
        if not self.mirrors or not all(isinstance(m, str) and m.strip() for m in self.mirrors):
            raise ConfigError(
                f"{flag('DownloadUrlTarball', 'mirrors')} must name at least one URL or path "
                f"(a JSON list, or a,b), not {list(self.mirrors)!r}"
            )
        for mirror in self.mirrors:  # a typo, or a bare word where a list was meant
            try:
                path = local_path(mirror)
            except SourceError as error:
                raise ConfigError(f"{flag('DownloadUrlTarball', 'mirrors')}: {error}") from error
            if path is not None and not path.is_file():
                raise ConfigError(
                    f"{flag('DownloadUrlTarball', 'mirrors')}: {mirror!r} is neither an http(s):// URL "
                    "nor an existing file"
                )
        if not self.timeout > 0:
            raise ConfigError(f"{flag('DownloadUrlTarball', 'timeout')} must be positive, not {self.timeout}")

    def output(self) -> AtomicTarget:
        return AtomicTarget(self.path("download", "imagenet_fall11_urls.tgz"))

    def run(self) -> None:
        from sampler.download import download_url_tarball

        progress = task_progress(self)
        # Not through temporary_path(): the download keeps a .part file beside the output
        # across attempts and runs (to resume), and renames it into place once verified.
        mirror = download_url_tarball(
            list(self.mirrors), self.output().fs_path, progress=progress, timeout=self.timeout
        )
        progress(100, f"downloaded from {mirror}")
