"""One category's round, as FetchCategory runs it: its files, and its status when it ends.

A round replays (sampler.fetch.replay) what every earlier round and a killed attempt at
this one recorded, fetches the rest through the fleet's shared limits (request slots, dead
hosts, rate limits, hit rates), then writes its attempts and, last, its result
(``CategoryFiles``).  Also here: what FetchCategory and FetchFives ask of a round's
files (done? its images still in the store?) and what data_dir's rounds still reference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from sampler.atomic import atomic_write_bytes
from sampler.fetch import rate_limits
from sampler.fetch.attempts import RequestCost, read_attempts, request_cost, requests_of, write_attempts
from sampler.fetch.dead_hosts import MAX_AGE, DeadHosts
from sampler.fetch.gather import read_manifest, read_round_plan
from sampler.fetch.hit_rates import RunHitRates
from sampler.fetch.http_fetch import Fetcher, FetchSettings
from sampler.fetch.image_check import ImageVerdict
from sampler.fetch.replay import CategoryJob, run_category_job
from sampler.fetch.request_slots import RequestSlots
from sampler.fetch.results import KeptImage, RoundResult, read_result
from sampler.fetch.sample_order import HitRate, RetrySettings
from sampler.outcomes import GOOD_BODY
from sampler.progress import ProgressCallback, no_progress
from sampler.store import ImageStore, is_intact


@dataclasses.dataclass(frozen=True)
class CategoryFiles:
    """Where one category's rounds keep their results, attempt logs and journals."""

    folder: Path  # fetch/seed<S>-n<N>-k<K>
    wnid: str

    def result(self, round_: int) -> Path:
        return self.folder / f"round{round_}" / f"{self.wnid}.json"

    def attempts(self, round_: int) -> Path:
        return self.result(round_).with_suffix(".attempts.csv")

    def journal(self, round_: int) -> Path:
        return self.result(round_).with_suffix(".journal.csv")

    def dead_hosts(self) -> Path:
        """Hosts found dead by any category of this configuration (sampler.fetch.dead_hosts)."""
        return self.folder / "dead-hosts"

    def hit_rates(self) -> Path:
        """Every category round's fetch outcome counts (sampler.fetch.hit_rates)."""
        return self.folder / "hit-rates"

    def request_slots(self) -> Path:
        """The fleet's request slots (sampler.fetch.request_slots): one set per data_dir
        (``data_dir/request-slots``), shared by every process and every configuration
        fetching into it -- per_host caps what a host gets from this data_dir, not per seed."""
        return self.folder.parent.parent / "request-slots"  # folder is data_dir/fetch/<configuration>


class FinishedRound(NamedTuple):
    result: RoundResult
    message: str  # the status the finished round shows in the scheduler UI
    worth_a_warning: bool  # a shortfall, or a host that rate limited it


def run_round(
    files: CategoryFiles,
    round_: int,
    job: CategoryJob,
    *,
    settings: FetchSettings,
    judge: Callable[[bytes], ImageVerdict],
    progress: ProgressCallback = no_progress,
    fleet_requests: int = 64,
    dead_host_memory: float = MAX_AGE,
    rate_limit_wait: float = rate_limits.DEFAULT_WAIT,
    per_host_max: int | None = None,
) -> FinishedRound:
    """Run one round of one category and write its attempts and result; return the result
    and the status it ends with.

    Round 0 starts from the configured placeholder hashes; a top-up round also bans
    what FetchFives' plan for that round names.  Every earlier round's attempts, and
    this round's journal (left by a killed attempt), are replayed instead of fetched.
    """
    if round_:
        plan = read_round_plan(files.folder, round_)
        job.banned |= plan.banned_for(files.wnid)
    for earlier in range(round_ + 1):
        job.earlier_attempts += read_attempts(files.attempts(earlier))
        job.earlier_attempts += read_attempts(files.journal(earlier))
    # What an interrupted run of this very round asked the web: replayed now, still its cost.
    asked_before = {
        row["url"]: requests_of(row)
        for row in read_attempts(files.attempts(round_)) + read_attempts(files.journal(round_))
    }
    # Retries are parked by fetch_category (settings.retries of them), never slept in a fetch.
    job.retry = RetrySettings(settings.retries, settings.backoff, settings.retry_after_max)
    with (
        DeadHosts(files.dead_hosts(), max_age=dead_host_memory) as dead,
        RunHitRates(files.hit_rates(), f"{files.wnid}-round{round_}") as run_hits,
    ):
        # The request slots cap each host (adaptively, up to per_host_max, never above the
        # fleet's total): the Fetcher's own cap is that total, so it never binds first.
        with Fetcher(dataclasses.replace(settings, retries=0, per_host=fleet_requests)) as fetcher:
            slots = RequestSlots(files.request_slots(), fleet_requests, settings.per_host, per_host_max)
            in_slot = slots.guard(fetcher.fetch, recheck=dead.known_dead)
            network = rate_limits.noting_rate_limits(dead.guard(in_slot), rate_limit_wait)
            result, attempts = run_category_job(
                job,
                fetch=network,
                judge=judge,
                journal=files.journal(round_),
                progress=progress,
                hit_rate=HitRate(run_hits),
            )
    result = dataclasses.replace(result, round=round_)
    for row in attempts:
        if not row["requests"] and asked_before.get(str(row["url"])):
            row["requests"] = asked_before[str(row["url"])]
    message, worth_a_warning = round_status(result, attempts)
    # Neither write lists the round's folder for a crashed writer's temporaries first: it holds
    # two files per category, so that cost O(categories) per category, 45 ms at 21,841.  The
    # run's sweep at its first task (sampler.atomic.sweep_dead_temporaries) removes them.
    write_attempts(attempts, files.attempts(round_), {"round": round_}, clean_stale=False)
    # The journal goes before the result appears: once the result exists this round never
    # runs again, so a journal left by a kill in between would stay for ever.  (Killed here,
    # the rerun replays the attempts file just written.)
    files.journal(round_).unlink(missing_ok=True)
    atomic_write_bytes(files.result(round_), result.to_text().encode("utf-8"), clean_stale=False)
    return FinishedRound(result, message, worth_a_warning)


