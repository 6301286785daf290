"""Answers of 429 (rate limited): when such a URL may be asked again, and what to say.

A 429 is not a verdict on the URL but on the moment.  The retry policy retries it within
a round while the server's Retry-After is short (``retry_after_max``); past that the round
records it and moves on.  The recorded row says when to ask again (the Retry-After, or
``DEFAULT_WAIT`` when the server gave none): ``... ask again after 2026-12-06T13:05:00Z``
in its ``error`` column.  Until then a rerun replays the 429; from then on it asks the URL
again, and the category -- decided in sample order, as always -- may keep a different,
earlier image.  The status message and FetchFives' closing lines say which hosts rate
limited how many URLs, with their Retry-After.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from sampler.naming import host_of
from sampler.outcomes import http_status

if TYPE_CHECKING:  # the fetch stack (requests) is imported where a fetch runs, not by complete()
    from sampler.fetch.http_fetch import FetchOutcome

RATE_LIMITED = http_status(429)
DEFAULT_WAIT = 900.0  # seconds before asking again a URL whose 429 came without Retry-After
# The longest wait recorded: a Retry-After of 1e308 or "inf" (garbage a server may send) is
# past any date a timestamp can name, and would turn the 429 into a crash of the fetch.
MAX_WAIT = 30 * 24 * 3600.0
_ASK_AGAIN = re.compile(r"ask again after (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")
_RETRY_AFTER = re.compile(r"Retry-After (\d+(?:\.\d+)?(?:e[+-]?\d+)?) s")  # as :g writes it: 2.592e+06


def _utc(moment: float) -> str:
    return datetime.datetime.fromtimestamp(math.ceil(moment), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def noting_rate_limits(
    fetch: Callable[[str], FetchOutcome],
    default_wait: float = DEFAULT_WAIT,
    clock: Callable[[], float] = time.time,
) -> Callable[[str], FetchOutcome]:
    """``fetch`` whose 429 outcomes say in ``error`` when the URL may be asked again."""

    def fetch_noting(url: str) -> FetchOutcome:
        outcome = fetch(url)
        if outcome.status != 429 or outcome.outcome != RATE_LIMITED:
            return outcome
        wait = min(outcome.retry_after if outcome.retry_after is not None else default_wait, MAX_WAIT)
        said = (
            f"Retry-After {outcome.retry_after:g} s" if outcome.retry_after is not None else "no Retry-After"
        )
        note = f"rate limited ({said}): ask again after {_utc(clock() + wait)}"
        return dataclasses.replace(outcome, error=f"{outcome.error}; {note}" if outcome.error else note)

    return fetch_noting


def parse_utc(text: str) -> float:
    """Epoch seconds of a ``2026-12-06T13:05:00Z`` moment."""
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()


def ask_again_after(error: str) -> float | None:
    """When a recorded 429 may be asked again (epoch seconds), or None if its row does not say
    (a row written before this was recorded: asked again at once)."""
    found = _ASK_AGAIN.search(error or "")
    if found is None:
        return None
    return parse_utc(found.group(1))


def is_due(row: Mapping[str, str], now: float | None = None) -> bool:
    """Whether an attempt row recording a 429 may be asked again now (False for other rows)."""
    if row.get("outcome") != RATE_LIMITED:
        return False
    when = ask_again_after(row.get("error", ""))
    return when is None or (time.time() if now is None else now) >= when


@dataclasses.dataclass
class HostLimit:
    host: str
    urls: int
    retry_after: float | None  # the longest Retry-After it sent (None: it sent none)
    ask_again_after: float  # the earliest moment one of its URLs may be asked again (epoch)

    def to_json(self) -> dict:
        return {
            "host": self.host,
            "urls": self.urls,
            "retry_after": self.retry_after,
            "ask_again_after": _utc(self.ask_again_after),
            "message": describe([self]),
        }


def host_limits(rows: Iterable[Mapping[str, str]], urls: Iterable[str] | None = None) -> list[HostLimit]:
    """Per host, the 429s among ``rows`` (attempt rows; the last row of a URL counts), only
    for ``urls`` when given (the URLs a result decided on: speculative ones do not matter)."""
    latest: dict[str, Mapping[str, str]] = {}
    for row in rows:
        latest[row["url"]] = row
    wanted = set(urls) if urls is not None else set(latest)
    by_host: dict[str, list[Mapping[str, str]]] = defaultdict(list)
    for url, row in latest.items():
        if url in wanted and row.get("outcome") == RATE_LIMITED:
            by_host[host_of(url)].append(row)
    limits = []
    for host, host_rows in sorted(by_host.items()):
        afters = [float(m.group(1)) for r in host_rows if (m := _RETRY_AFTER.search(r.get("error", "")))]
        whens = [ask_again_after(r.get("error", "")) for r in host_rows]
        limits.append(
            HostLimit(host, len(host_rows), max(afters) if afters else None, min(w or 0.0 for w in whens))
        )
    return limits


def describe(limits: Iterable[HostLimit]) -> str:
    """One line for the status message and the closing lines: who rate limited what."""
    parts = []
    for limit in limits:
        said = f"Retry-After {limit.retry_after:g} s" if limit.retry_after is not None else "no Retry-After"
        parts.append(
            f"{limit.host} answered 429 (rate limited) for {limit.urls} URLs, {said}: a run after "
            f"{_utc(limit.ask_again_after)} asks them again"
        )
    return "; ".join(parts)
