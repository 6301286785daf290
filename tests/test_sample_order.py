"""fetch_category: the first `needed` valid images in sample order, whatever the timing."""

from __future__ import annotations

import hashlib
import io
import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from sampler.fetch.http_fetch import Fetcher, FetchOutcome, FetchSettings
from sampler.fetch.image_check import judge_image
from sampler.fetch.results import Attempt, RoundResult
from sampler.fetch.sample_order import fetch_category


def jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    img.putpixel((seed % size[0], (seed // size[0]) % size[1]), (255, seed % 256, 0))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


BANNER = jpeg(9999, (120, 90))  # a host's "image not available" JPEG: valid, but the same everywhere
TRUNCATED = jpeg(1)[:300]
TINY = jpeg(2, (1, 1))


# --- a fake fetch over a table of URLs, with random latency --------------------------


def outcome(url: str, body: bytes | None = None, failure: str = "") -> FetchOutcome:
    if failure:
        return FetchOutcome(
            url, url, 404 if failure == "http_404" else None, failure, None, 0, 1, failure, 0, 1
        )
    assert body is not None
    return FetchOutcome(url, url, 200, "ok", body, len(body), 1, "", 0, 1)


def make_table(n: int, seed: int) -> dict[str, FetchOutcome]:
    """n candidates: a mix of good, dead, broken and banner URLs."""
    rng = random.Random(seed)
    table = {}
    for i in range(n):
        url = f"http://host{i % 7}.example/{i}.jpg"
        kind = rng.choice(
            ["good", "good", "http_404", "dead_host", "timeout", "banner", "trunc", "tiny", "html"]
        )
        if kind == "good":
            table[url] = outcome(url, jpeg(i))
        elif kind == "banner":
            table[url] = outcome(url, BANNER)
        elif kind == "trunc":
            table[url] = outcome(url, TRUNCATED)
        elif kind == "tiny":
            table[url] = outcome(url, TINY)
        elif kind == "html":
            table[url] = outcome(url, b"<html>gone</html>")
        else:
            table[url] = outcome(url, failure=kind)
    return table


class FakeFetch:
    def __init__(
        self, table: dict[str, FetchOutcome], max_delay: float = 0.01, seed: int | None = None
    ) -> None:
        self.table = table
        self.max_delay = max_delay
        self.rng = random.Random(seed)
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.slow: dict[str, float] = {}
        # A URL here is fetched only once its event is set (30 s at most): "still running" without
        # a race against the clock.
        self.held: dict[str, threading.Event] = {}
        self.finished: set[str] = set()

    def __call__(self, url: str) -> FetchOutcome:
        with self.lock:
            self.calls[url] += 1
            delay = self.slow.get(url, self.rng.random() * self.max_delay)
            held = self.held.get(url)
        if held is not None:
            held.wait(30)
        else:
            time.sleep(delay)
        with self.lock:
            self.finished.add(url)
        return self.table[url]


def candidates_of(table: dict[str, FetchOutcome]) -> list[tuple[str, str]]:
    return [(f"n0000000{i % 10}_{i}", url) for i, url in enumerate(table)]


def reference(
    cands: list[tuple[str, str]], table: dict[str, FetchOutcome], needed: int, banned: set[str]
) -> list[str]:
    """Sequential definition of the answer: kept image ids."""
    kept: list[tuple[str, str]] = []  # (image_id, sha256)
    seen: dict[str, bool] = {}  # sha256 -> still kept
    urls: set[str] = set()
    for image_id, url in cands:
        if len(kept) == needed:
            break
        if url in urls:
            continue
        urls.add(url)
        r = table[url]
        if r.outcome != "ok" or judge_image(r.body or b"").outcome != "ok":
            continue
        md5, sha = hashlib.md5(r.body).hexdigest(), hashlib.sha256(r.body).hexdigest()
        if md5 in banned or sha in banned:
            continue
        if sha in seen:
            kept = [k for k in kept if k[1] != sha]
            continue
        seen[sha] = True
        kept.append((image_id, sha))
    return [k[0] for k in kept]


def run(
    cands: object, needed: int, fetch: object, banned: set[str] | None = None, **kw: object
) -> RoundResult:
    return fetch_category(cands, needed, fetch=fetch, judge=judge_image, banned=banned or set(), **kw)  # type: ignore[arg-type]


# --- determinism ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_same_result_whatever_the_concurrency_and_timing(seed: int) -> None:
    table = make_table(60, seed)
    cands = candidates_of(table)
    banned = {hashlib.md5(jpeg(5)).hexdigest()}
    expected = reference(cands, table, 5, banned)
    results = [
        run(cands, 5, FakeFetch(table, seed=seed * 10 + w), banned, max_in_flight=w) for w in (1, 3, 16)
    ]
    for result in results:
        assert [k.image_id for k in result.kept] == expected
        assert [(a.image_id, a.outcome) for a in result.judged] == [
            (a.image_id, a.outcome) for a in results[0].judged
        ]
        assert all(a.judged for a in result.judged) and not any(a.judged for a in result.speculative)
        assert result.tried == len(result.judged)
    assert len(expected) == 5 or results[0].exhausted


def test_slow_early_candidate_still_decides_first() -> None:
    table = {f"http://h/{i}.jpg": outcome(f"http://h/{i}.jpg", jpeg(i)) for i in range(20)}
    fetch = FakeFetch(table, max_delay=0)
    fetch.slow["http://h/0.jpg"] = 0.3  # finishes long after the 19 others
    result = run(candidates_of(table), 3, fetch, max_in_flight=16)
    assert [k.url for k in result.kept] == ["http://h/0.jpg", "http://h/1.jpg", "http://h/2.jpg"]
    assert [a.url for a in result.judged] == ["http://h/0.jpg", "http://h/1.jpg", "http://h/2.jpg"]
    assert {a.url for a in result.speculative} <= {f"http://h/{i}.jpg" for i in range(3, 20)}
    assert all(a.outcome == "ok" and not a.judged for a in result.speculative)


# --- placeholders and duplicates -----------------------------------------------------


def test_same_bytes_behind_two_urls_evicts_the_earlier_one() -> None:
    urls = [
        "http://a/banner1",
        "http://b/ok1",
        "http://c/banner2",
        "http://d/ok2",
        "http://e/ok3",
        "http://f/banner3",
    ]
    table = {u: outcome(u, BANNER if "banner" in u else jpeg(len(u) + ord(u[7]))) for u in urls}
    cands = [(str(i), u) for i, u in enumerate(urls)]
    for workers in (1, 8):
        seen: list[tuple[str, str]] = []
        result = run(
            cands,
            3,
            FakeFetch(table),
            max_in_flight=workers,
            on_attempt=lambda a, seen=seen: seen.append((a.image_id, a.outcome)),
        )
        assert [k.url for k in result.kept] == ["http://b/ok1", "http://d/ok2", "http://e/ok3"]
        assert [a.outcome for a in result.judged] == ["evicted_duplicate", "ok", "duplicate", "ok", "ok"]
        assert "same bytes" in result.judged[0].error and "same bytes" in result.judged[2].error
        # decided in sample order; the eviction reports the first banner again
        assert seen[:5] == [
            ("0", "ok"), ("1", "ok"), ("2", "duplicate"), ("0", "evicted_duplicate"), ("3", "ok")
        ]  # fmt: skip
        assert result.exhausted is False


def test_third_copy_of_a_placeholder_is_a_duplicate() -> None:
    urls = ["http://a/banner1", "http://b/banner2", "http://c/banner3", "http://d/ok"]
    table = {u: outcome(u, BANNER if "banner" in u else jpeg(7)) for u in urls}
    result = run([(str(i), u) for i, u in enumerate(urls)], 2, FakeFetch(table))
    assert [a.outcome for a in result.judged] == ["evicted_duplicate", "duplicate", "duplicate", "ok"]
    assert [k.url for k in result.kept] == ["http://d/ok"] and result.exhausted


def test_banned_hashes_are_rejected_by_md5_or_sha256() -> None:
    urls = [f"http://h/{i}.jpg" for i in range(5)]
    table = {u: outcome(u, jpeg(i)) for i, u in enumerate(urls)}
    banned = {hashlib.md5(jpeg(0)).hexdigest().upper(), hashlib.sha256(jpeg(2)).hexdigest()}
    result = run([(str(i), u) for i, u in enumerate(urls)], 3, FakeFetch(table), banned)
    assert [a.outcome for a in result.judged] == ["banned", "ok", "banned", "ok", "ok"]
    assert [k.url for k in result.kept] == [urls[1], urls[3], urls[4]]


def test_duplicate_url_is_skipped_without_fetching() -> None:
    table = {
        "http://h/a.jpg": outcome("http://h/a.jpg", jpeg(1)),
        "http://h/b.jpg": outcome("http://h/b.jpg", jpeg(2)),
    }
    fetch = FakeFetch(table)
    cands = [("1", "http://h/a.jpg"), ("2", "http://h/a.jpg"), ("3", "http://h/b.jpg")]
    result = run(cands, 2, fetch)
    assert [a.outcome for a in result.judged] == ["ok", "duplicate_url", "ok"]
    assert [k.image_id for k in result.kept] == ["1", "3"]
    assert fetch.calls["http://h/a.jpg"] == 1


def test_kept_records_are_complete() -> None:
    body = jpeg(3, (100, 80))
    table = {"http://h/x.jpg": outcome("http://h/x.jpg", body)}
    (kept,) = run([("n1_1", "http://h/x.jpg")], 1, FakeFetch(table)).kept
    assert (kept.image_id, kept.url, kept.body, kept.bytes) == ("n1_1", "http://h/x.jpg", body, len(body))
    assert (kept.md5, kept.sha256) == (hashlib.md5(body).hexdigest(), hashlib.sha256(body).hexdigest())
    assert (kept.width, kept.height) == (100, 80)


# --- running out, laziness, bounds -------------------------------------------------------


def test_exhausted_when_too_few_valid() -> None:
    table = make_table(25, seed=3)
    cands = candidates_of(table)
    expected = reference(cands, table, 1000, set())
    result = run(cands, 1000, FakeFetch(table), max_in_flight=8)
    assert result.exhausted and [k.image_id for k in result.kept] == expected
    assert [a.url for a in result.judged] == list(table) and result.speculative == []
    assert result.tried == 25


def test_empty_candidates_and_nothing_needed() -> None:
    assert run([], 5, FakeFetch({})).exhausted
    result = run(iter([("1", "http://h/x")]), 0, FakeFetch({}))
    assert (result.kept, result.judged, result.exhausted) == ([], [], False)


def test_candidates_are_pulled_lazily() -> None:
    pulled = []

    def endless() -> Iterator[tuple[str, str]]:
        for i in itertools.count():
            pulled.append(i)
            yield str(i), f"http://h/{i}.jpg"

    class Everything:
        def __getitem__(self, url: str) -> FetchOutcome:
            return outcome(url, jpeg(int(url.rsplit("/", 1)[1].split(".")[0])))

    result = run(endless(), 3, FakeFetch(Everything()), max_in_flight=4)  # type: ignore[arg-type]
    assert len(result.kept) == 3 and len(pulled) <= 3 + 4


def test_slow_speculative_fetch_is_not_awaited() -> None:
    table = {f"http://h/{i}.jpg": outcome(f"http://h/{i}.jpg", jpeg(i)) for i in range(6)}
    fetch = FakeFetch(table, max_delay=0)
    release = threading.Event()
    held = [f"http://h/{i}.jpg" for i in range(2, 6)]  # all but the two needed never end on their own

    class OnceSpeculationRuns:
        """Holds a needed URL until a speculative fetch has begun (a pool thread may start late)."""

        def wait(self, timeout: float) -> None:
            for _ in range(int(timeout / 0.01)):
                if any(fetch.calls[url] for url in held):
                    return
                time.sleep(0.01)

    fetch.held = {**dict.fromkeys(held, release), "http://h/1.jpg": OnceSpeculationRuns()}  # type: ignore[dict-item]
    try:
        result = run(candidates_of(table), 2, fetch, max_in_flight=6)
        started = [url for url in held if fetch.calls[url]]
        # Fetched ahead, and returned while they still ran (awaiting them would take 30 s).
        assert started and not fetch.finished & set(held)
    finally:
        release.set()
    assert [k.url for k in result.kept] == ["http://h/0.jpg", "http://h/1.jpg"]
    assert result.speculative == []  # still running: dropped


def test_fetch_or_judge_raising_is_recorded_not_fatal() -> None:
    def fetch(url: str) -> FetchOutcome:
        if url.endswith("boom"):
            raise RuntimeError("bug")
        return outcome(url, jpeg(4))

    result = run([("1", "http://h/boom"), ("2", "http://h/ok")], 1, fetch)
    assert [(a.outcome, "bug" in a.error) for a in result.judged] == [("error", True), ("ok", False)]


def test_progress_and_on_attempt_run_on_the_calling_thread() -> None:
    table = make_table(30, seed=1)
    threads, reports, progress = set(), [], []

    def on_attempt(a: Attempt) -> None:
        threads.add(threading.get_ident())
        reports.append(a)

    result = run(
        candidates_of(table), 4, FakeFetch(table), max_in_flight=8,
        progress=lambda p, m: progress.append((p, m)), on_attempt=on_attempt,
    )  # fmt: skip
    assert threads == {threading.get_ident()}
    judged_reports = reports[: len(reports) - len(result.speculative)]
    first_time = [a for i, a in enumerate(judged_reports) if all(a is not b for b in judged_reports[:i])]
    again = [a for i, a in enumerate(judged_reports) if any(a is b for b in judged_reports[:i])]
    assert first_time == result.judged  # in sample order
    # evictions, reported twice
    assert again == [a for a in result.judged if a.outcome == "evicted_duplicate"]
    assert reports[len(judged_reports) :] == result.speculative
    k = len(result.kept)
    assert progress[-1] == (k / 4 * 100, f"kept {k}/4 after {result.tried} URLs")
    assert len(progress) == result.tried


# --- end to end over real HTTP, random server latency ---------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        time.sleep(random.random() * 0.03)  # real, unseeded jitter: timing must not matter
        kind, _, n = self.path.strip("/").partition("/")
        if kind == "img":
            self.reply(200, jpeg(int(n)))
        elif kind == "banner":
            self.reply(200, BANNER)
        elif kind == "trunc":
            self.reply(200, TRUNCATED)
        elif kind == "html":
            self.reply(200, b"<html>moved</html>", "text/html")
        elif kind == "gone":
            self.reply(410, b"gone")
        elif kind == "flickr":
            self.send_response(302)
            self.send_header("Location", "https://s.yimg.com/pw/images/en-us/photo_unavailable_l.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.reply(404, b"no")

    def reply(self, status: int, body: bytes, ctype: str = "image/jpeg") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_end_to_end_over_http_is_deterministic(server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    rng = random.Random(42)
    kinds = ["img", "img", "banner", "trunc", "html", "gone", "flickr", "missing"]
    paths = [f"/{rng.choice(kinds)}/{i}" for i in range(40)]
    cands = [(f"n1_{i}", server_url + p) for i, p in enumerate(paths)]
    cands.insert(10, cands[3])  # a repeated URL
    # What the server serves, as a table for the sequential reference.
    table = {}
    for _, url in cands:
        kind, n = url.rsplit("/", 2)[1:]
        body = {"img": jpeg(int(n)), "banner": BANNER, "trunc": TRUNCATED}.get(kind)
        table[url] = outcome(url, body) if body else outcome(url, failure="http_404")
    expected = reference(cands, table, 6, set())
    with Fetcher(FetchSettings(deadline=5, backoff=0.01, allow_private=True)) as fetcher:
        results = [
            fetch_category(cands, 6, fetch=fetcher.fetch, judge=judge_image, banned=set(), max_in_flight=w)
            for w in (1, 16, 16)
        ]
    for result in results:
        assert [k.image_id for k in result.kept] == expected
        assert [(a.image_id, a.outcome) for a in result.judged] == [
            (a.image_id, a.outcome) for a in results[0].judged
        ]
    by_kind = {a.url.rsplit("/", 2)[1]: a.outcome for a in results[0].judged if a.outcome != "duplicate_url"}
    assert by_kind.get("flickr", "placeholder_redirect") == "placeholder_redirect"
    assert by_kind.get("gone", "http_410") == "http_410"
    assert by_kind.get("missing", "http_404") == "http_404"
    assert by_kind.get("trunc", "truncated_jpeg") == "truncated_jpeg"
    assert by_kind.get("html", "not_jpeg") == "not_jpeg"
    assert len(by_kind) >= 5
    banners = [a for a in results[0].judged if "/banner/" in a.url]
    if len(banners) >= 2:
        assert banners[0].outcome == "evicted_duplicate" and {a.outcome for a in banners[1:]} == {"duplicate"}
