"""One category's download, end to end, as FetchCategory runs it.

``fetch_category`` decides which candidates are kept; this module supplies the
candidates (the sample, then the rest of the synset in the same seeded order),
replays what an earlier attempt at the category already learned so that no URL
is fetched twice, writes the kept JPEGs atomically and records every attempt.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from sampler.atomic import (
    TMP_MARK,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    remove_dead_temporaries,
)
from sampler.category_fetch import Attempt, CategoryResult, RetrySettings, fetch_category
from sampler.dead_hosts import DeadHosts
from sampler.gather import RoundPlan
from sampler.http_fetch import Fetcher, FetchOutcome, FetchSettings
from sampler.image_check import ImageVerdict
from sampler.naming import image_filename
from sampler.progress import ProgressCallback, no_progress
from sampler.request_slots import RequestSlots

ATTEMPT_FIELDS = [
    "image_id",
    "url",
    "final_url",
    "status",
    "outcome",
    "bytes",
    "ms",
    "md5",
    "sha256",
    "error",
    "judged",
]


def read_attempts(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8", newline="") as src:
        # A journal killed mid-line leaves a torn last row: keep only complete ones.
        return [row for row in csv.DictReader(src) if row.get("judged") in ("True", "False")]


def write_attempts(rows: Iterable[Mapping[str, object]], path: Path, extra: Mapping[str, object]) -> None:
    fields = list(extra) + ATTEMPT_FIELDS
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fields, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**extra, **row})


def attempt_row(attempt: Attempt) -> dict[str, object]:
    return {field: getattr(attempt, field) for field in ATTEMPT_FIELDS}


def replaying_fetch(
    fetch: Callable[[str], FetchOutcome],
    earlier: Iterable[Mapping[str, str]],
    images_dir: Path,
    filenames: Mapping[str, str],
) -> Callable[[str], FetchOutcome]:
    """``fetch`` that answers from earlier attempts instead of asking the web again.

    A failed URL keeps its earlier outcome; a kept image is read back from its
    file.  Anything else (e.g. a good image fetched speculatively but never
    saved) is fetched again.
    """
    known: dict[str, Mapping[str, str]] = {}
    for row in earlier:
        known.setdefault(row["url"], row)

    def fetch_or_replay(url: str) -> FetchOutcome:
        row = known.get(url)
        if row is not None:
            # A redirect to a placeholder image (no body fetched) is as final as a 404.
            redirect_placeholder = row["outcome"] == "placeholder" and not int(row["bytes"] or 0)
            if row["outcome"] not in ("ok", "duplicate", "placeholder", "banned") or redirect_placeholder:
                return FetchOutcome(
                    url=url,
                    final_url=row["final_url"],
                    status=int(row["status"]) if row["status"] else None,
                    outcome=row["outcome"],
                    body=None,
                    bytes=int(row["bytes"] or 0),
                    ms=0,
                    error=row["error"],
                    redirects=0,
                    attempts=0,
                )
            name = filenames.get(url)
            if name and (images_dir / name).is_file():
                body = (images_dir / name).read_bytes()
                return FetchOutcome(
                    url=url,
                    final_url=row["final_url"],
                    status=200,
                    outcome="ok",
                    body=body,
                    bytes=len(body),
                    ms=0,
                    error="",
                    redirects=0,
                    attempts=0,
                )
        return fetch(url)

    return fetch_or_replay


@dataclasses.dataclass
class CategoryJob:
    """Everything one category download needs, in plain values."""

    wnid: str
    label: str
    needed: int
    sample: list[tuple[str, str]]  # (image_id, url) of this synset, in sample order
    continuation: Callable[[], Iterator[tuple[str, str]]]  # the rest of the synset, same order
    images_dir: Path
    banned: set[str]
    earlier_attempts: list[dict[str, str]]
    max_in_flight: int = 16
    retry: RetrySettings = dataclasses.field(default_factory=RetrySettings)


def candidates(job: CategoryJob) -> Iterator[tuple[str, str]]:
    yield from job.sample
    yield from job.continuation()


def run_category_job(
    job: CategoryJob,
    *,
    fetch: Callable[[str], FetchOutcome],
    judge: Callable[[bytes], ImageVerdict],
    journal: Path | None = None,
    progress: ProgressCallback = no_progress,
) -> tuple[dict, list[dict[str, object]]]:
    """Download the category; return its result (JSON-ready) and every attempt row.

    Kept JPEGs are written to ``images_dir`` atomically, exactly as served.
    """
    # Image files a killed attempt left half-written; one sweep, not a glob of images/ per file.
    if job.images_dir.is_dir():
        with os.scandir(job.images_dir) as entries:  # cheaper than a glob's regex per name
            leftovers = [e.path for e in entries if e.name.startswith(f"{job.wnid}_") and TMP_MARK in e.name]
        remove_dead_temporaries([Path(leftover) for leftover in leftovers])
    filenames = {url: image_filename(image_id, job.label) for image_id, url in job.sample}
    # Continuation URLs are named on the fly; earlier kept ones may come from there too.
    for row in job.earlier_attempts:
        filenames.setdefault(row["url"], image_filename(row["image_id"], job.label))
    journal_file = None
    if journal is not None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        new = not journal.exists()
        journal_file = journal.open("a", encoding="utf-8", newline="")
        journal_writer = csv.DictWriter(journal_file, ATTEMPT_FIELDS, lineterminator="\n")
        if new:
            journal_writer.writeheader()

    def record(attempt: Attempt) -> None:
        if journal_file is not None:
            journal_writer.writerow(attempt_row(attempt))
            journal_file.flush()

    try:
        result: CategoryResult = fetch_category(
            candidates(job),
            job.needed,
            fetch=replaying_fetch(fetch, job.earlier_attempts, job.images_dir, filenames),
            judge=judge,
            banned=job.banned,
            max_in_flight=job.max_in_flight,
            retry=job.retry,
            progress=progress,
            on_attempt=record if journal_file is not None else None,
        )
    finally:
        if journal_file is not None:
            journal_file.close()
    kept = []
    for image in result.kept:
        name = image_filename(image.image_id, job.label)
        target = job.images_dir / name
        if not (target.is_file() and target.stat().st_size == len(image.body)):
            atomic_write_bytes(target, image.body, clean_stale=False)  # swept once above
        kept.append(
            {
                "image_id": image.image_id,
                "url": image.url,
                "final_url": image.final_url,
                "file": name,
                "sha256": image.sha256,
                "md5": image.md5,
                "bytes": image.bytes,
                "width": image.width,
                "height": image.height,
            }
        )
    summary = {
        "wnid": job.wnid,
        "label": job.label,
        "needed": job.needed,
        "kept": kept,
        "shortfall": job.needed - len(kept),
        "exhausted": result.exhausted,
        "tried": result.tried,
        "judged": [
            {k: getattr(a, k) for k in ("image_id", "url", "outcome", "md5", "sha256")} for a in result.judged
        ],
    }
    rows = [attempt_row(a) for a in result.judged] + [attempt_row(a) for a in result.speculative]
    return summary, rows


def write_result(summary: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(summary, indent=1, ensure_ascii=False) + "\n")


def read_result(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


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
        """Hosts found dead by any category of this configuration (sampler.dead_hosts)."""
        return self.folder / "dead-hosts"

    def request_slots(self) -> Path:
        """The fleet's request slots (sampler.request_slots), shared by every process of the run."""
        return self.folder / "request-slots"


