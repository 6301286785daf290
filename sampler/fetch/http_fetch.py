"""One polite, bounded HTTP download: ``Fetcher.fetch(url) -> FetchOutcome``.

What it adds over a bare ``requests.get``, which is how common image downloaders
(img2dataset among them) fetch: no whole-download deadline, redirects followed
silently, no size cap, every error retried alike, no limit per host:

* a whole-download deadline (sampler/deadline.py) for every framing - Content-Length,
  chunked or close-delimited - which also bounds slow *headers*, not only slow bodies;
* a destination policy (sampler/fetch/address_policy.py): no internal address, in any
  spelling or behind any redirect, unless ``allow_private`` says so; userinfo in a
  URL is dropped, never sent as credentials;
* redirects followed by hand, so that a redirect to Flickr's "photo unavailable"
  placeholder is recognised from its Location and never downloaded, and only
  http/https targets are followed;
* a size cap, checked on Content-Length before reading and again while reading;
* each failure classified by ``sampler.fetch.retry_policy`` (one table): retryable
  (429, 503, 408, 504, a reset before the answer), final, or "the host is dead"
  (DNS, refused, a proxy's "origin unreachable" page).  ``retries`` > 0 retries
  in the fetch itself, sleeping; category downloads use ``retries=0`` and park
  retryable URLs instead (``sampler.fetch.sample_order``), so no wait holds a slot;
* at most ``per_host`` requests at a time to one host, across threads.

Every failure becomes an ``outcome`` (``sampler.outcomes``) instead of an exception.
"""

from __future__ import annotations

import email.utils
import http.client
import os
import random
import re
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import urllib3.exceptions

from sampler import USER_AGENT
from sampler.deadline import WATCHED_POOLS, DeadlineExceeded, Guard, WatchedAdapter, end_guard, start_guard
from sampler.fetch import retry_policy
from sampler.fetch.address_policy import POLICY_POOLS, RefusedAddress, refused_host
from sampler.outcomes import Outcome, http_status

DEFAULT_PLACEHOLDER_REDIRECTS = (
    # Dead Flickr photos redirect to s.yimg.com/pw/images/<locale>/photo_unavailable_l.png
    # (earlier l.yimg.com/g/images/photo_unavailable.gif).
    r"^https?://([^/?#]*\.)?yimg\.com(:\d+)?([/?#]|$)",
    r"photo_unavailable",
)

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_REDIRECT = "redirect"  # a hop's own outcome: a redirect to follow, never a fetch's outcome
# No URL holds raw control characters; in the URL list a tab means an extra field glued on.
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_CHUNK = 16 * 1024  # small reads: the deadline is also checked between chunks
# Error pages and redirects up to this size are read to their end, so that their
# keep-alive connection goes back to the pool instead of being closed.
_DRAIN_MAX = 64 * 1024
_POOL_MAXSIZE = 64  # idle keep-alive connections kept per host (or per proxy)


class FetchMachineryError(OSError):
    """The fetching machinery failed, not the URL (e.g. a request slot file that cannot be
    locked): raised through ``fetch_category``, never recorded as the URL's outcome."""


@dataclass(frozen=True)
class FetchSettings:
    connect_timeout: float = 5.0
    read_timeout: float = 10.0  # per socket read
    deadline: float = 30.0  # whole fetch: all hops, retries and backoff sleeps
    max_bytes: int = 20_000_000
    max_redirects: int = 5
    max_url_chars: int = 8192  # longer is a corrupt line (servers refuse such requests anyway)
    retries: int = 2  # extra tries after the first, for what retry_policy calls retryable
    backoff: float = 0.5  # first retry waits backoff * [1, 1.5), doubling each time
    retry_after_max: float = 10.0  # a longer Retry-After means "give up", not "wait"
    per_host: int = 4
    user_agent: str = USER_AGENT
    placeholder_redirects: tuple[str, ...] = DEFAULT_PLACEHOLDER_REDIRECTS
    # True only where loopback/private hosts are meant to be fetched (tests, a LAN mirror).
    allow_private: bool = False


