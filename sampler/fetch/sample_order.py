"""Find the first ``needed`` working JPEGs of one category, deterministically.

Candidates are fetched a window at a time on a thread pool but *decided in
sample order*: candidate i is kept only once every candidate before it has been
judged.  The kept images are therefore exactly what a sequential run would keep,
whatever the timing or ``max_in_flight``; fetches that turn out not to be needed
are reported as speculative.  An unordered "first five to finish" would make the
result depend on which server answered faster.

The look-ahead is sized by need: a candidate is fetched only while the window's
expected yield -- bodies already found good but not yet decided, plus the alive rate
times the fetches still unanswered -- is short of what the category still needs.
The alive rate is this category's, drawn towards the run's (the other categories'
decisions so far, shared across processes by ``sampler.fetch.hit_rates``) while the
category has seen little.  A mostly dead category therefore fetches far ahead, a
healthy one little more than it needs, and once enough good bodies wait for their
turn nothing more is asked; ``max_in_flight`` bounds it.  Only timing and the
number of requests depend on this, never a decision.

A fetch that the retry policy (``sampler.fetch.retry_policy``) calls retryable comes back
at once with ``retryable`` set; its candidate is *parked* on a due-time heap and
fetched again when due, holding no thread and no request slot meanwhile, while the
window keeps fetching ahead.  Decisions wait for the final outcome, in sample order.

Same bytes behind two different URLs of the category are a placeholder (a host's
"image not found" banner): the later one is rejected as ``duplicate`` and the
earlier one, if kept, is evicted (its outcome becomes ``evicted_duplicate``) and
replaced by the next valid candidate.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import queue
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from sampler.fetch import retry_policy
from sampler.fetch.hit_rates import RunHitRates
from sampler.fetch.http_fetch import FetchMachineryError, FetchOutcome
from sampler.fetch.image_check import ImageVerdict
from sampler.fetch.results import Attempt, KeptImage, RoundResult
from sampler.outcomes import Outcome
from sampler.progress import ProgressCallback, no_progress


@dataclass
class _Fetched:
    outcome: FetchOutcome
    verdict: ImageVerdict | None
    md5: str
    sha256: str
    error: str


@dataclass(frozen=True)
class RetrySettings:
    """How parked retries are timed (what is retried is ``sampler.fetch.retry_policy``'s call)."""

    retries: int = 2  # extra tries after the first
    backoff: float = 0.5  # first retry waits backoff * [1, 1.5), doubling each time
    retry_after_max: float = 10.0  # a longer Retry-After means "give up", not "wait"


@dataclass(eq=False)
class _Slot:
    image_id: str
    url: str
    duplicate: bool = False  # URL seen earlier in this category: never fetched
    future: Future[_Fetched] | None = None  # the try running now
    final: _Fetched | None = None  # the outcome to decide on
    tries: int = 0
    ms: int = 0  # time spent fetching, all tries (not the parked waits)
    requests: int = 0  # HTTP requests sent, all tries and redirect hops (0 when replayed)
    good: bool = False  # final, and its body judged a good JPEG
    pushed_back: bool = False  # its host said "try again later" (429, 503...): a retry is due


def _fetch_and_judge(
    url: str, fetch: Callable[[str], FetchOutcome], judge: Callable[[bytes], ImageVerdict]
) -> _Fetched:
    started = time.monotonic()
    try:
        fetched = fetch(url)
    except FetchMachineryError:
        raise  # not the URL's outcome: recorded, it would change a decision for good
    except Exception as exc:  # fetch is meant to return failures, not raise them
        ms = int((time.monotonic() - started) * 1000)
        fetched = FetchOutcome(
            url, url, None, Outcome.ERROR, None, 0, ms, f"fetch raised {exc!r}"[:300], 0, 0
        )
    if fetched.outcome != Outcome.OK:
        return _Fetched(fetched, None, *fetched.digests, fetched.error)
    body = fetched.body or b""
    try:
        verdict = judge(body)
    except Exception as exc:
        return _Fetched(fetched, None, "", "", f"judge raised {exc!r}"[:300])
    # Hash here (worker thread) unless the judge already did: cheap next to the download.
    md5 = verdict.md5 or (hashlib.md5(body).hexdigest() if body else "")
    sha256 = verdict.sha256 or (hashlib.sha256(body).hexdigest() if body else "")
    return _Fetched(fetched, verdict, md5.lower(), sha256.lower(), getattr(verdict, "detail", ""))


def _attempt(slot: _Slot, done: _Fetched, banned: set[str], judged: bool) -> Attempt:
    fetched, verdict = done.outcome, done.verdict
    if fetched.outcome != Outcome.OK:
        outcome = fetched.outcome
    elif verdict is None:
        outcome = Outcome.ERROR
    elif verdict.outcome != Outcome.OK:
        outcome = verdict.outcome
    elif done.md5 in banned or done.sha256 in banned:
        outcome = Outcome.BANNED
    else:
        outcome = Outcome.OK  # for a judged attempt, _decide may still turn this into a duplicate
    return Attempt(
        image_id=slot.image_id,
        url=slot.url,
        final_url=fetched.final_url,
        status=fetched.status,
        outcome=outcome,
        bytes=fetched.bytes,
        ms=slot.ms,
        md5=done.md5,
        sha256=done.sha256,
        error=done.error + (f" (after {slot.tries} tries)" if slot.tries > 1 else ""),
        judged=judged,
        requests=slot.requests,
    )


# The alive rate the run's first fetches assume: one in two (the 2017 web), soon replaced.
PRIOR_RATE = 0.5
# How many fetches the run's rate weighs in a category's estimate: enough to start a category
# at the run's rate, few enough that the category's own outcomes soon decide.
RUN_RATE_WEIGHT = 8.0
# Fetch ahead until this share of what is still needed is expected among the fetches in play:
# below 1, the last fetches of a category seldom overshoot the one that completes it, at the
# cost of a few more round trips.
LOOKAHEAD = 0.8


class HitRate:
    """Valid images per finished fetch in one category, drawn towards the run's rate."""

    def __init__(self, run: RunHitRates | None = None) -> None:
        self.finished = 0
        self.valid = 0
        self.run = run  # the run's counts, this category's included, shared with other processes

    def add(self, valid: bool) -> None:
        """A fetch of this category finished."""
        self.finished += 1
        self.valid += valid

    def decided(self, valid: bool) -> None:
        """A candidate was decided in sample order: what the run's rate counts.  (Fetches
        past a category's last decision are not the web's rate but the look-ahead's.)"""
        if self.run is not None:
            self.run.add(valid)

    def rate(self) -> float:
        """Expected share of valid images among fetches still unanswered (never 0)."""
        run_rate = self.run.others() if self.run is not None else None
        prior = PRIOR_RATE if run_rate is None else run_rate  # the other categories' rate
        return max((self.valid + RUN_RATE_WEIGHT * prior) / (self.finished + RUN_RATE_WEIGHT), 1e-3)

    def wants_more(self, remaining: int, good_waiting: int, unanswered: int) -> bool:
        """Fetch one more candidate?  ``remaining``: still to keep; ``good_waiting``: good
        bodies fetched, waiting for their turn; ``unanswered``: fetches in flight or parked."""
        if good_waiting >= remaining:
            return False  # the kept set is settled unless an earlier candidate changes it
        expected = good_waiting + self.rate() * unanswered
        return unanswered == 0 or expected < LOOKAHEAD * remaining


def fetch_category(
    candidates: Iterable[tuple[str, str]],
    needed: int,
    *,
    fetch: Callable[[str], FetchOutcome],
    judge: Callable[[bytes], ImageVerdict],
    banned: set[str],
    max_in_flight: int = 16,
    retry: RetrySettings | None = None,
    progress: ProgressCallback = no_progress,
    on_attempt: Callable[[Attempt], None] | None = None,
    hit_rate: HitRate | None = None,
    wnid: str = "",
    label: str = "",
    on_answer: Callable[[Attempt], None] | None = None,
) -> RoundResult:
    """Keep the first ``needed`` valid candidates in sample order.

    ``candidates`` yields (image_id, url) lazily; at most ``max_in_flight``
    undecided candidates are fetched ahead of the decision point (parked retries
    aside: they hold no thread, and there are at most as many again), fewer while
    the observed hit rate says fewer will do.  Valid means: fetch outcome ok,
    judge outcome ok, neither digest in ``banned`` and bytes not seen behind
    another URL of this category.  A fetch outcome marked ``retryable`` is tried
    again after its wait (``retry``, default ``RetrySettings()``), parked meanwhile.
    ``hit_rate`` (default: ``HitRate()``, the run's rate unknown) sizes the look-ahead;
    every finished fetch and every decision is added to it.

    ``on_attempt`` is called on the calling thread, never after return: once per
    judged attempt in sample order as it is decided, then once per speculative
    attempt.  The one exception is an eviction: the earlier kept attempt is
    reported a second time, now with outcome ``evicted_duplicate``.  ``on_answer``, also on
    the calling thread, gets each candidate's final answer as it arrives, before its turn
    in sample order (``judged`` False): a journal that records it spares a rerun after a
    kill the requests of the look-ahead's answers not yet decided.  The returned
    ``RoundResult`` (of ``wnid`` and ``label``, round 0) is the authoritative record; its
    kept images carry their bodies and no file name yet (the round names them).

    Bounded whenever ``fetch`` is: stragglers still running at the end are
    abandoned (not awaited) and their results dropped.
    """
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
    if needed <= 0:
        progress(100.0, f"kept 0/{needed} after 0 URLs")
        return RoundResult(wnid, label, needed)
    return _Download(
        candidates,
        RoundResult(wnid, label, needed),
        fetch=fetch,
        judge=judge,
        banned={digest.lower() for digest in banned},
        max_in_flight=max_in_flight,
        retry=retry or RetrySettings(),
        progress=progress,
        report=on_attempt or (lambda attempt: None),
        hits=hit_rate or HitRate(),
        answered=on_answer,
    ).run()


class _Download:
    """One ``fetch_category`` call: the window of candidates, the tries in flight on a
    thread pool, the parked retries, and the decisions in sample order."""

    def __init__(
        self,
        candidates: Iterable[tuple[str, str]],
        result: RoundResult,
        *,
        fetch: Callable[[str], FetchOutcome],
        judge: Callable[[bytes], ImageVerdict],
        banned: set[str],
        max_in_flight: int,
        retry: RetrySettings,
        progress: ProgressCallback,
        report: Callable[[Attempt], None],
        hits: HitRate,
        answered: Callable[[Attempt], None] | None = None,
    ) -> None:
        self.answered = answered
        self.needed, self.fetch, self.judge, self.banned = result.needed, fetch, judge, banned
        self.max_in_flight, self.retry, self.progress, self.report = max_in_flight, retry, progress, report
        self.result = result
        self.source = iter(candidates)
        self.source_done = False
        self.window: deque[_Slot] = deque()  # pulled, not yet decided, in sample order
        self.seen_urls: set[str] = set()
        # sha256 -> (attempt, kept entry or None once evicted) of every valid body so far
        self.valid_bodies: dict[str, tuple[Attempt, KeptImage | None]] = {}
        self.ended: queue.SimpleQueue[_Slot] = queue.SimpleQueue()  # tries that ended, from the pool
        self.parked: list[tuple[float, int, _Slot]] = []  # (due, tie-break, slot): retries waiting
        self.tie = itertools.count()
        self.hits = hits
        self.running = 0
        self.pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="fetch-category")

    def run(self) -> RoundResult:
        result = self.result
        try:
            while len(result.kept) < self.needed:
                self.start_due_retries()
                self.fill_window()
                if not self.window:
                    result.exhausted = True
                    break
                self.decide_what_is_final()
                if len(result.kept) < self.needed and self.window and not self.next_is_final():
                    self.wait_for_a_try()
        finally:
            self.finish()
        for attempt in result.speculative:
            self.report(attempt)
        return result

    def start(self, slot: _Slot) -> None:
        slot.tries += 1
        self.running += 1
        slot.future = self.pool.submit(_fetch_and_judge, slot.url, self.fetch, self.judge)
        slot.future.add_done_callback(lambda _future: self.ended.put(slot))

    def settle(self, slot: _Slot) -> None:
        """A try of ``slot`` ended: make its outcome final, or park it for another try."""
        self.running -= 1
        future, slot.future = slot.future, None
        if future is None or future.cancelled():
            return
        done = future.result()  # _fetch_and_judge never raises
        fetched = done.outcome
        slot.ms += fetched.ms
        slot.requests += fetched.attempts
        if fetched.retryable and slot.tries <= self.retry.retries:
            after = fetched.retry_after
            if after is None or after <= self.retry.retry_after_max:
                # Jitter keeps a fleet's retries from arriving together: timing only.
                jitter = random.uniform(1.0, 1.5)
                wait = retry_policy.retry_wait(slot.tries - 1, self.retry.backoff, after, jitter)
                heapq.heappush(self.parked, (time.monotonic() + wait, next(self.tie), slot))
                slot.pushed_back = True
                return
            done.error = f"{done.error} (Retry-After {after:g} s: gave up)"
        slot.final = done
        slot.good = (
            fetched.outcome == Outcome.OK
            and done.verdict is not None
            and done.verdict.outcome == Outcome.OK
            and not {done.md5, done.sha256} & self.banned
        )
        self.hits.add(slot.good)
        if self.answered is not None:
            self.answered(_attempt(slot, done, self.banned, judged=False))

    def start_due_retries(self) -> None:
        """Parked retries that are due go first: they are earlier in sample order."""
        now = time.monotonic()
        while self.parked and self.parked[0][0] <= now and self.running < self.max_in_flight:
            self.start(heapq.heappop(self.parked)[2])

    def fill_window(self) -> None:
        """Fetch ahead while the window's expected yield is short of the need (``HitRate``),
        within ``max_in_flight`` running (parked ones hold no thread) and twice that pulled."""
        remaining = self.needed - len(self.result.kept)
        # A URL whose host asked for a retry is counted as good: the host is up and answering,
        # so its image most likely is there too (if not, the look-ahead resumes once it is final).
        good_waiting = sum(slot.good or (slot.pushed_back and slot.final is None) for slot in self.window)
        unanswered = sum(
            not slot.duplicate and not slot.pushed_back and slot.final is None for slot in self.window
        )
        while (
            not self.source_done
            and len(self.window) < 2 * self.max_in_flight
            and self.running < self.max_in_flight
            and self.hits.wants_more(remaining, good_waiting, unanswered)
        ):
            try:
                image_id, url = next(self.source)
            except StopIteration:
                self.source_done = True
                return
            slot = _Slot(image_id, url)
            self.window.append(slot)
            if url in self.seen_urls:
                slot.duplicate = True
            else:
                self.seen_urls.add(url)
                self.start(slot)
                unanswered += 1

    def next_is_final(self) -> bool:
        return self.window[0].duplicate or self.window[0].final is not None

    def decide_what_is_final(self) -> None:
        """Decide, in sample order, every candidate whose outcome is final."""
        result = self.result
        while self.window and len(result.kept) < self.needed and self.next_is_final():
            slot = self.window.popleft()
            evicted = _decide(slot, result, self.banned, self.valid_bodies)
            if not slot.duplicate:
                self.hits.decided(slot.good)
            result.tried = len(result.judged)
            self.report(result.judged[-1])
            if evicted is not None:
                self.report(evicted)
            self.progress(
                len(result.kept) / self.needed * 100,
                f"kept {len(result.kept)}/{self.needed} after {result.tried} URLs",
            )

    def wait_for_a_try(self) -> None:
        """Wait for a try to end, or for the next parked retry to fall due.

        (With every thread busy, a due retry waits for a try to end: no busy loop.)"""
        due = self.parked and self.running < self.max_in_flight
        timeout = max(0.0, self.parked[0][0] - time.monotonic()) if due else None
        try:
            self.settle(self.ended.get(timeout=timeout))
        except queue.Empty:
            return
        self.settle_what_ended()

    def settle_what_ended(self) -> None:
        while True:
            try:
                self.settle(self.ended.get_nowait())
            except queue.Empty:
                return

    def finish(self) -> None:
        """Whatever finished ahead of the decision point was speculative; the rest is
        cancelled or, if already running, abandoned (the fetcher's deadline ends it)."""
        self.settle_what_ended()
        for slot in self.window:
            if slot.final is not None:
                self.result.speculative.append(_attempt(slot, slot.final, self.banned, judged=False))
            elif slot.future is not None:
                slot.future.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)


