"""Stage 5: per_category working JPEGs for every category, and the manifest.

FetchFives names one FetchCategory per category in ``requires()`` (the list
is configuration, known before any stage runs), so every worker process and
machine pointed at one luigid schedules all of them and shares the work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import luigi
import luigi.configuration

from sampler import CONFIG_DIR
from sampler.fetch.finish import closing_lines, write_fetch_outputs
from sampler.fetch.gather import missing_images, read_manifest, relabelled
from sampler.fetch.rate_limits import parse_utc
from sampler.fetch.rounds import RoundPlanner
from sampler.publish import publish_run
from sampler.report.run_files import read_json_object
from sampler.store import ImageStore, is_intact
from tasks.configuration import flag
from tasks.errors import ConfigError, scheduler_resource, setting
from tasks.extract_urls import ExtractUrls
from tasks.locks import output_lock
from tasks.parameters import (
    CategoryListParameter,
    ListParameter,
    SectionIntParameter,
    category_digest,
    category_stem,
    keyed_name,
    knob,
)
from tasks.parse_synsets import ParseSynsets
from tasks.progress import task_progress
from tasks.sample_urls import SampleUrls
from tasks.targets import AtomicTarget
from tasks.task import SamplerTask

if TYPE_CHECKING:
    from sampler.fetch.category_round import CategoryFiles
    from sampler.fetch.shards import RoundSettings

# The fetch stack (requests, Pillow, numpy, pyarrow) is imported where it is used: a command
# that runs no category does not pay for it, and pipeline/__init__.py imports it once in the
# scheduling process before category tasks are forked.

log = logging.getLogger(__name__)


class CategoryOutputs(TypedDict):
    """FetchCategory's output: one round's result and attempts (the kept images go to store/)."""

    result: AtomicTarget
    attempts: AtomicTarget


class FivesOutputs(TypedDict):
    """FetchFives' output; fetch_summary.json, written last, marks it done."""

    manifest: AtomicTarget
    attempts: AtomicTarget
    summary: AtomicTarget


class FetchConfig(SamplerTask):
    """The settings that change which images are kept: FetchFives' and every FetchCategory's.

    ``seed`` and ``sample_size`` are SampleUrls' (``--SampleUrls-seed``,
    ``--SampleUrls-per-category``), ``per_category`` is FetchFives'; each task passes them
    all down, so a task's id changes whenever its output would.
    """

    # The list's path and digest (--ParseSynsets-categories); FetchFives.categories() gives its rows.
    category_list = CategoryListParameter()
    seed = SectionIntParameter(section="SampleUrls", name="seed", fallback=0, description="Random seed")
    sample_size = SectionIntParameter(
        section="SampleUrls", name="per_category", fallback=100, description="URLs sampled per category"
    )
    per_category = SectionIntParameter(
        section="FetchFives", name="per_category", fallback=5, description="Working JPEGs wanted per category"
    )

    def validate(self) -> None:
        self.require_at_least("per_category", 1, "FetchFives")
        if self.sample_size < self.per_category:
            raise ConfigError(
                f"{flag('SampleUrls', 'per_category')} ({self.sample_size}) must be at least "
                f"{flag('FetchFives', 'per_category')} ({self.per_category})"
            )

    def fetch_settings(self) -> dict:
        return {
            "data_dir": self.data_dir,
            "category_list": self.category_list,
            "seed": self.seed,
            "sample_size": self.sample_size,
            "per_category": self.per_category,
        }

    def sample_task(self) -> SampleUrls:
        return SampleUrls(
            data_dir=self.data_dir,
            categories=self.category_list,
            seed=self.seed,
            per_category=self.sample_size,
        )

    def folder(self) -> Path:
        return self.path("fetch", f"seed{self.seed}-n{self.sample_size}-k{self.per_category}")

    def image_store(self) -> ImageStore:
        """Every good image body ever fetched into data_dir; images/ is a view of it."""
        return ImageStore(self.path("store"))

    def run_key(self) -> dict:
        """The significant settings that make this configuration's sample (its folder's digest)."""
        return {
            "categories": category_digest(self.category_list),
            "seed": self.seed,
            "sample_size": self.sample_size,
            "per_category": self.per_category,
        }

    def described(self) -> dict:
        """What the run folder's files say they were made from (fetch_summary.json's config)."""
        return {
            "run": self.run_folder().name,
            "fetch": self.folder().name,
            "categories": [[c.wnid, c.label] for c in FetchFives(**self.fetch_settings()).categories()],
        }

    def run_folder(self) -> Path:
        """``runs/<set>-seed<S>-n<N>-k<K>-<digest>/``: this configuration's manifest, images
        and reports, which no other configuration writes (data_dir's are copies of one)."""
        readable = f"{category_stem(self.category_list)}-{self.folder().name}"
        return self.path("runs", keyed_name(readable, self.run_key()))

    def run_path(self, *parts: str) -> Path:
        return self.run_folder().joinpath(*parts)

    def publish(self) -> None:
        """data_dir's manifest.csv, images/ and reports become this configuration's (copies)."""
        publish_run(self.image_store(), self.run_folder(), Path(self.data_dir))


