"""What a failed request means: try again later, give up on the URL, or give up on its host.

The whole policy is the table ``RULES`` below; ``docs/faults.md`` shows the same
table (``policy_markdown()`` writes it, and a test checks that the two agree).

On today's web most of a 2011 URL list is dead, and a dead link must cost one
request and no waiting: only answers that *say* "try again" are retried (429,
503, 408, 504, a reset before any byte of an answer).  A 500/502 from an image
host in 2026 is a broken server, not a busy one.  A host that does not resolve,
refuses connections, or that a proxy reports unreachable is *dead for the run*
(``sampler.fetch.dead_hosts``): later URLs on it are settled without a request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# What the request met, as classified by sampler.fetch.http_fetch.
DNS_FAILURE = "DNS failure"
REFUSED = "connection refused"
RESET_BEFORE_ANSWER = "reset or closed before the first byte of an answer"
TLS_FAILURE = "TLS failure"
TIMEOUT = "timeout (connect, read or whole-download deadline)"
PROXY_ORIGIN_UNREACHABLE = "proxy's own error: origin unreachable"


@dataclass(frozen=True)
class Rule:
    what: str  # an HTTP status (e.g. "503"), a status group, or a connection-level failure
    retry: bool  # parked and tried again (at most ``retries`` times), never holding a slot
    dead_host: bool  # the host is remembered as dead for the run
    why: str


RULES: tuple[Rule, ...] = (
    Rule("429", True, False, "rate limited: wait Retry-After (up to retry_after_max), else back off"),
    Rule("503", True, False, "overloaded: wait Retry-After (up to retry_after_max), else back off"),
    Rule("408", True, False, "the server timed the request out: back off"),
    Rule("504", True, False, "a gateway timed out: back off"),
    Rule(RESET_BEFORE_ANSWER, True, False, "a stale keep-alive connection or a busy server: back off"),
    Rule("500, 501, 502, 505", False, False, "a broken server, not a busy one: final at once"),
    Rule("other 5xx", False, False, "final at once"),
    Rule("other 4xx (403, 404, 410...)", False, False, "the image is gone: final at once"),
    Rule(TIMEOUT, False, False, "a hung host rarely recovers; the deadline already bounded it"),
    Rule(TLS_FAILURE, False, False, "a certificate or handshake problem does not fix itself"),
    Rule(DNS_FAILURE, False, True, "the name is gone: every URL on the host fails alike"),
    Rule(REFUSED, False, True, "nothing listens: every URL on the host fails alike"),
    Rule(
        PROXY_ORIGIN_UNREACHABLE,
        False,
        True,
        "the proxy says it could not resolve or reach the origin (its own 502/503/504 page with "
        "X-Squid-Error ERR_DNS_FAIL, ERR_CONNECT_FAIL... or Proxy-Status error=dns_error, "
        "connection_refused...): a dead host, not a transient error",
    ),
)

RETRY_STATUSES = frozenset({429, 503, 408, 504})
_BY_WHAT = {rule.what: rule for rule in RULES}

# Squid's error pages that mean "the origin could not be resolved or reached"
# (X-Squid-Error: ERR_DNS_FAIL 0, ERR_CONNECT_FAIL 111...).
_SQUID_DEAD = re.compile(r"^\s*(ERR_DNS_FAIL|ERR_CONNECT_FAIL|ERR_CANNOT_FORWARD)\b", re.IGNORECASE)
# RFC 9209 Proxy-Status error types with the same meaning.
_PROXY_STATUS_DEAD = frozenset(
    {
        "dns_error",
        "dns_timeout",
        "destination_not_found",
        "destination_unavailable",
        "destination_ip_unroutable",
        "destination_ip_prohibited",
        "connection_refused",
    }
)
_PROXY_STATUS_ERROR = re.compile(r"(?:^|;)\s*error\s*=\s*\"?([a-z_]+)", re.IGNORECASE)


@dataclass(frozen=True)
class Verdict:
    retry: bool
    dead_host: bool
    rule: str  # Rule.what


def _verdict(what: str) -> Verdict:
    rule = _BY_WHAT[what]
    return Verdict(rule.retry, rule.dead_host, rule.what)


def for_status(status: int) -> Verdict:
    """What an HTTP status (other than 200 and redirects) from the server means."""
    if status in RETRY_STATUSES:
        return _verdict(str(status))
    if status in (500, 501, 502, 505):
        return _verdict("500, 501, 502, 505")
    if status >= 500:
        return _verdict("other 5xx")
    return _verdict("other 4xx (403, 404, 410...)")


def for_connection(what: str) -> Verdict:
    """What a connection-level failure (one of the module's constants) means."""
    return _verdict(what)


def proxy_says_origin_unreachable(status: int, headers: Mapping[str, str]) -> str | None:
    """The proxy's reason when a 502/503/504 is the proxy's own "cannot reach the origin"
    page, else None.  ``headers`` must be case-insensitive (requests' are)."""
    if status not in (502, 503, 504):
        return None
    squid = headers.get("x-squid-error")
    if squid and _SQUID_DEAD.match(squid):
        return f"X-Squid-Error: {squid.strip()}"
    proxy_status = headers.get("proxy-status")
    if proxy_status:
        for error in _PROXY_STATUS_ERROR.findall(proxy_status):
            if error.lower() in _PROXY_STATUS_DEAD:
                return f"Proxy-Status: {proxy_status.strip()[:200]}"
    return None


def retry_wait(retry_no: int, backoff: float, retry_after: float | None, jitter: float) -> float:
    """Seconds before retry ``retry_no`` (0 = first retry): exponential backoff with
    ``jitter`` in [1, 1.5), or the server's Retry-After when that is longer."""
    wait = backoff * (2**retry_no) * jitter
    return max(wait, retry_after) if retry_after is not None else wait


def policy_markdown() -> str:
    """The table as it appears in docs/faults.md."""
    lines = ["| Failure | Retried | Host dead for the run | Why |", "|---|---|---|---|"]
    for rule in RULES:
        what = f"HTTP {rule.what}" if rule.what[0].isdigit() or rule.what.startswith("other") else rule.what
        lines.append(
            f"| {what} | {'yes' if rule.retry else 'no'} | {'yes' if rule.dead_host else 'no'} | {rule.why} |"
        )
    return "\n".join(lines) + "\n"