def round_plan_path(folder: Path, round_: int) -> Path:
    return folder / f"round{round_}.json"


def fetch_category_round(
    files: CategoryFiles,
    round_: int,
    job: CategoryJob,
    *,
    settings: FetchSettings,
    judge: Callable[[bytes], ImageVerdict],
    progress: ProgressCallback = no_progress,
    fleet_requests: int = 64,
) -> dict:
    """Run one round of one category and write its attempts and result; return the result.

    Round 0 starts from the configured placeholder hashes; a top-up round also bans
    what FetchFives' plan for that round names.  Every earlier round's attempts, and
    this round's journal (left by a killed attempt), are replayed instead of fetched.
    """
    if round_:
        plan = RoundPlan.from_json(json.loads(round_plan_path(files.folder, round_).read_text()))
        job.banned |= plan.banned_for(files.wnid)
    for earlier in range(round_ + 1):
        job.earlier_attempts += read_attempts(files.attempts(earlier))
        job.earlier_attempts += read_attempts(files.journal(earlier))
    # Retries are parked by fetch_category (settings.retries of them), never slept in a fetch.
    job.retry = RetrySettings(settings.retries, settings.backoff, settings.retry_after_max)
    slots = RequestSlots(files.request_slots(), fleet_requests, settings.per_host)
    with Fetcher(dataclasses.replace(settings, retries=0)) as fetcher, DeadHosts(files.dead_hosts()) as dead:
        network = dead.guard(slots.guard(fetcher.fetch, recheck=dead.known_dead))
        summary, attempts = run_category_job(
            job, fetch=network, judge=judge, journal=files.journal(round_), progress=progress
        )
    summary["round"] = round_
    write_attempts(attempts, files.attempts(round_), {"round": round_})
    # The journal goes before the result appears: once the result exists this round never
    # runs again, so a journal left by a kill in between would stay for ever.  (Killed here,
    # the rerun replays the attempts file just written.)
    files.journal(round_).unlink(missing_ok=True)
    write_result(summary, files.result(round_))
    return summary


def final_message(summary: dict) -> str:
    """The status a finished category shows in the scheduler UI."""
    short = summary["shortfall"]
    message = f"kept {len(summary['kept'])}/{summary['needed']} after {summary['tried']} URLs"
    return message + (f", {short} short: no URLs left to try" if short else "")
