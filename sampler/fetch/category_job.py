"""One category's download, end to end, as FetchCategory runs it.

``fetch_category`` decides which candidates are kept; this module supplies the
candidates (the sample, then the rest of the synset in the same seeded order),
replays what an earlier attempt at the category already learned so that no URL
is fetched twice, puts every good body into the store (sampler.store) the moment
it is judged and records every attempt.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from sampler.atomic import atomic_write_bytes, remove_path
from sampler.fetch import rate_limits
from sampler.fetch.attempts import (
    ATTEMPT_FIELDS,
    RequestCost,
    read_attempts,
    request_cost,
    requests_of,
    write_attempts,
)
from sampler.fetch.category_fetch import Attempt, CategoryResult, HitRate, RetrySettings, fetch_category
from sampler.fetch.dead_hosts import MAX_AGE, DeadHosts
from sampler.fetch.gather import read_manifest, read_round_plan
from sampler.fetch.hit_rates import RunHitRates
from sampler.fetch.http_fetch import Fetcher, FetchOutcome, FetchSettings
from sampler.fetch.image_check import ImageVerdict
from sampler.fetch.request_slots import RequestSlots
from sampler.fetch.results import JudgedUrl, KeptImage, RoundResult
from sampler.naming import image_filename
from sampler.outcomes import GOOD_BODY, Outcome
from sampler.progress import ProgressCallback, no_progress
from sampler.store import ImageStore, StoredUrl, is_intact


def attempt_row(attempt: Attempt) -> dict[str, object]:
    return {field: getattr(attempt, field) for field in ATTEMPT_FIELDS}


JPEG_SOI = b"\xff\xd8"


def _replayed(url: str, final_url: str, body: bytes) -> FetchOutcome:
    return FetchOutcome(
        url=url,
        final_url=final_url,
        status=200,
        outcome=Outcome.OK,
        body=body,
        bytes=len(body),
        ms=0,
        error="",
        redirects=0,
        attempts=0,
    )


def replaying_fetch(
    fetch: Callable[[str], FetchOutcome],
    earlier: Iterable[Mapping[str, str]],
    store: ImageStore,
    stored_urls: Mapping[str, StoredUrl],
    legacy_files: Mapping[str, Path] | None = None,
) -> Callable[[str], FetchOutcome]:
    """``fetch`` that answers from earlier attempts and the store instead of asking the web again.

    ``earlier``: rows as ``read_attempts`` gives them.  A failed URL keeps its earlier
    outcome; a URL that served a good body -- kept or not, in this configuration or any
    other -- is answered from the store.  ``legacy_files`` (URL -> image file) serves
    data_dirs made before the store existed.  Anything else is fetched.
    """
    known: dict[str, Mapping[str, str]] = {}
    for row in earlier:
        known.setdefault(row["url"], row)

    def fetch_or_replay(url: str) -> FetchOutcome:
        row = known.get(url)
        final_url, sha256 = "", ""
        if row is not None:
            if rate_limits.is_due(row):  # a 429 whose Retry-After has passed: ask again
                return fetch(url)
            if row["outcome"] not in GOOD_BODY:  # a placeholder_redirect is as final as a 404
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
            final_url, sha256 = row["final_url"], row["sha256"]
        elif url in stored_urls:
            final_url, sha256 = stored_urls[url].final_url, stored_urls[url].sha256
        if sha256:
            body = store.get(sha256)
            old_file = (legacy_files or {}).get(url)
            if body is None and old_file is not None and old_file.is_file():
                body = old_file.read_bytes()
                if hashlib.sha256(body).hexdigest() == sha256:
                    store.put(body, sha256)
                else:
                    body = None
            if body is not None:
                return _replayed(url, final_url, body)
        return fetch(url)

    return fetch_or_replay


# How long a finished category waits for its speculative requests still in flight: their
# bodies are already on the way, and once stored a top-up round or another configuration
# needs no new request for them.  Bounded, so a trickling host cannot hold the task.
STRAGGLER_GRACE = 3.0


class StoringJudge:
    """``judge`` for ``fetch_category`` that keeps every good body in the store.

    A JPEG-looking body fetched from the web (through ``fetch``) is put into the store and
    its URL recorded as soon as it arrives, on the fetch worker thread -- speculative ones
    included, and before its attempt can be journaled -- so that a kill a moment later
    loses nothing that arrived.  The judge, on the same body, then takes out what it finds
    not good: only good JPEGs stay.  (Stored before judging because the first judgement in
    a fresh worker process loads Pillow's decoders, long enough for kills to land there.)
    A body answered from the store is there already.  A failed store write (a full disk)
    does not change the verdict -- the rerun fetches that body again -- but
    ``raise_failure`` ends the task afterwards.
    """

    def __init__(self, judge: Callable[[bytes], ImageVerdict], store: ImageStore, wnid: str) -> None:
        self.judge, self.store, self.wnid = judge, store, wnid
        self._changed = threading.Condition()
        # id(body) -> (body, sha256 or "" if not stored, url, outcome): fetched from the web,
        # not judged yet.  Holding the body keeps its id from being reused while it waits.
        self._fetched: dict[int, tuple[bytes, str, str, FetchOutcome]] = {}
        # url -> (fetch outcome, verdict or None) of every web fetch that finished: what a
        # request still in flight when the category was decided learned (see stragglers()).
        self.finished: dict[str, tuple[FetchOutcome, ImageVerdict | None]] = {}
        self._busy = 0  # web requests in progress plus bodies fetched and not yet judged
        self.failure: OSError | None = None

    def _done(self) -> None:
        with self._changed:
            self._busy -= 1
            self._changed.notify_all()

    def _failed(self, exc: OSError) -> None:
        with self._changed:
            self.failure = self.failure or exc

    def fetch(self, fetch: Callable[[str], FetchOutcome], url: str) -> FetchOutcome:
        """``fetch(url)``, storing a body that may be a good JPEG before anything else."""
        with self._changed:
            self._busy += 1
        handed_on = False
        try:
            outcome = fetch(url)
            body = outcome.body
            if outcome.outcome == Outcome.OK and body:
                digest = ""
                if body.startswith(JPEG_SOI):  # nothing else can be judged a good JPEG
                    try:
                        digest = self.store.put(body)
                        self.store.remember_url(self.wnid, url, outcome.final_url, digest)
                    except OSError as exc:
                        self._failed(exc)
                with self._changed:
                    self._fetched[id(body)] = (body, digest, url, outcome)
                handed_on = True
            elif not outcome.retryable:  # a retryable try is not final: fetch_category parks it
                with self._changed:
                    self.finished[url] = (outcome, None)
            return outcome
        finally:
            if not handed_on:
                self._done()

    def __call__(self, body: bytes) -> ImageVerdict:
        with self._changed:
            fetched = self._fetched.pop(id(body), None)
        try:
            verdict = self.judge(body)
            if fetched is not None and fetched[0] is body:
                with self._changed:
                    self.finished[fetched[2]] = (fetched[3], verdict)
            if verdict.outcome != Outcome.OK and body.startswith(JPEG_SOI):
                # Not a good JPEG: out of the store (the same bytes are judged the same everywhere),
                # whether stored just now or by a run killed before it could judge them.
                digest = verdict.sha256 or (fetched[1] if fetched is not None else "")
                if digest:
                    remove_path(self.store.path(digest))
            return verdict
        finally:
            if fetched is not None:
                self._done()

    def wait_for_stragglers(self, timeout: float) -> bool:
        """Wait until no web request is in flight or unjudged; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._busy <= 0, timeout)

    def stragglers(self, recorded: set[str], image_ids: Mapping[str, str], banned: set[str]) -> list[Attempt]:
        """Speculative attempts that finished after the category was decided (not in ``recorded``).

        Recorded like the other speculative ones, so that a rerun or a top-up round replays
        them instead of asking again.
        """
        attempts = []
        with self._changed:
            finished = dict(self.finished)
        for url, (outcome, verdict) in finished.items():
            if url in recorded or url not in image_ids:
                continue
            md5, sha256 = (verdict.md5, verdict.sha256) if verdict is not None else ("", "")
            result: str
            if outcome.outcome != Outcome.OK:
                result = outcome.outcome
            elif verdict is None:
                continue  # never judged (the judge raised): nothing certain to record
            elif verdict.outcome != Outcome.OK:
                result = verdict.outcome
            else:
                result = Outcome.BANNED if {md5, sha256} & banned else Outcome.OK
            attempts.append(
                Attempt(
                    image_id=image_ids[url],
                    url=url,
                    final_url=outcome.final_url,
                    status=outcome.status,
                    outcome=result,
                    bytes=outcome.bytes,
                    ms=outcome.ms,
                    md5=md5,
                    sha256=sha256,
                    error=outcome.error or (getattr(verdict, "detail", "") if verdict else ""),
                    judged=False,
                    requests=outcome.attempts,
                )
            )
        return attempts

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure


@dataclasses.dataclass
class CategoryJob:
    """Everything one category download needs, in plain values."""

    wnid: str
    label: str
    needed: int
    sample: list[tuple[str, str]]  # (image_id, url) of this synset, in sample order
    continuation: Callable[[], Iterator[tuple[str, str]]]  # the rest of the synset, same order
    store: ImageStore
    banned: set[str]
    earlier_attempts: list[dict[str, str]]
    max_in_flight: int = 16
    retry: RetrySettings = dataclasses.field(default_factory=RetrySettings)
    # images/ of a data_dir made before the store: kept images are read back from there.
    legacy_images_dir: Path | None = None
    straggler_grace: float = STRAGGLER_GRACE


def candidates(job: CategoryJob) -> Iterator[tuple[str, str]]:
    yield from job.sample
    yield from job.continuation()


def _drop_torn_line(journal: Path) -> int:
    """Cut a line a kill left half-written off the end of ``journal``; return the size left.

    Appended to as it is, the next row would be glued onto it and lost with it."""
    try:
        data = journal.read_bytes()  # one short line per decided URL
    except FileNotFoundError:
        return 0
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        os.truncate(journal, complete)
    return complete


def _journal_fields(journal: Path) -> list[str]:
    """The columns of an existing journal: one begun by an earlier version may lack some."""
    with journal.open(encoding="utf-8", newline="") as src:
        header = next(csv.reader(src), [])
    return header if set(header) <= set(ATTEMPT_FIELDS) and "judged" in header else ATTEMPT_FIELDS