@dataclass
class FetchOutcome:
    url: str
    final_url: str  # last URL requested (or the placeholder/bad redirect target)
    status: int | None  # last HTTP status seen, None when no response came
    outcome: str  # an Outcome, or http_status(<status>)
    body: bytes | None  # the exact bytes served; only for outcome ok
    bytes: int  # body bytes received (also for partial/failed downloads)
    ms: int
    error: str
    redirects: int
    attempts: int  # HTTP requests sent, retries and redirect hops included
    retryable: bool = False  # retry_policy says "try again" (and no retry was left here)
    retry_after: float | None = None  # seconds the server asked to wait, if it did
    dead_host: bool = False  # retry_policy says the host is dead (DNS, refused, proxy's page)
    # A replayed outcome's body digests (md5, sha256), recorded when it was judged not good
    # (HTML, a banner...): a round replayed after a crash writes what the first try wrote.
    digests: tuple[str, str] = ("", "")


# --- one hop -------------------------------------------------------------------------


@dataclass
class _Hop:
    outcome: str
    status: int | None = None
    body: bytes | None = None
    bytes: int = 0
    error: str = ""
    location: str | None = None  # absolute redirect target
    retryable: bool = False
    retry_after: float | None = None
    dead_host: bool = False


@dataclass
class _Trip:
    """One fetch in progress: what its ``FetchOutcome`` will say."""

    url: str
    current: str  # the URL requested now (after redirects, without userinfo)
    started: float = field(default_factory=time.monotonic)
    redirects: int = 0
    attempts: int = 0
    last_status: int | None = None

    def outcome(self, hop: _Hop, final_url: str | None = None) -> FetchOutcome:
        return FetchOutcome(
            url=self.url,
            final_url=final_url if final_url is not None else self.current,
            status=hop.status if hop.status is not None else self.last_status,
            outcome=hop.outcome,
            body=hop.body if hop.outcome == Outcome.OK else None,
            bytes=hop.bytes,
            ms=int((time.monotonic() - self.started) * 1000),
            error=hop.error,
            redirects=self.redirects,
            attempts=self.attempts,
            retryable=hop.retryable,
            retry_after=hop.retry_after,
            dead_host=hop.dead_host,
        )


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and everything it wraps (args, .reason, causes)."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop()
        if any(e is s for s in seen):
            continue
        seen.append(e)
        todo.extend(a for a in e.args if isinstance(a, BaseException))
        for attr in ("reason", "__cause__", "__context__"):
            inner = getattr(e, attr, None)
            if isinstance(inner, BaseException):
                todo.append(inner)
    return seen


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."


def _classify_connection_error(exc: BaseException) -> _Hop:
    chain = _chain(exc)

    def has(*types: type[BaseException]) -> bool:
        return any(isinstance(e, types) for e in chain)

    def hop(outcome: str, what: str, error: str) -> _Hop:
        verdict = retry_policy.for_connection(what)
        return _Hop(outcome, error=error, retryable=verdict.retry, dead_host=verdict.dead_host)

    if has(urllib3.exceptions.NameResolutionError, socket.gaierror):
        return hop(Outcome.DEAD_HOST, retry_policy.DNS_FAILURE, f"DNS: {_describe(exc)}")
    if has(ConnectionRefusedError):
        return hop(Outcome.DEAD_HOST, retry_policy.REFUSED, f"refused: {_describe(exc)}")
    if has(ConnectionResetError, ConnectionAbortedError, BrokenPipeError, http.client.RemoteDisconnected):
        return hop(Outcome.DEAD_HOST, retry_policy.RESET_BEFORE_ANSWER, f"reset: {_describe(exc)}")
    if has(TimeoutError, socket.timeout, urllib3.exceptions.TimeoutError):
        return hop(Outcome.TIMEOUT, retry_policy.TIMEOUT, _describe(exc))
    return _Hop(Outcome.DEAD_HOST, error=_describe(exc))  # unreachable network and the like: final


def _scheme(url: str) -> str:
    try:
        return urlsplit(url).scheme.lower()
    except ValueError:
        return ""


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _content_length(value: str | None) -> int | None:
    try:
        length = int(value) if value is not None else None
    except ValueError:
        return None
    return length if length is not None and length >= 0 else None


