"""Stage 6: see the sample.  A contact sheet, a gallery page and a run report, after FetchFives,
in its run folder (``runs/<key>/``; data_dir's are copies, published at the end of the run).

``All`` runs the whole pipeline and these three.  This module also registers the
luigi event handler that records each task's processing time in
``runs/timings.csv``, which the run report reads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import luigi

from sampler.fetch.gather import read_manifest, round_plans
from sampler.report.contact_sheet import THUMB_HEIGHT, contact_sheet_output, write_contact_sheet
from sampler.report.run_files import append_timing, read_json_object
from tasks.extract_urls import ExtractUrls
from tasks.fetch_fives import FetchConfig, FetchFives
from tasks.freshness import RebuiltWhenInputsChange
from tasks.parameters import knob
from tasks.progress import task_progress
from tasks.targets import AtomicFolderTarget, AtomicTarget
from tasks.task import SamplerTask

log = logging.getLogger(__name__)


def timings_path(data_dir: str) -> Path:
    # Every task's, whatever its configuration: beside the run folders, not in a published report/.
    return Path(data_dir, "runs", "timings.csv")


def dependency_ids(task: luigi.Task) -> set[str]:
    """The ids of ``task`` and of every task it depends on (its configuration's tasks)."""
    seen: dict[str, luigi.Task] = {}
    stack = [task]
    while stack:
        current = stack.pop()
        if current.task_id not in seen:
            seen[current.task_id] = current
            stack.extend(luigi.task.flatten(current.requires()))
    return set(seen)


def top_up_ids(fives: FetchFives) -> set[str]:
    """The ids of the top-up rounds FetchFives ran (dynamic dependencies: not in requires())."""
    labels = {c.wnid: c.label for c in fives.categories()}
    ids = set()
    for round_, plan in round_plans(fives.folder()).items():
        for wnid in plan.rerun:
            if wnid in labels:
                ids.add(fives.category_task(wnid, labels[wnid], round_).task_id)
    return ids


class ReportTask(FetchConfig, RebuiltWhenInputsChange):
    """A view of FetchFives' result, in its run folder: same settings, and rebuilt whenever
    what it reads is newer."""

    def fives(self) -> FetchFives:
        return FetchFives(**self.fetch_settings())


@luigi.Task.event_handler(luigi.Event.PROCESSING_TIME)
def record_processing_time(task: luigi.Task, seconds: float) -> None:
    """Append the task's run() time to ``runs/timings.csv`` (in whichever worker process ran it)."""
    # Only this pipeline's tasks (the file lives in its data_dir), and only those that do work.
    if not isinstance(task, SamplerTask) or isinstance(task, luigi.WrapperTask):
        return
    try:
        append_timing(timings_path(task.data_dir), task.get_task_family(), task.task_id, seconds)
    except OSError as error:  # a report detail must never fail the task that just succeeded
        log.warning("cannot record the processing time of %s: %s", task.task_id, error)


class ContactSheet(ReportTask):
    """``contact_sheet.jpg``: every kept image as a thumbnail, one row per category, gaps marked;
    past CATEGORIES_PER_SHEET categories, ``contact_sheet/sheet-001.jpg``... instead."""

    thumb_height = knob(luigi.IntParameter, THUMB_HEIGHT, "Thumbnail height in pixels")

    def requires(self) -> FetchFives:
        return self.fives()

    def output(self) -> AtomicTarget | AtomicFolderTarget:
        # The file, or the folder of numbered sheets (written as one): every file it writes.
        path = contact_sheet_output(self.run_folder(), len(self.fives().categories()))
        return AtomicTarget(path) if path.suffix == ".jpg" else AtomicFolderTarget(path)

    def run(self) -> None:
        fives = self.requires()
        out = self.output()
        counts = write_contact_sheet(
            out.fs_path,
            fives.categories(),
            read_manifest(self.input()["manifest"]),
            self.run_path("images"),
            self.per_category,
            thumb_height=self.thumb_height,
            progress=task_progress(self),
        )
        log.info(
            "contact sheet %s: %d thumbnails, %d missing, %d unreadable (%d sheet(s), %dx%d px at most)",
            out.path,
            counts["thumbnails"],
            counts["missing"],
            counts["unreadable"],
            counts.get("sheets", 1),
            counts["width"],
            counts["height"],
        )


class RunReport(ReportTask):
    """``report/``: ``run_report.json``, ``summary.txt`` (printed at the end of the run) and SVG charts."""

    def requires(self) -> dict[str, luigi.Task]:
        return {
            "fives": self.fives(),
            "sample": self.sample_task(),
            "urls": ExtractUrls(data_dir=self.data_dir),
        }

    def output(self) -> dict[str, AtomicTarget]:
        return {
            "json": AtomicTarget(self.run_path("report", "run_report.json")),
            "summary": AtomicTarget(self.run_path("report", "summary.txt")),
        }

    def run(self) -> None:
        from sampler.report.model import collect_run_report
        from sampler.report.run_report import write_run_report

        fives = self.fives()
        inputs = self.input()
        report = collect_run_report(
            categories=fives.categories(),
            per_category=self.per_category,
            manifest=inputs["fives"]["manifest"].fs_path,
            fetch_summary=inputs["fives"]["summary"].fs_path,
            attempts=inputs["fives"]["attempts"].fs_path,
            url_report=inputs["urls"].child("report.json"),
            sample=inputs["sample"].fs_path,
            timings=timings_path(self.data_dir),
            task_ids=dependency_ids(fives) | top_up_ids(fives),
        )
        report["config"] = fives.described()
        written = write_run_report(report, self.output()["json"].fs_path.parent)
        summary = written["summary.txt"].read_text(encoding="utf-8")
        log.info("run report:\n%s", summary)
        print(summary, flush=True)  # on the terminal, where the user is looking at the end of the run


class Gallery(ReportTask):
    """``gallery/``: ``index.html``, a static page of every category's thumbnails, sources and the
    report; past one page's worth, an index of the categories and ``page-001.html``... (and
    ``thumbs/``), written as one folder."""

    def requires(self) -> dict[str, luigi.Task]:
        settings = self.fetch_settings()
        return {"fives": self.fives(), "report": RunReport(**settings), "sheet": ContactSheet(**settings)}

    def output(self) -> dict[str, AtomicTarget | AtomicFolderTarget]:
        # The folder holds every file written (pages, thumbs/); index.html is where to start.
        return {
            "index": AtomicTarget(self.run_path("gallery", "index.html")),
            "folder": AtomicFolderTarget(self.run_path("gallery")),
        }

    def run(self) -> None:
        from sampler.report.gallery import build_gallery

        fives = self.fives()
        inputs = self.input()
        report_files = inputs["report"]
        sheet = inputs["sheet"].fs_path
        sheets = sorted(sheet.glob("sheet-*.jpg")) if sheet.is_dir() else [sheet]
        manifest = inputs["fives"]["manifest"].fs_path
        # (sampler.report writes the folder atomically itself: it is called without luigi too.)
        counts = build_gallery(
            self.output()["folder"].fs_path,
            fives.categories(),
            read_manifest(manifest),
            self.run_path("images"),
            self.per_category,
            report=read_json_object(report_files["json"]),
            extra_links=[
                *[
                    (path, "contact sheet" + (f" {n}" if len(sheets) > 1 else ""))
                    for n, path in enumerate(sheets, start=1)
                ],
                (report_files["summary"].fs_path, "run summary"),
                (report_files["json"].fs_path, "run report (JSON)"),
                (manifest, "manifest.csv"),
            ],
            progress=task_progress(self),
        )
        log.info(
            "gallery %s: %d thumbnails, %d missing",
            self.output()["index"].path,
            counts["thumbnails"],
            counts["missing"],
        )


class All(FetchConfig, luigi.WrapperTask):
    """The sample and everything to see it by: FetchFives, ContactSheet, Gallery, RunReport."""

    def requires(self) -> list[luigi.Task]:
        settings = self.fetch_settings()
        return [FetchFives(**settings), ContactSheet(**settings), RunReport(**settings), Gallery(**settings)]
