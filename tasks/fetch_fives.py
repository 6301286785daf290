"""Stage 5: per_category working JPEGs for every category, and the manifest.

FetchFives names one FetchCategory per category in ``requires()`` (the list
is configuration, known before any stage runs), so every worker process and
machine pointed at one luigid schedules all of them and shares the work.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

import luigi

from sampler import CONFIG_DIR
from sampler.atomic import atomic_write_text
from sampler.category_job import (
    CategoryFiles,
    CategoryJob,
    fetch_category_round,
    final_message,
    read_result,
    round_plan_path,
)
from sampler.gather import (
    manifest_rows,
    plan_next_round,
    remove_unlisted_images,
    without_banned,
    write_fetch_report,
    write_manifest,
)
from sampler.http_fetch import FetchSettings
from sampler.image_check import judge_image, load_placeholder_hashes
from sampler.progress import task_progress
from sampler.sampling import iter_candidates
from sampler.url_index import UrlIndex
from tasks.config import ParamsListedOnce, data_path
from tasks.extract_urls import ExtractUrls
from tasks.parse_synsets import ParseSynsets
from tasks.sample_urls import SampleUrls

log = logging.getLogger(__name__)


def fetch_dir(seed: int, sample_size: int, per_category: int) -> Path:
    return data_path("fetch", f"seed{seed}-n{sample_size}-k{per_category}")


class FetchCategory(ParamsListedOnce, luigi.Task):
    """One category's working JPEGs (``fetch/.../<wnid>.json`` + the images themselves)."""

    wnid = luigi.Parameter()
    label = luigi.Parameter()
    per_category = luigi.IntParameter(default=5)
    seed = luigi.IntParameter(default=0)
    sample_size = luigi.IntParameter(default=100)
    round = luigi.IntParameter(
        default=0, description="0, or a top-up round after cross-category placeholders"
    )

    max_connections = luigi.IntParameter(
        default=48,
        significant=False,
        description="Most candidates a task fetches ahead (fewer while its hit rate is high)",
    )
    per_host = luigi.IntParameter(
        default=4, significant=False, description="Requests in flight per host, fleet-wide"
    )
    fleet_requests = luigi.IntParameter(
        default=64,
        significant=False,
        description="Requests in flight at once across every process sharing data_dir",
    )
    connect_timeout = luigi.FloatParameter(default=5.0, significant=False)
    read_timeout = luigi.FloatParameter(default=10.0, significant=False)
    deadline = luigi.FloatParameter(
        default=30.0, significant=False, description="Whole-download seconds per URL"
    )
    max_bytes = luigi.IntParameter(default=20_000_000, significant=False)
    max_redirects = luigi.IntParameter(default=5, significant=False)
    retries = luigi.IntParameter(default=2, significant=False, description="For 429/503/408/504/reset")
    backoff = luigi.FloatParameter(default=0.5, significant=False, description="First retry's wait, s")
    retry_after_max = luigi.FloatParameter(
        default=10.0, significant=False, description="A longer Retry-After gives the URL up"
    )
    min_side = luigi.IntParameter(
        default=32, significant=False, description="Smaller images are tracking pixels"
    )
    max_pixels = luigi.IntParameter(
        default=50_000_000, significant=False, description="Decompression-bomb guard"
    )
    placeholder_hashes = luigi.Parameter(default=str(CONFIG_DIR / "placeholders.csv"), significant=False)

    # Categories in flight across the fleet: [resources] fetch_slots.  Politeness is not this
    # but a cap on requests in flight (fleet_requests, per_host: sampler.request_slots).
    resources = {"fetch_slots": 1}

    def requires(self) -> dict:
        return {"sample": SampleUrls(per_category=self.sample_size, seed=self.seed), "urls": ExtractUrls()}

    def folder(self) -> Path:
        return fetch_dir(self.seed, self.sample_size, self.per_category)

    def files(self) -> CategoryFiles:
        return CategoryFiles(self.folder(), self.wnid)

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(self.files().result(self.round))

    def complete(self) -> bool:
        # Another configuration sharing images/ may have removed this one's files since;
        # a round superseded by a top-up round legitimately lost its evicted images.
        path = self.files().result(self.round)
        if not path.exists():
            return False
        if self.files().result(self.round + 1).exists():
            return True
        images = data_path("images")
        return all((images / image["file"]).is_file() for image in read_result(path)["kept"])

    def run(self) -> None:
        # The sample is the first sample_size of the synset's seeded order (SampleUrls writes
        # the same rows); reading it from the index spares every task a parse of the whole sample.
        index = UrlIndex.open(Path(self.input()["urls"].path))
        order = list(iter_candidates(index, self.wnid, self.seed))
        sample = order[: self.sample_size]
        job = CategoryJob(
            wnid=self.wnid,
            label=self.label,
            needed=self.per_category,
            sample=sample,
            continuation=partial(iter, order[self.sample_size :]),
            images_dir=data_path("images"),
            banned=load_placeholder_hashes(Path(self.placeholder_hashes)),
            earlier_attempts=[],
            max_in_flight=self.max_connections,
        )
        settings = FetchSettings(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            deadline=self.deadline,
            max_bytes=self.max_bytes,
            max_redirects=self.max_redirects,
            retries=self.retries,
            backoff=self.backoff,
            retry_after_max=self.retry_after_max,
            per_host=self.per_host,
        )
        progress = task_progress(self)
        judge = partial(judge_image, min_side=self.min_side, max_pixels=self.max_pixels)
        summary = fetch_category_round(
            self.files(),
            self.round,
            job,
            settings=settings,
            judge=judge,
            progress=progress,
            fleet_requests=self.fleet_requests,
        )
        # task_progress throttles reports under 100 %: always show the final count.
        progress(100, final_message(summary))
        if summary["shortfall"]:
            log.warning("%s (%s): %s", self.wnid, self.label, final_message(summary))