def final_message(result: RoundResult, cost: RequestCost | None = None) -> str:
    """The status a finished category shows in the scheduler UI; ``cost``: its round's requests."""
    short = result.shortfall
    message = f"kept {len(result.kept)}/{result.needed} after {result.tried} URLs"
    if cost is not None:
        message += f", {cost.text(len(result.kept))}"
    return message + (f", {short} short: no URLs left to try" if short else "")


def round_status(result: RoundResult, attempts: Iterable[Mapping[str, object]]) -> tuple[str, bool]:
    """A finished round's status message (its requests, and hosts that rate limited it), and
    whether it is worth a warning (a shortfall, or a 429).  ``attempts``: its attempt rows,
    as written or as read back."""
    rows = [{name: str(value) for name, value in row.items()} for row in attempts]
    limits = rate_limits.host_limits(rows, [judged.url for judged in result.judged])
    message = final_message(result, request_cost(rows))
    if limits:
        message += f"; {rate_limits.describe(limits)}"
    return message, bool(result.shortfall or limits)


def rate_limits_due(result: RoundResult, attempts: Path, now: float | None = None) -> bool:
    """Whether a URL the result decided on was rate limited (429) and may be asked again now:
    then the round is run again (sampler.fetch.rate_limits).  Reads ``attempts`` only when
    the result holds a 429."""
    limited = {j.url for j in result.judged if j.outcome == rate_limits.RATE_LIMITED}
    if not limited:
        return False
    return any(rate_limits.is_due(row, now) for row in read_attempts(attempts) if row["url"] in limited)


def kept_in_store(result: RoundResult, store: ImageStore, written_at: float | None = None) -> bool:
    """Is every image a category result kept still in the store, whole?  ``written_at``: the
    result's mtime (sampler.store.is_intact)."""
    return all(
        is_intact(store.path(image.sha256), image.bytes, image.sha256, written_at) for image in result.kept
    )


def damaged_kept(results: Iterable[RoundResult], store: ImageStore) -> list[tuple[str, KeptImage]]:
    """(wnid, image) of every kept image whose store entry is missing or no longer hashes to
    its name -- bit rot or a restore keeps size and mtime, so only reading it tells.  A
    damaged entry is quarantined (``ImageStore.get``); its category is then incomplete and
    fetches that URL again, or takes the next candidate."""
    damaged = []
    for result in results:
        for image in result.kept:
            if not store.verify(image.sha256):
                damaged.append((result.wnid, image))
    return damaged


def referenced_hashes(fetch_root: Path, manifest: Path | None = None) -> set[str]:
    """The store entries some configuration in data_dir still needs.

    Every image kept by the last round of each category of any configuration under ``fetch_root``, every
    good body a round still in progress has journaled (a killed run's rerun replays it),
    and every image the manifest lists.
    """
    referenced: set[str] = set()
    latest: dict[tuple[Path, str], tuple[int, Path]] = {}  # (configuration, wnid) -> its last round
    for path in fetch_root.glob("*/round*/*.json"):
        round_ = int(path.parent.name[len("round") :]) if path.parent.name[5:].isdigit() else -1
        key = (path.parent.parent, path.stem)
        if round_ > latest.get(key, (-1, path))[0]:
            latest[key] = (round_, path)
    for _round, path in latest.values():
        try:
            result = read_result(path)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a result of ours: it references nothing
        # A superseded round's images are either in the later round or were evicted from it.
        referenced |= {image.sha256 for image in result.kept}
    for path in fetch_root.glob("*/round*/*.journal.csv"):
        referenced |= {row["sha256"] for row in read_attempts(path) if row["outcome"] in GOOD_BODY}
    if manifest is not None and manifest.is_file():
        referenced |= {row["sha256"] for row in read_manifest(manifest) if row.get("sha256")}
    return {digest for digest in referenced if digest}