class CategoryRoundTask(FetchConfig):
    """What a task that fetches category rounds shares: FetchCategory (one category) and
    FetchShard (a batch of them).  Its knobs are ``[FetchCategory]``'s for both: FetchFives
    hands a shard the values FetchCategory would read."""

    # Tuning knobs.  Those named like a field of sampler.fetch.http_fetch.FetchSettings feed it.
    max_connections = knob(
        luigi.IntParameter, 48, "Most candidates a task fetches ahead (fewer while its hit rate is high)"
    )
    per_host = knob(luigi.IntParameter, 4, "Requests in flight per host, fleet-wide, to begin with")
    per_host_max = knob(
        luigi.IntParameter,
        16,
        "Most requests in flight per host, fleet-wide: a host that answers promptly gets more, "
        "up to this; a 429/503/timeout halves its share",
    )
    fleet_requests = knob(
        luigi.IntParameter, 64, "Requests in flight at once across every process sharing data_dir"
    )
    dead_host_memory = knob(
        luigi.FloatParameter,
        3600.0,
        "Seconds a host found dead is not asked again, by any process sharing data_dir",
    )
    connect_timeout = knob(luigi.FloatParameter, 5.0)
    read_timeout = knob(luigi.FloatParameter, 10.0)
    deadline = knob(luigi.FloatParameter, 30.0, "Whole-download seconds per URL")
    max_bytes = knob(luigi.IntParameter, 20_000_000)
    max_redirects = knob(luigi.IntParameter, 5)
    retries = knob(luigi.IntParameter, 2, "For 429/503/408/504/reset")
    backoff = knob(luigi.FloatParameter, 0.5, "First retry's wait, s")
    retry_after_max = knob(luigi.FloatParameter, 10.0, "A longer Retry-After gives up (for this run)")
    rate_limit_wait = knob(
        luigi.FloatParameter,
        900.0,
        "Seconds before a later run asks again a URL answered 429 without Retry-After",
    )
    min_side = knob(luigi.IntParameter, 32, "Smaller images are tracking pixels")
    max_pixels = knob(luigi.IntParameter, 50_000_000, "Decompression-bomb guard")
    placeholder_hashes = knob(luigi.Parameter, str(CONFIG_DIR / "placeholders.csv"))
    allow_private_addresses = knob(
        luigi.BoolParameter,
        False,
        "Fetch loopback/private/link-local hosts too (tests, a LAN mirror); never by default",
    )

    # Categories in flight across the fleet: [resources] fetch_slots.  Politeness is not this
    # but a cap on requests in flight (fleet_requests, per_host: sampler.fetch.request_slots).
    resources = {"fetch_slots": 1}

    def requires(self) -> dict[str, SamplerTask]:
        # The checked category list first: an unknown wnid fails before any download.
        return {
            "synsets": ParseSynsets(data_dir=self.data_dir, categories=self.category_list),
            "sample": self.sample_task(),
            "urls": ExtractUrls(data_dir=self.data_dir),
        }

    def publish(self) -> None:
        """Nothing: categories are not a sample (FetchFives publishes the configuration's)."""

    def category_files(self, wnid: str) -> CategoryFiles:
        from sampler.fetch.category_round import CategoryFiles

        return CategoryFiles(self.folder(), wnid)

    def round_settings(self) -> RoundSettings:
        """Every category round's settings, from this task's parameters and knobs."""
        from sampler.fetch.http_fetch import FetchSettings
        from sampler.fetch.image_check import judge_image, load_placeholder_hashes
        from sampler.fetch.shards import RoundSettings

        return RoundSettings(
            folder=self.folder(),
            seed=self.seed,
            sample_size=self.sample_size,
            per_category=self.per_category,
            store=self.image_store(),
            legacy_images_dir=self.path("images"),  # kept images from before the store existed
            banned=frozenset(load_placeholder_hashes(Path(self.placeholder_hashes))),
            max_in_flight=self.max_connections,
            fetch=self.settings_of(FetchSettings, allow_private=self.allow_private_addresses),
            judge=partial(judge_image, min_side=self.min_side, max_pixels=self.max_pixels),
            fleet_requests=self.fleet_requests,
            dead_host_memory=self.dead_host_memory,
            rate_limit_wait=self.rate_limit_wait,
            per_host_max=self.per_host_max,
        )