_PROXY_VARIABLES = tuple(
    name for base in ("http_proxy", "https_proxy", "all_proxy", "no_proxy") for name in (base, base.upper())
)
_proxies_seen: dict[tuple[str, str, tuple[str | None, ...]], dict[str, str]] = {}


def environ_proxies(url: str) -> dict[str, str]:
    """The environment's proxies for ``url`` ({} when NO_PROXY exempts its host).

    What requests' ``trust_env`` computes on every request (reading the whole
    environment each time), remembered per scheme, host and proxy variables.
    """
    parts = urlsplit(url)
    key = (parts.scheme.lower(), parts.netloc.lower(), tuple(os.environ.get(v) for v in _PROXY_VARIABLES))
    found = _proxies_seen.get(key)
    if found is None:
        if len(_proxies_seen) >= 10_000:  # a bound for runs over very many hosts
            _proxies_seen.clear()
        found = _proxies_seen[key] = requests.utils.get_environ_proxies(url)
    return found


def _drain(resp: requests.Response) -> None:
    """Read a small announced body to its end: the connection can then be reused.

    Bounded like any read of the fetch (read timeout, the watchdog's deadline); a
    chunked body is left alone, as its Content-Length would mean nothing."""
    length = _content_length(resp.headers.get("content-length"))
    if length is None or length > _DRAIN_MAX or getattr(resp.raw, "chunked", False):
        return
    try:
        resp.raw.read(decode_content=False)  # http.client stops at Content-Length
    except Exception:  # a broken error page only costs its connection
        pass


