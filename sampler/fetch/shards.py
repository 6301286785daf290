"""Category rounds run in batches (shards), without luigi: one task fetches many categories.

Luigi's scheduler costs O(tasks) per request for work, so one task per category makes a run
of all 21,841 synsets quadratic (/work/shared/GUIDE.md).  A shard is a batch of categories of
one configuration and round: its task runs them on a few threads at once, each exactly as a
category task would (``fetch_round``: same candidates, same files, same bytes), so the two
shapes share each other's work and a killed shard's finished categories stay done.

What a category costs here is its own: the URL index is opened once per shard (opening it
reads every synset's span), the placeholder hashes read once, and nothing reads a folder
that grows with the number of categories.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from sampler.fetch.category_round import (
    CategoryFiles,
    FinishedRound,
    kept_in_store,
    rate_limits_due,
    run_round,
)
from sampler.fetch.http_fetch import FetchSettings
from sampler.fetch.image_check import ImageVerdict
from sampler.fetch.replay import CategoryJob
from sampler.fetch.results import RoundResult, read_result
from sampler.index.read import UrlIndex
from sampler.progress import ProgressCallback, no_progress
from sampler.sampling import iter_candidates
from sampler.store import ImageStore


def batches(wnids: Sequence[str], size: int) -> list[list[str]]:
    """``wnids`` cut into consecutive batches of ``size`` (the last one shorter), in order."""
    if size < 1:
        raise ValueError(f"a shard holds at least one category, not {size}")
    return [list(wnids[start : start + size]) for start in range(0, len(wnids), size)]


def round_done(files: CategoryFiles, round_: int, store: ImageStore) -> bool:
    """Is this category round done: its result written, superseded by a later round, or with
    every kept image still whole in the store and no rate-limited URL due to be asked again?"""
    path = files.result(round_)
    if not path.exists():
        return False
    if files.result(round_ + 1).exists():
        return True  # a round superseded by a top-up round is done whatever became of its images
    result = read_result(path)
    if rate_limits_due(result, files.attempts(round_)):
        return False  # a URL answered 429 whose wait is over: asked again, in sample order
    return kept_in_store(result, store, written_at=path.stat().st_mtime)


@dataclasses.dataclass
class RoundSettings:
    """What every category round of one configuration needs besides its wnid and label."""

    folder: Path  # fetch/seed<S>-n<N>-k<K>
    seed: int
    sample_size: int
    per_category: int
    store: ImageStore
    legacy_images_dir: Path  # data_dir/images: kept images from before the store existed
    banned: frozenset[str]  # the configured placeholder hashes
    max_in_flight: int
    fetch: FetchSettings
    judge: Callable[[bytes], ImageVerdict]
    fleet_requests: int
    dead_host_memory: float
    rate_limit_wait: float
    per_host_max: int | None


def fetch_round(
    index: UrlIndex,
    wnid: str,
    label: str,
    round_: int,
    settings: RoundSettings,
    progress: ProgressCallback = no_progress,
) -> FinishedRound:
    """One category's round, as FetchCategory runs it: its files written, its result and status
    returned.

    The sample is the first sample_size of the synset's seeded order (SampleUrls writes the
    same rows); reading it from the index spares a parse of the whole sample.
    """
    order = list(iter_candidates(index, wnid, settings.seed))
    job = CategoryJob(
        wnid=wnid,
        label=label,
        needed=settings.per_category,
        sample=order[: settings.sample_size],
        continuation=partial(iter, order[settings.sample_size :]),
        store=settings.store,
        legacy_images_dir=settings.legacy_images_dir,
        banned=set(settings.banned),  # a top-up round adds its bans to this set: one per job
        earlier_attempts=[],
        max_in_flight=settings.max_in_flight,
    )
    return run_round(
        CategoryFiles(settings.folder, wnid),
        round_,
        job,
        settings=settings.fetch,
        judge=settings.judge,
        progress=progress,
        fleet_requests=settings.fleet_requests,
        dead_host_memory=settings.dead_host_memory,
        rate_limit_wait=settings.rate_limit_wait,
        per_host_max=settings.per_host_max,
    )


@dataclasses.dataclass
class ShardProgress:
    """A shard's state as its status message says it: which categories, how many done."""

    names: str  # "n01440764 tench … n01443537 goldfish"
    total: int
    done: int = 0
    kept: int = 0
    wanted: int = 0

    def message(self) -> str:
        text = f"{self.done}/{self.total} categories done ({self.names})"
        return text + (f", kept {self.kept}/{self.wanted} images" if self.wanted else "")

    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0


def describe(categories: Sequence[tuple[str, str]]) -> str:
    """A shard's categories in a few words: the first and the last."""
    if not categories:
        return "no categories"
    first = f"{categories[0][0]} {categories[0][1]}"
    if len(categories) == 1:
        return first
    return f"{first} … {categories[-1][0]} {categories[-1][1]}"


def run_shard(
    categories: Sequence[tuple[str, str]],
    run_one: Callable[[str, str], RoundResult | None],
    *,
    threads: int,
    progress: ProgressCallback = no_progress,
) -> dict[str, RoundResult]:
    """Run ``run_one(wnid, label)`` for each category on ``threads`` threads; return the results.

    ``run_one`` returns None for a category found done already (its result is not re-read
    here).  The first failure is raised once every category started has finished; the ones
    that finished stay done (their files are written), so a rerun does only the rest.
    """
    state = ShardProgress(describe(categories), len(categories))
    lock = threading.Lock()
    results: dict[str, RoundResult] = {}
    progress(0, state.message())

    stop = threading.Event()  # a category failed: start no more (the task fails)

    def one(category: tuple[str, str]) -> None:
        if stop.is_set():
            return
        try:
            result = run_one(*category)
        except BaseException as error:
            stop.set()
            # Which of the shard's categories: the traceback alone may not say (a decode error
            # in one of its files), and the task's name lists them all.
            error.add_note(f"in category {category[0]} ({category[1]}) of this shard")
            raise
        with lock:
            state.done += 1
            if result is not None:
                results[category[0]] = result
                state.kept += len(result.kept)
                state.wanted += result.needed
            percent, message = state.percent(), state.message()
        progress(min(percent, 99.9), message)  # 100 % once the shard is through

    failures: list[BaseException] = []
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="shard") as pool:
        for future in [pool.submit(one, category) for category in categories]:
            error = future.exception()
            if error is not None:
                failures.append(error)
    if failures:
        raise failures[0]
    progress(100, state.message())
    return results