def category_outputs(files: CategoryFiles, round_: int) -> CategoryOutputs:
    # (The kept images go to the shared store/, named by sha256 in the result.)
    return {"result": AtomicTarget(files.result(round_)), "attempts": AtomicTarget(files.attempts(round_))}


def outputs_lock_key(outputs: object) -> str:
    """SamplerTask.lock_key of a task with these outputs: a shard locks each category it
    fetches under FetchCategory's key, so the two shapes never fetch one category at once."""
    return "\n".join(sorted(target.path for target in luigi.task.flatten(outputs)))


class FetchCategory(CategoryRoundTask):
    """One category's working JPEGs (``fetch/.../<wnid>.json``; the images themselves in ``store/``)."""

    wnid = luigi.Parameter()
    label = luigi.Parameter()
    round = luigi.IntParameter(
        default=0, description="0, or a top-up round after cross-category placeholders"
    )

    def files(self) -> CategoryFiles:
        from sampler.fetch.category_round import CategoryFiles

        return CategoryFiles(self.folder(), self.wnid)

    def output(self) -> CategoryOutputs:
        return category_outputs(self.files(), self.round)

    def complete(self) -> bool:
        # The store may have lost a kept image since (pruned, deleted by hand): then the
        # category runs again and gets it back from images/ or, failing that, the web.
        from sampler.fetch.shards import round_done

        return round_done(self.files(), self.round, self.image_store())

    def run(self) -> None:
        from sampler.fetch.shards import fetch_round
        from sampler.index.read import UrlIndex

        progress = task_progress(self)
        index = UrlIndex.open(self.input()["urls"].fs_path)
        finished = fetch_round(index, self.wnid, self.label, self.round, self.round_settings(), progress)
        # task_progress throttles reports under 100 %: always show the final count.
        progress(100, finished.message)
        if finished.worth_a_warning:
            log.warning("%s (%s): %s", self.wnid, self.label, finished.message)


class RepairCategory(FetchCategory):
    """A FetchCategory round again, for a category luigi saw done earlier in this run whose
    kept body has been lost or found damaged (and quarantined) since: it replays the round
    and fetches that URL again, or keeps the next candidate.

    A task of its own (the same parameters, another task id) because luigi's scheduler does
    not run a task again within ``stable_done_cooldown_secs`` of seeing it done, whatever its
    ``complete()`` says by then: yielding the FetchCategory itself would never run it.
    """

    @classmethod
    def of(cls, task: FetchCategory) -> RepairCategory:
        # Every parameter given, knobs included: they would otherwise be read from a
        # [RepairCategory] section that no luigi.cfg has.
        return cls(**{name: getattr(task, name) for name, _ in task.get_params()})