def _without_userinfo(url: str) -> str:
    """``url`` without ``user:password@``: requests would send it as Basic credentials."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


class _Session(requests.Session):
    def resolve_redirects(self, *args: object, **kwargs: object) -> Iterator[requests.Response]:
        # Redirects are followed by Fetcher.fetch.  requests would still pre-build the next
        # request here (allow_redirects=False fills ``Response.next``), raising on a
        # malformed Location before we could call it a bad redirect.
        return iter(())


class Fetcher:
    """Thread-safe downloader: one ``requests.Session`` per thread (cookies live for one fetch,
    so no thread sees another's), one connection pool for all of them (a keep-alive connection
    to a host is reused by whichever thread asks that host next), shared host limits.

    HTTP_PROXY / HTTPS_PROXY / NO_PROXY are honoured, looked up once per host:
    requests' ``trust_env`` would redo that (and look for ~/.netrc) on every request.
    ``fetch`` never raises for network trouble; it returns a ``FetchOutcome``.
    A fetch takes at most ``deadline`` seconds once its first request starts, plus
    any wait for a per-host slot before that; DNS lookups cannot be interrupted.
    """

    def __init__(self, settings: FetchSettings | None = None) -> None:
        self.settings = settings or FetchSettings()
        self._placeholders = [re.compile(p, re.IGNORECASE) for p in self.settings.placeholder_redirects]
        self._local = threading.local()
        # Weak: a session dies with its thread (closing its sockets) unless close() comes first.
        self._sessions: weakref.WeakSet[requests.Session] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._host_slots: dict[str, threading.BoundedSemaphore] = {}
        self._adapter: WatchedAdapter | None = None  # every thread's session shares its pools

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every thread's pooled connections (the Fetcher stays usable).

        The deadline's watchdog thread needs no closing: it exits after a few idle seconds.
        """
        with self._lock:
            sessions = list(self._sessions)
            adapter = self._adapter
        for session in sessions:
            session.close()
        if adapter is not None:
            adapter.close()  # (the sessions' close did; a Fetcher whose threads died has none left)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = _Session()
            session.trust_env = False  # see environ_proxies; no ~/.netrc credentials for image hosts
            # What trust_env would have taken from the environment for certificates.
            session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
            adapter = self._shared_adapter()
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers.update(
                {
                    "User-Agent": self.settings.user_agent,
                    "Accept": "image/jpeg, image/*;q=0.5, */*;q=0.1",
                    # Ask for the file as stored: nothing to decode, nothing re-encoded.
                    "Accept-Encoding": "identity",
                }
            )
            self._local.session = session
            with self._lock:
                self._sessions.add(session)
        return session

    def _shared_adapter(self) -> WatchedAdapter:
        with self._lock:
            if self._adapter is None:
                self._adapter = WatchedAdapter(
                    pool_connections=64,  # hosts whose pools are kept
                    # Idle connections kept per host -- or per proxy, which every host's requests
                    # then share: as many as a category has requests in flight, so none is dropped.
                    pool_maxsize=max(self.settings.per_host, _POOL_MAXSIZE),
                    max_retries=0,
                    pools=WATCHED_POOLS if self.settings.allow_private else POLICY_POOLS,
                )
            return self._adapter

    def _slot(self, url: str) -> threading.BoundedSemaphore:
        host = urlsplit(url).hostname or ""
        with self._lock:
            slot = self._host_slots.get(host)
            if slot is None:
                slot = self._host_slots[host] = threading.BoundedSemaphore(max(1, self.settings.per_host))
            return slot

    def _refusal(self, host: str) -> str | None:
        """Why ``host`` must not be requested (a literal check; connections check the rest)."""
        return None if self.settings.allow_private else refused_host(host)

    def _is_placeholder(self, url: str) -> bool:
        return any(p.search(url) for p in self._placeholders)

    def _check_url(self, url: str) -> _Hop | None:
        """Why ``url`` is never requested, as a final hop, or None when it may be."""
        try:
            parts = urlsplit(url)
            scheme, host = parts.scheme.lower(), parts.hostname
        except ValueError as exc:
            return _Hop(Outcome.BAD_URL, error=_describe(exc))
        if scheme not in ("http", "https"):
            return _Hop(Outcome.BAD_SCHEME, error=f"scheme {scheme or '(none)'!r} not fetched")
        if not host:
            return _Hop(Outcome.BAD_URL, error="no host")
        if len(url) > self.settings.max_url_chars:
            return _Hop(
                Outcome.BAD_URL, error=f"{len(url):,} characters, over {self.settings.max_url_chars:,}"
            )
        if _CONTROL_CHARS.search(url):
            return _Hop(Outcome.BAD_URL, error=f"control character in the URL: {url[:200]!r}")
        refusal = self._refusal(host)
        if refusal is not None:
            return _Hop(Outcome.REFUSED_ADDRESS, error=refusal)
        return None

    def _past_deadline(self, status: int | None = None, received: int = 0) -> _Hop:
        error = f"deadline {self.settings.deadline:g} s exceeded"
        return _Hop(Outcome.TIMEOUT, status=status, bytes=received, error=error)

    def fetch(self, url: str) -> FetchOutcome:
        """Download ``url``: its body if it is served whole, else why not.  Never raises."""
        trip = _Trip(url, current=url)
        refused = self._check_url(url)
        if refused is not None:
            return trip.outcome(refused)
        trip.current = _without_userinfo(url)
        session = self._session()
        session.cookies.clear()  # cookies live for one fetch: results must not depend on the thread
        guard: Guard | None = None
        try:
            # The deadline starts once the first request may go: waiting for our own
            # per-host slot is local queueing, not the server's slowness.
            slot = self._slot(trip.current)
            slot.acquire()
            guard = start_guard(self.settings.deadline)
            return self._follow(trip, session, guard, slot)
        except Exception as exc:  # a bug or an exotic failure must not kill the worker
            return trip.outcome(_Hop(Outcome.ERROR, error=_describe(exc)))
        finally:
            if guard is not None:
                end_guard(guard)

    def _follow(
        self, trip: _Trip, session: requests.Session, guard: Guard, slot: threading.BoundedSemaphore | None
    ) -> FetchOutcome:
        """Request ``trip.current``, following redirects and retrying what may be retried.

        ``slot``: the current host's slot, already held for the first request."""
        retry_no = 0
        while True:
            if slot is None:
                slot = self._slot(trip.current)
                if guard.remaining() <= 0 or not slot.acquire(timeout=max(0.0, guard.remaining())):
                    return trip.outcome(self._past_deadline())
            try:
                trip.attempts += 1
                hop = self._request(session, trip.current, guard)
            finally:
                slot.release()
                slot = None
            if hop.status is not None:
                trip.last_status = hop.status
            if hop.location is not None:
                final, target = self._redirect(hop.location, trip.redirects)
                if final is not None:
                    return trip.outcome(final, target)
                assert target is not None  # not final: where to go next
                trip.redirects += 1
                trip.current, retry_no = target, 0
                continue
            wait = self._retry_wait(hop, retry_no, guard)
            if wait is None:
                return trip.outcome(hop)
            time.sleep(wait)
            retry_no += 1

    def _redirect(self, target: str, redirects: int) -> tuple[_Hop | None, str | None]:
        """``(None, next URL)`` for a redirect to follow; ``(final hop, its final_url or None
        for the current URL)`` for one that ends the fetch."""
        if _scheme(target) not in ("http", "https"):
            return _Hop(Outcome.BAD_REDIRECT, error=f"redirect to {target[:200]}"), target
        if self._is_placeholder(target):
            return _Hop(Outcome.PLACEHOLDER_REDIRECT, error=f"redirect to {target[:200]}"), target
        try:
            refusal = self._refusal(urlsplit(target).hostname or "")
            target = _without_userinfo(target)
        except ValueError as exc:  # "http://[bad/": requests would fail on it anyway
            return _Hop(Outcome.BAD_REDIRECT, error=f"redirect to {target[:200]}: {exc}"), target
        if refusal is not None:
            return _Hop(Outcome.REFUSED_ADDRESS, error=f"redirect: {refusal}"), target
        if redirects >= self.settings.max_redirects:
            return _Hop(
                Outcome.REDIRECT_LOOP, error=f"more than {self.settings.max_redirects} redirects"
            ), None
        return None, target

    def _retry_wait(self, hop: _Hop, retry_no: int, guard: Guard) -> float | None:
        """Seconds to wait before trying ``hop``'s URL again, or None: ``hop`` is final.

        A hop still ``retryable`` when final had no retry left here: category downloads
        (``retries=0``) park it and try again later (``sampler.fetch.sample_order``)."""
        settings = self.settings
        if not hop.retryable:
            return None
        if hop.retry_after is not None and hop.retry_after > settings.retry_after_max:
            hop.error += f" (Retry-After {hop.retry_after:g} s: gave up)"
            hop.retryable = False
            return None
        if retry_no >= settings.retries:
            return None
        wait = retry_policy.retry_wait(retry_no, settings.backoff, hop.retry_after, random.uniform(1.0, 1.5))
        if wait >= guard.remaining():
            hop.error += " (no time left to retry)"
            return None
        return wait

    def _request(self, session: requests.Session, url: str, guard: Guard) -> _Hop:
        settings = self.settings
        try:
            resp = session.get(
                url,
                stream=True,
                allow_redirects=False,
                timeout=(settings.connect_timeout, settings.read_timeout),
                proxies=environ_proxies(url),
            )
        except DeadlineExceeded:
            return self._past_deadline()
        except RefusedAddress as exc:
            return _Hop(Outcome.REFUSED_ADDRESS, error=str(exc))
        except requests.exceptions.RequestException as exc:
            return self._request_failure(exc, guard)
        except (ValueError, UnicodeError, urllib3.exceptions.LocationParseError) as exc:
            return _Hop(Outcome.BAD_URL, error=_describe(exc))
        try:
            return self._answer(session, resp, guard)
        finally:
            resp.close()  # closes the connection unless the body was read to its end

    def _request_failure(self, exc: requests.exceptions.RequestException, guard: Guard) -> _Hop:
        """The hop of a request that got no answer."""
        if guard.expired:
            return self._past_deadline()
        if isinstance(exc, requests.exceptions.Timeout):
            return _Hop(Outcome.TIMEOUT, error=_describe(exc))  # not retried: a hung host rarely recovers
        if isinstance(exc, requests.exceptions.SSLError):
            return _Hop(Outcome.SSL_ERROR, error=_describe(exc))  # retry_policy: TLS failure, final
        if isinstance(exc, requests.exceptions.ProxyError):
            return _Hop(Outcome.PROXY_ERROR, error=_describe(exc))
        if isinstance(exc, requests.exceptions.ConnectionError):
            return _classify_connection_error(exc)
        return _Hop(Outcome.BAD_URL, error=_describe(exc))  # InvalidURL, MissingSchema, InvalidHeader...

    def _answer(self, session: requests.Session, resp: requests.Response, guard: Guard) -> _Hop:
        """The hop of a request that got an answer: a redirect, a failure or the body."""
        settings = self.settings
        status = resp.status_code
        if status != 200:
            _drain(resp)
        if status in _REDIRECT_STATUSES and resp.headers.get("location"):
            location = (session.get_redirect_target(resp) or resp.headers["location"]).strip()
            try:
                target = urljoin(resp.url, location)
            except ValueError:
                target = location  # unparsable: refused as a bad redirect by the caller
            return _Hop(_REDIRECT, status=status, location=target)
        if status != 200:
            unreachable = retry_policy.proxy_says_origin_unreachable(status, resp.headers)
            if unreachable is not None:
                return _Hop(Outcome.DEAD_HOST, status=status, error=f"proxy: {unreachable}", dead_host=True)
            # Other 2xx (204, 206...) are failures too: we want the whole file.
            verdict = retry_policy.for_status(status)
            return _Hop(
                http_status(status),
                status=status,
                error=f"HTTP {status} {resp.reason or ''}".strip(),
                retryable=verdict.retry,
                retry_after=_retry_after(resp.headers.get("retry-after")) if verdict.retry else None,
            )
        length = _content_length(resp.headers.get("content-length"))
        if length is not None and length > settings.max_bytes:
            return _Hop(
                Outcome.TOO_LARGE, status=status, error=f"Content-Length {length} > {settings.max_bytes}"
            )
        return self._read_body(resp, length, guard)

    def _read_body(self, resp: requests.Response, length: int | None, guard: Guard) -> _Hop:
        settings = self.settings
        chunks: list[bytes] = []
        total = 0
        try:
            for chunk in resp.raw.stream(_CHUNK, decode_content=True):
                total += len(chunk)
                if total > settings.max_bytes:
                    return _Hop(
                        Outcome.TOO_LARGE,
                        status=200,
                        bytes=total,
                        error=f"body over {settings.max_bytes} bytes",
                    )
                chunks.append(chunk)
                if guard.expired or guard.remaining() <= 0:
                    return self._past_deadline(200, total)
        except Exception as exc:
            return self._broken_body(exc, total, guard)
        if guard.expired:
            # The watchdog's shutdown looks like EOF to a close-delimited body.
            return self._past_deadline(200, total)
        wire = resp.raw.tell()
        if length is not None and wire < length:
            return _Hop(
                Outcome.TRUNCATED_DOWNLOAD, status=200, bytes=total, error=f"got {wire} of {length} bytes"
            )
        return _Hop(Outcome.OK, status=200, body=b"".join(chunks), bytes=total)

    def _broken_body(self, exc: Exception, total: int, guard: Guard) -> _Hop:
        """The hop of a body whose reading raised after ``total`` bytes."""
        chain = _chain(exc)
        # Bytes that arrived with the failure are not counted in ``total``: count them anyway.
        partial = [n for n in (getattr(e, "partial", None) for e in chain) if isinstance(n, int)]
        total = max([total, *partial])
        if guard.expired:
            return self._past_deadline(200, total)
        if any(isinstance(e, urllib3.exceptions.ReadTimeoutError | TimeoutError) for e in chain):
            return _Hop(Outcome.TIMEOUT, status=200, bytes=total, error=_describe(exc))
        if any(isinstance(e, urllib3.exceptions.DecodeError) for e in chain):
            return _Hop(Outcome.BAD_ENCODING, status=200, bytes=total, error=_describe(exc))
        # IncompleteRead (shorter than Content-Length), reset or broken chunking mid-body.
        return _Hop(Outcome.TRUNCATED_DOWNLOAD, status=200, bytes=total, error=_describe(exc))
