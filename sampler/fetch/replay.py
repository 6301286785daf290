"""One category's download, replayed: what a ``CategoryJob`` is and how it runs.

``fetch_category`` (sampler.fetch.sample_order) decides which candidates are kept; this
module supplies the candidates (the sample, then the rest of the synset in the same seeded
order), replays what an earlier attempt at the category already learned so that no URL is
fetched twice, puts every good body into the store (sampler.store) the moment it is judged
and journals every attempt.  sampler.fetch.category_round runs it as one round.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from sampler.atomic import remove_path
from sampler.fetch import rate_limits
from sampler.fetch.attempts import ATTEMPT_FIELDS
from sampler.fetch.http_fetch import FetchOutcome
from sampler.fetch.image_check import ImageVerdict
from sampler.fetch.results import Attempt, RoundResult
from sampler.fetch.sample_order import HitRate, RetrySettings, fetch_category
from sampler.naming import image_filename, image_files
from sampler.outcomes import GOOD_BODY, Outcome
from sampler.progress import ProgressCallback, no_progress
from sampler.store import ImageStore, StoredUrl

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


class ReplayingFetch:
    """``fetch`` that answers from earlier attempts and the store instead of asking the web again.

    ``earlier``: rows as ``read_attempts`` gives them.  A failed URL keeps its earlier
    outcome; a URL that served a good body -- kept or not, in this configuration or any
    other -- is answered from the store.  ``legacy_files`` (URL -> image file) serves
    data_dirs made before the store existed.  Anything else is fetched.
    """

    def __init__(
        self,
        fetch: Callable[[str], FetchOutcome],
        earlier: Iterable[Mapping[str, str]],
        store: ImageStore,
        stored_urls: Mapping[str, StoredUrl],
        legacy_files: Mapping[str, Path] | None = None,
    ) -> None:
        self.fetch, self.store, self.stored_urls = fetch, store, stored_urls
        self.legacy_files = legacy_files or {}
        self.known: dict[str, Mapping[str, str]] = {}
        for row in earlier:
            self.known.setdefault(row["url"], row)

    def __call__(self, url: str) -> FetchOutcome:
        row = self.known.get(url)
        final_url, sha256 = "", ""
        if row is not None:
            if rate_limits.is_due(row):  # a 429 whose Retry-After has passed: ask again
                return self.fetch(url)
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
                    digests=(row.get("md5") or "", row.get("sha256") or ""),
                )
            final_url, sha256 = row["final_url"], row["sha256"]
        elif url in self.stored_urls:
            final_url, sha256 = self.stored_urls[url].final_url, self.stored_urls[url].sha256
        if sha256:
            body = self.store.get(sha256)
            old_file = self.legacy_files.get(url)
            if body is None and old_file is not None and old_file.is_file():
                body = old_file.read_bytes()
                if hashlib.sha256(body).hexdigest() == sha256:
                    self.store.put(body, sha256)
                else:
                    body = None
            if body is not None:
                return _replayed(url, final_url, body)
        return self.fetch(url)


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

    def __init__(
        self,
        judge: Callable[[bytes], ImageVerdict],
        store: ImageStore,
        wnid: str,
        fetch: Callable[[str], FetchOutcome],
    ) -> None:
        self.judge, self.store, self.wnid, self.web = judge, store, wnid, fetch
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

    def fetch(self, url: str) -> FetchOutcome:
        """The web's answer for ``url``, a body that may be a good JPEG stored before anything else."""
        with self._changed:
            self._busy += 1
        handed_on = False
        try:
            outcome = self.web(url)
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
        data = journal.read_bytes()  # one short line per answered or decided URL
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
            journal_writer.writerow(attempt.row())
            journal_file.flush()

    image_ids: dict[str, str] = {}

    def pulled() -> Iterator[tuple[str, str]]:
        for image_id, url in candidates(job):
            image_ids.setdefault(url, image_id)
            yield image_id, url

    storing = StoringJudge(judge, job.store, job.wnid, fetch)  # a body from the web: stored if good
    try:
        replay = ReplayingFetch(
            storing.fetch,
            job.earlier_attempts,
            job.store,
            job.store.stored_urls(job.wnid),
            # images/ of a data_dir made before the store: a URL's file is named by its last row
            # in the sample, else by its first in the earlier attempts (continuation URLs are
            # named on the fly, so earlier kept ones may come from there too).
            legacy_files=None
            if job.legacy_images_dir is None
            else image_files(
                job.legacy_images_dir,
                job.label,
                [*reversed(job.sample), *((row["image_id"], row["url"]) for row in job.earlier_attempts)],
            ),
        )
        result = fetch_category(
            pulled(),
            job.needed,
            fetch=replay,
            judge=storing,
            banned=job.banned,
            max_in_flight=job.max_in_flight,
            retry=job.retry,
            progress=progress,
            on_attempt=record if journal_file is not None else None,
            # Answers too, as they arrive: a kill then loses no answer the look-ahead had.
            on_answer=record if journal_file is not None else None,
            hit_rate=hit_rate,
            wnid=job.wnid,
            label=job.label,
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
    result.kept = [
        dataclasses.replace(image, file=image_filename(image.image_id, job.label)) for image in result.kept
    ]
    rows = [attempt.row() for attempt in result.judged + result.speculative + late]
    return result, rows