class FetchShard(CategoryRoundTask):
    """A batch of categories' rounds in one task: each category's files exactly as its
    FetchCategory would write them (same paths, same bytes), several categories at once.

    FetchFives runs a large category set this way (``[FetchFives] shard_from``): luigi's
    scheduler costs O(tasks) per request for work, so a task per category makes a run of
    all 21,841 synsets quadratic.  The batch (``wnids``) is the task's identity, not its
    meaning: each category's outputs depend on the configuration alone.
    """

    wnids = ListParameter(description="The categories of this shard, in list order")
    round = luigi.IntParameter(
        default=0, description="0, or a top-up round after cross-category placeholders"
    )
    threads = knob(luigi.IntParameter, 8, "Categories of the shard fetched at once")

    @property
    def resources(self) -> dict[str, int]:  # type: ignore[override]
        return {"fetch_slots": self.threads}  # [resources] fetch_slots counts categories in flight

    def validate(self) -> None:
        super().validate()
        self.require_at_least("threads", 1)

    def labels(self) -> dict[str, str]:
        synsets = ParseSynsets(data_dir=self.data_dir, categories=self.category_list)
        known = {c.wnid: c.label for c in synsets.category_list()}
        unknown = [wnid for wnid in self.wnids if wnid not in known]
        if unknown:
            raise ConfigError(f"{', '.join(unknown[:5])}: not in {flag('ParseSynsets', 'categories')}")
        return {wnid: known[wnid] for wnid in self.wnids}

    def output(self) -> dict[str, CategoryOutputs]:
        return {wnid: category_outputs(self.category_files(wnid), self.round) for wnid in self.wnids}

    def lock_key(self) -> str:
        # Not a category's key, which run() takes for each category (a shard of one would
        # otherwise wait for itself).
        return "FetchShard\n" + super().lock_key()

    def complete(self) -> bool:
        from sampler.fetch.shards import round_done

        store = self.image_store()
        return all(round_done(self.category_files(wnid), self.round, store) for wnid in self.wnids)

    def run(self) -> None:
        from sampler.fetch.results import RoundResult
        from sampler.fetch.shards import fetch_round, round_done, run_shard
        from sampler.index.read import UrlIndex

        index = UrlIndex.open(self.input()["urls"].fs_path)  # once for the shard
        settings = self.round_settings()
        store = self.image_store()

        def one(wnid: str, label: str) -> RoundResult | None:
            files = self.category_files(wnid)
            # FetchCategory's own lock: a category task of the other shape never runs beside it.
            with output_lock(self.data_dir, outputs_lock_key(category_outputs(files, self.round))):
                if round_done(files, self.round, store):
                    return None  # done before (a killed shard's, or the other shape's)
                finished = fetch_round(index, wnid, label, self.round, settings)
            if finished.worth_a_warning:
                log.warning("%s (%s): %s", wnid, label, finished.message)
            return finished.result

        run_shard(list(self.labels().items()), one, threads=self.threads, progress=task_progress(self))


class RepairShard(FetchShard):
    """FetchShard's rounds again, for categories whose kept body was lost or damaged since
    luigi saw them done (RepairCategory's reason, for a shard)."""


SHARD_THREADS = 8  # [FetchFives] shard_threads' default


def configured_fetch_slots() -> int | None:
    """This process's [resources] fetch_slots (its scheduler's with --local-scheduler), None
    where unset.  Under 1, no task that takes a slot could ever start: the run would hang."""
    text = luigi.configuration.get_config().get("resources", "fetch_slots", None)
    if text is None:
        return None
    where = setting("resources", "fetch_slots")
    try:
        slots = int(text)
    except ValueError:
        raise ConfigError(f"{where}: not a whole number: {text!r}") from None
    if slots < 1:
        raise ConfigError(f"{where} must be at least 1, not {slots}: no category task could ever start")
    return slots