class FetchFives(luigi.Task):
    """``manifest.csv`` and ``images/``: per_category working JPEGs for each category."""

    per_category = luigi.IntParameter(default=5, description="Working JPEGs wanted per category")
    max_rounds = luigi.IntParameter(
        default=5, significant=False, description="Top-up rounds after placeholders"
    )

    def categories(self) -> list:
        # luigi calls requires() and complete() many times on one (cached) instance: read the list once.
        if not hasattr(self, "_categories"):
            self._categories = ParseSynsets().category_list()
        return self._categories

    def category_task(self, wnid: str, label: str, round_: int = 0) -> FetchCategory:
        sample = SampleUrls()
        return FetchCategory(
            wnid=wnid,
            label=label,
            per_category=self.per_category,
            seed=sample.seed,
            sample_size=sample.per_category,
            round=round_,
        )

    def requires(self) -> dict:
        # Every category up front, so that every worker process schedules all of them.
        # Built once per instance: luigi asks again and again, and each FetchCategory
        # instantiation reads its dozen parameters from the configuration.
        if not hasattr(self, "_dependency_cache"):
            self._dependency_cache = {
                "synsets": ParseSynsets(),
                "categories": [self.category_task(c.wnid, c.label) for c in self.categories()],
            }
        return self._dependency_cache

    def config_key(self) -> dict:
        """What the manifest was made from; a manifest of another configuration is stale."""
        sample = SampleUrls()
        return {
            "fetch": fetch_dir(sample.seed, sample.per_category, self.per_category).name,
            "categories": [[c.wnid, c.label] for c in self.categories()],
        }

    def complete(self) -> bool:
        summary = data_path("fetch_summary.json")
        if not (Path(self.output().path).exists() and summary.exists()):
            return False
        return json.loads(summary.read_text(encoding="utf-8")).get("config") == self.config_key()

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(data_path("manifest.csv"))

    def run(self):  # noqa: ANN201 - a generator: top-up rounds are dynamic dependencies
        progress = task_progress(self)
        categories = self.categories()
        order = [c.wnid for c in categories]
        labels = {c.wnid: c.label for c in categories}
        history = {
            wnid: [read_result(Path(t.path))]
            for wnid, t in zip(order, self.input()["categories"], strict=True)
        }
        current = {wnid: results[-1] for wnid, results in history.items()}
        plan = None
        folder = self.requires()["categories"][0].folder()
        for round_ in range(1, self.max_rounds + 1):
            plan = plan_next_round(order, history, current, plan)
            if not plan.rerun:
                break
            progress(50, f"round {round_}: topping up {len(plan.rerun)} categories after placeholders")
            atomic_write_text(round_plan_path(folder, round_), json.dumps(plan.to_json(), indent=1) + "\n")
            tasks = [self.category_task(w, labels[w], round_) for w in plan.rerun]
            yield tasks
            for wnid, task in zip(plan.rerun, tasks, strict=True):
                current[wnid] = read_result(Path(task.output().path))
                history[wnid].append(current[wnid])
        else:
            # Out of top-up rounds: whatever is still banned goes, as a shortfall.
            current = without_banned(current, plan_next_round(order, history, current, plan))
        rows = manifest_rows(order, current)
        # Evicted images go first: a crash before the manifest exists just repeats this step.
        remove_unlisted_images(data_path("images"), {row["file"] for row in rows})
        attempt_files = sorted(folder.glob("round*/*.attempts.csv"))
        write_fetch_report(
            current,
            attempt_files,
            data_path("attempts.csv"),
            data_path("fetch_summary.json"),
            self.config_key(),
        )
        write_manifest(rows, Path(self.output().path))
        short = {w: r["shortfall"] for w, r in current.items() if r["shortfall"]}
        progress(100, f"categories done {len(order)}/{len(order)}, kept {len(rows)}, shortfalls {len(short)}")
        if short:
            log.warning("categories short of %d images: %s", self.per_category, ", ".join(sorted(short)))