def _decide(
    slot: _Slot,
    result: RoundResult,
    banned: set[str],
    valid_bodies: dict[str, tuple[Attempt, KeptImage | None]],
) -> Attempt | None:
    """Judge the next candidate in sample order; return an evicted attempt, if any."""
    if slot.duplicate:
        result.judged.append(
            Attempt(slot.image_id, slot.url, outcome=Outcome.DUPLICATE_URL, error="URL seen earlier")
        )
        return None
    done = slot.final
    assert done is not None  # only final candidates are decided
    attempt = _attempt(slot, done, banned, judged=True)
    result.judged.append(attempt)
    if attempt.outcome != Outcome.OK:
        return None
    earlier = valid_bodies.get(attempt.sha256)
    if earlier is not None:
        first, kept = earlier
        attempt.outcome = Outcome.DUPLICATE
        attempt.error = f"same bytes as {first.image_id}"
        if kept is not None:
            # Two URLs, one body: a placeholder, not a photo.  Evict and look further.
            result.kept.remove(kept)
            first.outcome = Outcome.EVICTED_DUPLICATE
            first.error = f"same bytes as {attempt.image_id}"
            valid_bodies[attempt.sha256] = (first, None)
            return first
        return None
    verdict = done.verdict
    assert verdict is not None  # outcome OK implies a verdict
    kept = KeptImage(
        image_id=slot.image_id,
        url=slot.url,
        final_url=done.outcome.final_url,
        file="",  # named by the round, which knows the label (sampler.naming.image_filename)
        body=done.outcome.body or b"",
        md5=done.md5,
        sha256=done.sha256,
        bytes=len(done.outcome.body or b""),
        width=verdict.width,
        height=verdict.height,
    )
    result.kept.append(kept)
    valid_bodies[attempt.sha256] = (attempt, kept)
    return None