class FetchFives(FetchConfig):
    """``runs/<key>/``: ``manifest.csv``, ``attempts.csv``, ``fetch_summary.json`` and ``images/``
    (a view of the store): per_category working JPEGs for each category.  The end of a run
    publishes them at data_dir's top level (``publish()``)."""

    max_rounds = knob(luigi.IntParameter, 5, "Top-up rounds after placeholders")
    shard_from = knob(
        luigi.IntParameter,
        1001,
        "From this many categories on, fetch them in shard tasks (FetchShard) of shard_size "
        "categories instead of a FetchCategory each: luigi's scheduling grows with the square "
        "of the task count",
    )
    shard_size = knob(luigi.IntParameter, 50, "Categories per shard task")
    shard_threads = knob(luigi.IntParameter, SHARD_THREADS, "Categories a shard task fetches at once")

    def validate(self) -> None:
        super().validate()
        for name in ("shard_from", "shard_size", "shard_threads"):
            self.require_at_least(name, 1)
        slots = configured_fetch_slots()
        # A shard asking for more slots than there are would wait for ever.  Asked for by name,
        # that is a mistake; the default (8) under a small fetch_slots just runs fewer at once
        # (granted_threads), so a run that never shards is not refused for it.
        if slots and self.shard_threads > slots and self.shard_threads != SHARD_THREADS:
            raise ConfigError(
                f"{flag('FetchFives', 'shard_threads')} ({self.shard_threads}) must be at most "
                f"[resources] fetch_slots ({slots}): a shard takes a slot per category it runs"
            )

    def categories(self) -> list:
        """The categories, in list order (read once: ParseSynsets' instance is cached)."""
        return ParseSynsets(data_dir=self.data_dir, categories=self.category_list).category_list()

    def sharded(self) -> bool:
        return len(self.categories()) >= self.shard_from

    def category_task(self, wnid: str, label: str, round_: int = 0) -> FetchCategory:
        return FetchCategory(wnid=wnid, label=label, round=round_, **self.fetch_settings())

    def category_knobs(self) -> dict:
        """FetchCategory's knobs as it would read them ([FetchCategory], flags): a shard's too."""
        if not hasattr(self, "_knobs"):
            self._knobs = {
                name: param.task_value(FetchCategory.get_task_family(), name)
                for name, param in FetchCategory.get_params()
                if not param.significant
            }
        return self._knobs

    def granted_threads(self) -> int:
        """shard_threads, or fewer where the luigid in use grants fewer fetch_slots: a shard
        asking for more than luigid has would stay pending for ever (a plain ``luigid``,
        started without the package's [resources], grants 1)."""
        luigid, configured = scheduler_resource("fetch_slots"), configured_fetch_slots()
        limits = [n for n in (luigid, configured) if n is not None]
        granted = min(limits) if limits else None
        if granted is None or granted >= self.shard_threads:
            return self.shard_threads
        if not getattr(FetchFives, "_told_granted", False):
            FetchFives._told_granted = True  # type: ignore[attr-defined]
            where, advice = (
                ("luigid grants %d [resources] fetch_slots", "start luigid with the package's [resources]")
                if luigid == granted
                else ("[resources] fetch_slots is %d", "raise it")
            )
            log.warning(
                where + ", fewer than the %d of %s: each shard fetches %d categories at once (%s for more)",
                granted,
                self.shard_threads,
                flag("FetchFives", "shard_threads"),
                max(1, granted),
                advice,
            )
        return max(1, granted)

    def round_tasks(self, round_: int, wnids: list[str], repair: bool = False) -> list[CategoryRoundTask]:
        """The tasks that run round ``round_`` of ``wnids`` (list order): shards of a large
        set, a FetchCategory (RepairCategory) each for a small one."""
        if self.sharded():
            from sampler.fetch.shards import batches

            kind = RepairShard if repair else FetchShard
            return [
                kind(
                    wnids=batch,
                    round=round_,
                    threads=self.granted_threads(),
                    **self.category_knobs(),
                    **self.fetch_settings(),
                )
                for batch in batches(wnids, self.shard_size)
            ]
        labels = {c.wnid: c.label for c in self.categories()}
        tasks = [self.category_task(wnid, labels[wnid], round_) for wnid in wnids]
        return [RepairCategory.of(task) for task in tasks] if repair else list(tasks)

    def requires(self) -> dict:  # {"synsets": ParseSynsets, "categories": [FetchCategory or FetchShard...]}
        # Every category up front, so that every worker process schedules all of them.
        # Built once per instance: luigi asks again and again.
        if not hasattr(self, "_dependency_cache"):
            self._dependency_cache = {
                "synsets": ParseSynsets(data_dir=self.data_dir, categories=self.category_list),
                "categories": self.round_tasks(0, [c.wnid for c in self.categories()]),
            }
        return self._dependency_cache

    def complete(self) -> bool:
        # The outputs' existence, plus what a store shared by every configuration may lose
        # (not what another configuration may replace: nothing, its outputs are keyed).
        outputs = self.output()
        if not all(target.exists() for target in luigi.task.flatten(outputs)):
            return False
        summary = read_json_object(outputs["summary"])  # damaged: {}, and redone
        if not summary or any(
            parse_utc(limit["ask_again_after"]) <= time.time() for limit in summary.get("rate_limited", [])
        ):
            return False  # URLs answered 429 may be asked again: their categories run again
        # An image deleted from the run's images/ (or from the store) since: the run repairs both.
        manifest = outputs["manifest"]
        rows = read_manifest(manifest)
        store = self.image_store()
        written_at = manifest.fs_path.stat().st_mtime
        changed = missing_images(rows, self.run_path("images"), written_at=written_at)
        # Cheap checks only (a stat each; a hash only for what changed since the manifest):
        # a body damaged with its size and mtime kept is caught when it is next read.
        return not changed and all(
            is_intact(store.path(r["sha256"]), int(r["bytes"] or -1), r["sha256"], written_at) for r in rows
        )

    def output(self) -> FivesOutputs:
        return {
            "manifest": AtomicTarget(self.run_path("manifest.csv")),
            "attempts": AtomicTarget(self.run_path("attempts.csv")),
            "summary": AtomicTarget(self.run_path("fetch_summary.json")),
        }

    def run(self) -> Iterator[list[CategoryRoundTask]]:  # top-up rounds are dynamic dependencies
        from sampler.fetch.category_round import CategoryFiles, damaged_kept, read_result
        from sampler.fetch.shards import round_done

        progress = task_progress(self)
        categories = self.categories()
        order = [c.wnid for c in categories]
        labels = {c.wnid: c.label for c in categories}
        files = {wnid: CategoryFiles(self.folder(), wnid) for wnid in order}
        first = {wnid: read_result(files[wnid].result(0)) for wnid in order}
        planner = RoundPlanner(order, first, self.max_rounds, self.folder())
        latest = dict.fromkeys(order, 0)  # each category's last round
        ran = [(wnid, 0) for wnid in order]
        while (step := planner.next_round()) is not None:  # top-up rounds, as the planner asks
            round_, rerun = step
            progress(50, f"round {round_}: topping up {len(rerun)} categories after placeholders")
            yield self.round_tasks(round_, rerun)
            for wnid in rerun:
                planner.took(wnid, read_result(files[wnid].result(round_)))
                latest[wnid] = round_
                ran.append((wnid, round_))
        # A kept image the store lost since (pruned, deleted by hand): such categories are
        # incomplete again, and replay their attempts to restore it (from images/ if it is there).
        # Every kept body is read and checked against its sha256 before it is published (a
        # flipped byte keeps size and mtime): a damaged one is quarantined and its category
        # fetched again below, so no corrupt byte reaches images/ or the manifest.
        for wnid, image in damaged_kept(planner.current.values(), self.image_store()):
            log.warning("%s: the stored body of %s was damaged: fetching it again", wnid, image.url)
        store = self.image_store()
        lost = [wnid for wnid in order if not round_done(files[wnid], latest[wnid], store)]
        if lost:
            by_round: dict[int, list[str]] = {}
            for wnid in lost:
                by_round.setdefault(latest[wnid], []).append(wnid)
            yield [
                task
                for r, wnids in sorted(by_round.items())
                for task in self.round_tasks(r, wnids, repair=True)
            ]
            planner.repaired({wnid: read_result(files[wnid].result(latest[wnid])) for wnid in lost})
        current = relabelled(planner.current, labels)  # results made under a list's earlier labels
        outputs = self.output()
        # This configuration's categories only: the folder may hold other lists' categories.
        attempts = {files[wnid].attempts(round_) for wnid, round_ in ran}
        rows, summary = write_fetch_outputs(
            order,
            current,
            self.image_store(),
            self.run_path("images"),
            sorted(path for path in attempts if path.exists()),
            manifest=outputs["manifest"].fs_path,
            attempts=outputs["attempts"].fs_path,
            summary=outputs["summary"].fs_path,
            config=self.described(),
        )
        message, rate_limited = closing_lines(len(order), len(rows), summary)
        if rate_limited:
            log.warning("%s", rate_limited)
            print(f"FetchFives: {rate_limited}", flush=True)  # the closing lines: the user must know
        progress(100, message)
        if summary["shortfalls"]:
            short = ", ".join(sorted(summary["shortfalls"]))
            log.warning("categories short of %d images: %s", self.per_category, short)