def run_category_job(
    job: CategoryJob,
    *,
    fetch: Callable[[str], FetchOutcome],
    judge: Callable[[bytes], ImageVerdict],
    journal: Path | None = None,
    progress: ProgressCallback = no_progress,
    hit_rate: HitRate | None = None,
) -> tuple[RoundResult, list[dict[str, object]]]:
    """Download the category; return its result and every attempt row.

    Every good body is put into ``job.store`` as soon as it is judged, exactly as served;
    the result names the kept ones by sha256 and by their file name in images/ (made by
    FetchFives from the store).
    """
    legacy_files: dict[str, Path] = {}
    if job.legacy_images_dir is not None:
        for image_id, url in job.sample:
            legacy_files[url] = job.legacy_images_dir / image_filename(image_id, job.label)
        # Continuation URLs are named on the fly; earlier kept ones may come from there too.
        for row in job.earlier_attempts:
            legacy_files.setdefault(
                row["url"], job.legacy_images_dir / image_filename(row["image_id"], job.label)
            )
    journal_file = None
    if journal is not None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        new = _drop_torn_line(journal) == 0
        fields = ATTEMPT_FIELDS if new else _journal_fields(journal)
        journal_file = journal.open("a", encoding="utf-8", newline="")
        journal_writer = csv.DictWriter(journal_file, fields, lineterminator="\n", extrasaction="ignore")
        if new:
            journal_writer.writeheader()

    def record(attempt: Attempt) -> None:
        if journal_file is not None:
            journal_writer.writerow(attempt_row(attempt))
            journal_file.flush()

    storing = StoringJudge(judge, job.store, job.wnid)

    def fetch_from_web(url: str) -> FetchOutcome:
        return storing.fetch(fetch, url)  # a body from the web: the judge stores it if good

    replay = replaying_fetch(
        fetch_from_web, job.earlier_attempts, job.store, job.store.stored_urls(job.wnid), legacy_files
    )

    image_ids: dict[str, str] = {}

    def pulled() -> Iterator[tuple[str, str]]:
        for image_id, url in candidates(job):
            image_ids.setdefault(url, image_id)
            yield image_id, url

    try:
        result: CategoryResult = fetch_category(
            pulled(),
            job.needed,
            fetch=replay,
            judge=storing,
            banned=job.banned,
            max_in_flight=job.max_in_flight,
            retry=job.retry,
            progress=progress,
            on_attempt=record if journal_file is not None else None,
            hit_rate=hit_rate,
        )
    finally:
        if journal_file is not None:
            journal_file.close()
    storing.wait_for_stragglers(job.straggler_grace)
    storing.raise_failure()
    recorded = {a.url for a in result.judged} | {a.url for a in result.speculative}
    late = storing.stragglers(recorded, image_ids, {digest.lower() for digest in job.banned})
    for image in result.kept:
        job.store.put(image.body, image.sha256)  # a no-op unless the store lost it meanwhile
    summary = RoundResult(
        wnid=job.wnid,
        label=job.label,
        needed=job.needed,
        kept=[
            KeptImage(
                image_id=image.image_id,
                url=image.url,
                final_url=image.final_url,
                file=image_filename(image.image_id, job.label),
                sha256=image.sha256,
                md5=image.md5,
                bytes=image.bytes,
                width=image.width,
                height=image.height,
            )
            for image in result.kept
        ],
        exhausted=result.exhausted,
        tried=result.tried,
        judged=[JudgedUrl(a.image_id, a.url, a.outcome, a.md5, a.sha256) for a in result.judged],
    )
    rows = [attempt_row(a) for a in result.judged + result.speculative + late]
    return summary, rows


