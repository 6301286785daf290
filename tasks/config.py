"""The one place that knows where outputs live."""

from __future__ import annotations

from pathlib import Path

import luigi


class paths(luigi.Config):  # noqa: N801 - luigi maps the class name to the [paths] section
    data_dir = luigi.Parameter(default="data", description="Folder that holds every output of the pipeline")


def data_path(*parts: str) -> Path:
    """A path under ``[paths] data_dir``; nothing the pipeline writes lives elsewhere."""
    return Path(paths().data_dir).joinpath(*parts)
