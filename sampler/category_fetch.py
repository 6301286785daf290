"""Find the first ``needed`` working JPEGs of one category, deterministically.

Candidates are fetched a window at a time on a thread pool but *decided in
sample order*: candidate i is kept only once every candidate before it has been
judged.  The kept images are therefore exactly what a sequential run would keep,
whatever the timing or ``max_in_flight``; fetches that turn out not to be needed
are reported as speculative.  An unordered "first five to finish" would make the
result depend on which server answered faster.

Same bytes behind two different URLs of the category are a placeholder (a host's
"image not found" banner): the later one is rejected as ``duplicate`` and the
earlier one, if kept, is evicted (its outcome becomes ``placeholder``) and
replaced by the next valid candidate.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from sampler.http_fetch import FetchOutcome
from sampler.image_check import ImageVerdict
from sampler.progress import ProgressCallback, no_progress

# Decision outcomes on top of the fetch and image outcomes (http_fetch, image_check).
OK = "ok"
BANNED = "banned"  # md5 or sha256 on the caller's placeholder list
DUPLICATE = "duplicate"  # same bytes as an earlier candidate of this category
PLACEHOLDER = "placeholder"  # kept, then evicted: a later URL served the same bytes
DUPLICATE_URL = "duplicate_url"  # URL already among this category's candidates: not fetched
ERROR = "error"  # fetch or judge raised (a bug): recorded, not fatal


@dataclass
class Attempt:
    image_id: str
    url: str
    final_url: str
    status: int | None
    outcome: str
    bytes: int
    ms: int
    md5: str
    sha256: str
    error: str
    judged: bool  # True: part of the deterministic sample-order prefix; False: speculative


@dataclass
class Kept:
    image_id: str
    url: str
    final_url: str
    body: bytes
    md5: str
    sha256: str
    bytes: int
    width: int
    height: int


@dataclass
class CategoryResult:
    kept: list[Kept] = field(default_factory=list)  # in sample order
    judged: list[Attempt] = field(default_factory=list)  # every candidate decided, in sample order
    speculative: list[Attempt] = field(default_factory=list)  # fetched, finished, never needed
    exhausted: bool = False  # the candidates ran out before ``needed`` were kept
    tried: int = 0  # len(judged): candidates decided, duplicate URLs included


@dataclass
class _Fetched:
    outcome: FetchOutcome
    verdict: ImageVerdict | None
    md5: str
    sha256: str
    error: str


@dataclass
class _Slot:
    image_id: str
    url: str
    future: Future[_Fetched] | None  # None: duplicate URL, never fetched


def _fetch_and_judge(
    url: str, fetch: Callable[[str], FetchOutcome], judge: Callable[[bytes], ImageVerdict]
) -> _Fetched:
    started = time.monotonic()
    try:
        fetched = fetch(url)
    except Exception as exc:  # fetch is meant to return failures, not raise them
        ms = int((time.monotonic() - started) * 1000)
        fetched = FetchOutcome(url, url, None, ERROR, None, 0, ms, f"fetch raised {exc!r}"[:300], 0, 0)
    if fetched.outcome != OK:
        return _Fetched(fetched, None, "", "", fetched.error)
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
    if fetched.outcome != OK:
        outcome = fetched.outcome
    elif verdict is None:
        outcome = ERROR
    elif verdict.outcome != OK:
        outcome = verdict.outcome
    elif done.md5 in banned or done.sha256 in banned:
        outcome = BANNED
    else:
        outcome = OK  # for a judged attempt, _decide may still turn this into "duplicate"
    return Attempt(
        image_id=slot.image_id,
        url=slot.url,
        final_url=fetched.final_url,
        status=fetched.status,
        outcome=outcome,
        bytes=fetched.bytes,
        ms=fetched.ms,
        md5=done.md5,
        sha256=done.sha256,
        error=done.error,
        judged=judged,
    )


def fetch_category(
    candidates: Iterable[tuple[str, str]],
    needed: int,
    *,
    fetch: Callable[[str], FetchOutcome],
    judge: Callable[[bytes], ImageVerdict],
    banned: set[str],
    max_in_flight: int = 16,
    progress: ProgressCallback = no_progress,
    on_attempt: Callable[[Attempt], None] | None = None,
) -> CategoryResult:
    """Keep the first ``needed`` valid candidates in sample order.

    ``candidates`` yields (image_id, url) lazily; at most ``max_in_flight``
    undecided candidates are pulled ahead of the decision point.  Valid means:
    fetch outcome "ok", judge outcome "ok", neither digest in ``banned`` and
    bytes not seen behind another URL of this category.

    ``on_attempt`` is called on the calling thread, never after return: once per
    judged attempt in sample order as it is decided, then once per speculative
    attempt.  The one exception is an eviction: the earlier kept attempt is
    reported a second time, now with outcome "placeholder".  The returned
    ``CategoryResult`` is the authoritative record.

    Bounded whenever ``fetch`` is: stragglers still running at the end are
    abandoned (not awaited) and their results dropped.
    """
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
    banned = {digest.lower() for digest in banned}
    result = CategoryResult()
    if needed <= 0:
        progress(100.0, f"kept 0/{needed} after 0 URLs")
        return result

    report = on_attempt or (lambda attempt: None)
    source = iter(candidates)
    source_done = False
    window: deque[_Slot] = deque()  # pulled, not yet decided, in sample order
    seen_urls: set[str] = set()
    # sha256 -> (attempt, kept entry or None once evicted) of every valid body so far
    valid_bodies: dict[str, tuple[Attempt, Kept | None]] = {}
    pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="fetch-category")
    try:
        while len(result.kept) < needed:
            while not source_done and len(window) < max_in_flight:
                try:
                    image_id, url = next(source)
                except StopIteration:
                    source_done = True
                    break
                if url in seen_urls:
                    window.append(_Slot(image_id, url, None))
                else:
                    seen_urls.add(url)
                    window.append(_Slot(image_id, url, pool.submit(_fetch_and_judge, url, fetch, judge)))
            if not window:
                result.exhausted = True
                break
            slot = window.popleft()
            evicted = _decide(slot, result, banned, valid_bodies)
            result.tried = len(result.judged)
            report(result.judged[-1])
            if evicted is not None:
                report(evicted)
            progress(
                len(result.kept) / needed * 100,
                f"kept {len(result.kept)}/{needed} after {result.tried} URLs",
            )
    finally:
        # Whatever finished ahead of the decision point was speculative; the rest is
        # cancelled or, if already running, abandoned (the fetcher's deadline ends it).
        for slot in window:
            if slot.future is None:
                continue
            if slot.future.done() and not slot.future.cancelled():
                result.speculative.append(_attempt(slot, slot.future.result(), banned, judged=False))
            else:
                slot.future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
    for attempt in result.speculative:
        report(attempt)
    return result


def _decide(
    slot: _Slot,
    result: CategoryResult,
    banned: set[str],
    valid_bodies: dict[str, tuple[Attempt, Kept | None]],
) -> Attempt | None:
    """Judge the next candidate in sample order; return an evicted attempt, if any."""
    if slot.future is None:
        result.judged.append(
            Attempt(slot.image_id, slot.url, "", None, DUPLICATE_URL, 0, 0, "", "", "URL seen earlier", True)
        )
        return None
    done = slot.future.result()  # blocks only on this candidate; the others keep fetching
    attempt = _attempt(slot, done, banned, judged=True)
    result.judged.append(attempt)
    if attempt.outcome != OK:
        return None
    earlier = valid_bodies.get(attempt.sha256)
    if earlier is not None:
        first, kept = earlier
        attempt.outcome = DUPLICATE
        attempt.error = f"same bytes as {first.image_id}"
        if kept is not None:
            # Two URLs, one body: a placeholder, not a photo.  Evict and look further.
            result.kept.remove(kept)
            first.outcome = PLACEHOLDER
            first.error = f"same bytes as {attempt.image_id}"
            valid_bodies[attempt.sha256] = (first, None)
            return first
        return None
    verdict = done.verdict
    assert verdict is not None  # outcome OK implies a verdict
    kept = Kept(
        image_id=slot.image_id,
        url=slot.url,
        final_url=done.outcome.final_url,
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