def write_result(result: RoundResult, path: Path) -> None:
    # Not a listing of the round's folder for a crashed writer's temporaries first: it holds
    # two files per category, so that cost O(categories) per category, 45 ms at 21,841.  The
    # run's sweep at its first task (sampler.atomic.sweep_dead_temporaries) removes them.
    text = json.dumps(result.to_json(), indent=1, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"), clean_stale=False)


def read_result(path: str | os.PathLike[str]) -> RoundResult:
    """Raises OSError, ValueError (not JSON), KeyError or TypeError (not a result)."""
    return RoundResult.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


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


def fetch_category_round(
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
) -> RoundResult:
    """Run one round of one category and write its attempts and result; return the result.

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
    slots = RequestSlots(files.request_slots(), fleet_requests, settings.per_host, per_host_max)
    # The slots cap each host (adaptively, up to per_host_max): the Fetcher's own cap must not
    # hold it at per_host.
    with (
        Fetcher(dataclasses.replace(settings, retries=0, per_host=slots.per_host_max)) as fetcher,
        DeadHosts(files.dead_hosts(), max_age=dead_host_memory) as dead,
        RunHitRates(files.hit_rates(), f"{files.wnid}-round{round_}") as run_hits,
    ):
        network = rate_limits.noting_rate_limits(
            dead.guard(slots.guard(fetcher.fetch, recheck=dead.known_dead)), rate_limit_wait
        )
        summary, attempts = run_category_job(
            job,
            fetch=network,
            judge=judge,
            journal=files.journal(round_),
            progress=progress,
            hit_rate=HitRate(run_hits),
        )
    summary = dataclasses.replace(summary, round=round_)
    for row in attempts:
        if not row["requests"] and asked_before.get(str(row["url"])):
            row["requests"] = asked_before[str(row["url"])]
    write_attempts(attempts, files.attempts(round_), {"round": round_}, clean_stale=False)  # as write_result
    # The journal goes before the result appears: once the result exists this round never
    # runs again, so a journal left by a kill in between would stay for ever.  (Killed here,
    # the rerun replays the attempts file just written.)
    files.journal(round_).unlink(missing_ok=True)
    write_result(summary, files.result(round_))
    return summary


def final_message(result: RoundResult, cost: RequestCost | None = None) -> str:
    """The status a finished category shows in the scheduler UI; ``cost``: its round's requests."""
    short = result.shortfall
    message = f"kept {len(result.kept)}/{result.needed} after {result.tried} URLs"
    if cost is not None:
        message += f", {cost.text(len(result.kept))}"
    return message + (f", {short} short: no URLs left to try" if short else "")


def closing_message(files: CategoryFiles, round_: int, result: RoundResult) -> tuple[str, bool]:
    """A finished round's status message (its requests, and hosts that rate limited it), and
    whether it is worth a warning (a shortfall, or a 429)."""
    attempts = read_attempts(files.attempts(round_))
    limits = rate_limits.host_limits(attempts, [judged.url for judged in result.judged])
    message = final_message(result, request_cost(attempts))
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
