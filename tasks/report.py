"""Stage 6: see the sample.  A contact sheet, a gallery page and a run report, after FetchFives.

``All`` runs the whole pipeline and these three.  This module also registers the
luigi event handler that records each task's processing time in
``report/timings.csv``, which the run report reads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import luigi

from sampler.contact_sheet import THUMB_HEIGHT
from sampler.progress import task_progress
from tasks.config import RebuiltWhenInputsChange, data_path
from tasks.extract_urls import ExtractUrls
from tasks.fetch_fives import FetchFives
from tasks.sample_urls import SampleUrls

log = logging.getLogger(__name__)


def timings_path() -> Path:
    return data_path("report", "timings.csv")


@luigi.Task.event_handler(luigi.Event.PROCESSING_TIME)
def record_processing_time(task: luigi.Task, seconds: float) -> None:
    """Append the task's run() time to ``report/timings.csv`` (in whichever worker process ran it)."""
    # Only this pipeline's tasks (the file lives in its data_dir), and only those that do work.
    if not type(task).__module__.startswith("tasks.") or isinstance(task, luigi.WrapperTask):
        return
    from sampler.run_report import append_timing

    try:
        append_timing(timings_path(), task.get_task_family(), task.task_id, seconds)
    except OSError as error:  # a report detail must never fail the task that just succeeded
        log.warning("cannot record the processing time of %s: %s", task.task_id, error)


class ContactSheet(RebuiltWhenInputsChange, luigi.Task):
    """``contact_sheet.jpg``: every kept image as a thumbnail, one row per category, gaps marked."""

    thumb_height = luigi.IntParameter(default=THUMB_HEIGHT, description="Thumbnail height in pixels")

    def requires(self) -> FetchFives:
        return FetchFives()

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(data_path("contact_sheet.jpg"))

    def run(self) -> None:
        from sampler.contact_sheet import write_contact_sheet
        from sampler.gather import read_manifest

        fives = self.requires()
        counts = write_contact_sheet(
            Path(self.output().path),
            fives.categories(),
            read_manifest(Path(self.input().path)),
            data_path("images"),
            fives.per_category,
            thumb_height=self.thumb_height,
            progress=task_progress(self),
        )
        log.info(
            "contact sheet %s: %d thumbnails, %d missing, %d unreadable (%dx%d px)",
            self.output().path,
            counts["thumbnails"],
            counts["missing"],
            counts["unreadable"],
            counts["width"],
            counts["height"],
        )


class RunReport(RebuiltWhenInputsChange, luigi.Task):
    """``report/``: ``run_report.json``, ``summary.txt`` (printed at the end of the run) and SVG charts."""

    def requires(self) -> FetchFives:
        return FetchFives()

    def output(self) -> dict[str, luigi.LocalTarget]:
        return {
            "json": luigi.LocalTarget(data_path("report", "run_report.json")),
            "summary": luigi.LocalTarget(data_path("report", "summary.txt")),
        }

    def run(self) -> None:
        from sampler.run_report import collect_run_report, format_summary, write_run_report

        fives = self.requires()
        sample = SampleUrls()
        report = collect_run_report(
            categories=fives.categories(),
            per_category=fives.per_category,
            manifest=Path(self.input().path),
            fetch_summary=data_path("fetch_summary.json"),
            attempts=data_path("attempts.csv"),
            url_report=Path(ExtractUrls().output().path) / "report.json",
            sample=Path(sample.output().path),
            timings=timings_path(),
        )
        write_run_report(report, Path(self.output()["json"].path).parent)
        summary = format_summary(report)
        log.info("run report:\n%s", summary)
        print(summary, flush=True)  # on the terminal, where the user is looking at the end of the run


class Gallery(RebuiltWhenInputsChange, luigi.Task):
    """``gallery/index.html``: a static page of every category's thumbnails, sources and the report."""

    def requires(self) -> dict[str, luigi.Task]:
        return {"fives": FetchFives(), "report": RunReport(), "sheet": ContactSheet()}

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(data_path("gallery", "index.html"))

    def run(self) -> None:
        from sampler.gallery import build_gallery
        from sampler.gather import read_manifest
        from sampler.run_report import read_json_object

        fives = self.requires()["fives"]
        report_files = self.input()["report"]
        counts = build_gallery(
            Path(self.output().path).parent,
            fives.categories(),
            read_manifest(Path(self.input()["fives"].path)),
            data_path("images"),
            fives.per_category,
            report=read_json_object(Path(report_files["json"].path)),
            extra_links=[
                (Path(self.input()["sheet"].path), "contact sheet"),
                (Path(report_files["summary"].path), "run summary"),
                (Path(report_files["json"].path), "run report (JSON)"),
                (data_path("manifest.csv"), "manifest.csv"),
            ],
            progress=task_progress(self),
        )
        log.info(
            "gallery %s: %d thumbnails, %d missing",
            self.output().path,
            counts["thumbnails"],
            counts["missing"],
        )


class All(luigi.WrapperTask):
    """The sample and everything to see it by: FetchFives, ContactSheet, Gallery, RunReport."""

    def requires(self) -> list[luigi.Task]:
        return [FetchFives(), ContactSheet(), RunReport(), Gallery()]
