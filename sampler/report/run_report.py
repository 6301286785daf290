"""Writing the run report into ``report/``: its SVG charts, ``summary.txt`` and ``run_report.json``.

The report is made in three parts: ``model`` reads a finished run's files into one
JSON-ready dict, ``text`` writes the human summary from it and ``charts`` draws it;
``run_files`` holds the lenient readers and the task timings file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from sampler.atomic import atomic_write_text
from sampler.report.charts import chart_svgs
from sampler.report.text import format_summary


def write_run_report(report: Mapping, out_dir: Path) -> dict[str, Path]:
    """Charts, ``summary.txt`` and, last (it marks the report complete), ``run_report.json``."""
    written = {}
    for name, svg in chart_svgs(report).items():
        atomic_write_text(out_dir / name, svg + "\n")
        written[name] = out_dir / name
    atomic_write_text(out_dir / "summary.txt", format_summary(report))
    written["summary.txt"] = out_dir / "summary.txt"
    atomic_write_text(out_dir / "run_report.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    written["run_report.json"] = out_dir / "run_report.json"
    return written
