"""Ask the web only for what the run needs (issue 22): the look-ahead sized by need and by the
run's alive rate, per-host concurrency that fits the host, and the cost shown to the user."""

from __future__ import annotations

import csv
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sampler.fetch.attempts import read_attempts, request_cost
from sampler.fetch.category_round import CategoryFiles, final_message, run_round
from sampler.fetch.gather import write_fetch_report
from sampler.fetch.hit_rates import RECENT, RunHitRates
from sampler.fetch.http_fetch import Fetcher, FetchOutcome, FetchSettings
from sampler.fetch.image_check import judge_image
from sampler.fetch.replay import run_category_job
from sampler.fetch.request_slots import HostLimits, RequestSlots
from sampler.fetch.results import RoundResult
from sampler.fetch.sample_order import HitRate, fetch_category
from sampler.outcomes import Outcome
from sampler.report.text import format_summary
from sampler.store import ImageStore
from tests.test_category_round import SETTINGS, WNID, LoggingServer, job
from tests.test_fetch_attacks import jpeg

# --- the look-ahead, sized by need -------------------------------------------------------------


class Held:
    """fetch() for a category whose URLs are all good JPEGs; URL 0 answers only once 7 others
    have (or after 10 s), so that good bodies wait for their turn behind it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[int] = []
        self.ended = 0

    def __call__(self, url: str) -> FetchOutcome:
        n = int(url.rsplit("/", 1)[1])
        with self.lock:
            self.calls.append(n)
        if n == 0:
            for _ in range(1000):  # bounded: 10 s at most
                with self.lock:
                    if self.ended >= 7:
                        break
                time.sleep(0.01)
        with self.lock:
            self.ended += n != 0
        return FetchOutcome(url, url, 200, Outcome.OK, jpeg(n), 100, 1, "", 0, 1)


def test_a_healthy_category_asks_for_little_more_than_it_needs_and_nothing_once_settled() -> None:
    fetch = Held()
    candidates = [(f"{WNID}_{i}", f"http://h/{i}") for i in range(100)]
    result = fetch_category(candidates, 5, fetch=fetch, judge=judge_image, banned=set(), max_in_flight=48)
    assert [k.image_id for k in result.kept] == [f"{WNID}_{i}" for i in range(5)]
    # At one hit in two (the prior), 8 fetches are expected to hold 4 of the 5 needed; once the
    # 7 behind URL 0 came back good, the kept set was settled: nothing more was asked, though
    # URL 0 was still out.  (Before: a window of 13.)
    assert sorted(fetch.calls) == list(range(8))
    assert len(result.speculative) <= 3


def test_no_look_ahead_while_a_retry_may_still_complete_the_category() -> None:
    calls: list[str] = []
    lock = threading.Lock()

    def fetch(url: str) -> FetchOutcome:
        with lock:
            calls.append(url)
            first = calls.count(url) == 1
        if url.endswith("/0") and first:  # the host is busy: "come back in 0.2 s"
            return FetchOutcome(url, url, 503, "http_503", None, 0, 1, "HTTP 503", 0, 1, True, 0.2)
        if url.endswith("/0"):
            return FetchOutcome(url, url, 200, Outcome.OK, jpeg(0), 100, 1, "", 0, 1)
        return FetchOutcome(url, url, 404, "http_404", None, 0, 1, "HTTP 404", 0, 1)

    candidates = [(f"{WNID}_{i}", f"http://h/{i}") for i in range(100)]
    result = fetch_category(candidates, 1, fetch=fetch, judge=judge_image, banned=set(), max_in_flight=48)
    assert [k.image_id for k in result.kept] == [f"{WNID}_0"]
    # The first look-ahead (two, at one in two) and the retry; nothing while the retry was due.
    assert sorted(calls) == ["http://h/0", "http://h/0", "http://h/1"]


def test_a_category_starts_at_the_alive_rate_the_run_has_seen(tmp_path: Path) -> None:
    folder = tmp_path / "hit-rates"
    with RunHitRates(folder, "n00000001-round0") as dead_category:
        for i in range(100):
            dead_category.add(i < 2)  # 2 of 100 alive
    fresh = HitRate(RunHitRates(folder, "n00000002-round0"))
    assert fresh.rate() == pytest.approx(2.5 / 101)
    assert fresh.wants_more(5, 0, 47)  # fetches far ahead at once
    assert not HitRate().wants_more(5, 0, 8)  # without the run's rate: one in two
    # A category's own outcomes soon outweigh the run's.
    for _ in range(40):
        fresh.add(True)
    assert not fresh.wants_more(5, 0, 5)


def test_the_run_s_rate_is_the_mean_of_its_categories_and_ignores_damaged_files(tmp_path: Path) -> None:
    folder = tmp_path / "hit-rates"
    folder.mkdir()
    (folder / "a-round0.rate").write_text("49 99\n")  # (49.5 / 100)
    (folder / "b-round0.rate").write_text("4 99\n")  # (4.5 / 100): the mean, not the pooled rate
    (folder / "c-round0.rate").write_text("5 ")  # cut short
    (folder / "d-round0.rate").write_text("9 3\n")  # impossible
    (folder / "notes.txt").write_text("1 1\n")  # not ours
    assert RunHitRates(folder, "e-round0").others() == pytest.approx(0.27)
    assert RunHitRates(tmp_path / "none", "e-round0").others() is None


# --- per-host concurrency that fits the host ---------------------------------------------------


def answer(status: int | None, outcome: str, *, retryable: bool = False) -> FetchOutcome:
    return FetchOutcome("u", "u", status, outcome, None, 0, 1, "", 0, 1, retryable=retryable)


def test_a_host_gets_more_while_it_answers_and_half_when_it_pushes_back(tmp_path: Path) -> None:
    limits = HostLimits(tmp_path / "limit", start=4, most=16, refresh=0.0, cooldown=60)
    assert limits.limit("farm1:80") == 4
    for _ in range(5):
        limits.record("farm1:80", answer(404, "http_404"))  # an answer is an answer
    assert limits.limit("farm1:80") == 9  # one more per answer until the first push-back
    limits.record("farm1:80", answer(429, "http_429", retryable=True))
    assert limits.limit("farm1:80") == 4
    limits.record("farm1:80", answer(503, "http_503", retryable=True))  # the same push-back
    assert limits.limit("farm1:80") == 4
    for _ in range(9):
        limits.record("farm1:80", answer(200, Outcome.OK))
    assert limits.limit("farm1:80") == 6  # now by one per limit's worth of answers
    # Every process of the fleet sees it; other hosts keep their own.
    other_process = HostLimits(tmp_path / "limit", start=4, most=16, refresh=0.0)
    assert other_process.limit("farm1:80") == 6 and other_process.limit("small:80") == 4
    for _ in range(100):
        limits.record("small:80", answer(404, "http_404"))
    assert limits.limit("small:80") == 16  # never past the most
    limits.record("small:80", answer(None, Outcome.TIMEOUT))
    assert other_process.limit("small:80") == 8
    limits.record("gone:80", answer(None, Outcome.DEAD_HOST))  # no answer: no change
    assert limits.limit("gone:80") == 4


class CountingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CountingServer

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.in_flight += 1
            self.server.most = max(self.server.most, self.server.in_flight)
        time.sleep(0.05)
        with self.server.lock:
            self.server.in_flight -= 1
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class CountingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), CountingHandler)
        self.lock = threading.Lock()
        self.in_flight = self.most = 0


@pytest.fixture()
def counting_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingServer]:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    srv = CountingServer()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_a_host_that_answers_promptly_gets_more_than_per_host_at_once(
    counting_server: CountingServer, tmp_path: Path
) -> None:
    slots = RequestSlots(tmp_path / "slots", total=64, per_host=2, per_host_max=6)
    port = counting_server.server_address[1]
    candidates = [(f"{WNID}_{i}", f"http://127.0.0.1:{port}/{i}.jpg") for i in range(120)]
    with Fetcher(FetchSettings(deadline=10, retries=0, allow_private=True, per_host=6)) as fetcher:
        result = fetch_category(
            candidates, 5, fetch=slots.guard(fetcher.fetch), judge=judge_image, banned=set(), max_in_flight=16
        )
    assert result.exhausted and result.tried == 120
    assert 2 < counting_server.most <= 6  # grown past per_host, never past per_host_max


class PortsHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CountingServer

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.ports.add(self.client_address[1])  # type: ignore[attr-defined]
        body = jpeg(1)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_keep_alive_connection_is_reused_by_whichever_thread_asks_the_host_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), PortsHandler)
    srv.daemon_threads = True
    srv.lock, srv.ports = threading.Lock(), set()  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with Fetcher(FetchSettings(deadline=10, retries=0, allow_private=True)) as fetcher:
            for i in range(4):  # one after the other, each on a thread of its own
                worker = threading.Thread(
                    target=fetcher.fetch, args=(f"http://127.0.0.1:{srv.server_address[1]}/{i}",)
                )
                worker.start()
                worker.join(30)
    finally:
        srv.shutdown()
        srv.server_close()
    assert len(srv.ports) == 1  # type: ignore[attr-defined]  # one connection, not one per thread


# --- the cost, shown -------------------------------------------------------------------------


@pytest.fixture()
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoggingServer]:
    """test_category_round's server: a category of good, gone, placeholder and cut images."""
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    srv = LoggingServer()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_attempt_rows_count_every_request_the_server_saw(server: LoggingServer, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    files = CategoryFiles(tmp_path / "fetch" / "seed0-n12-k2", WNID)
    # Needing more than the category holds: every URL is decided, none is left in flight.
    summary = run_round(files, 0, job(server, store, 6), settings=SETTINGS, judge=judge_image).result
    rows = read_attempts(files.attempts(0))
    asked = server.requests()
    cost = request_cost(rows)
    assert cost.made == len(asked) > 0 and cost.look_ahead_not_needed == 0
    assert f"{cost.made} requests (" in final_message(summary, cost)
    # Run again (the result lost), everything is replayed: no new request, the same count.
    files.result(0).unlink()
    run_round(files, 0, job(server, store, 6), settings=SETTINGS, judge=judge_image)
    assert server.requests() == [] and request_cost(read_attempts(files.attempts(0))).made == cost.made


def write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(
            out, ["round", "image_id", "url", "outcome", "sha256", "error", "requests", "judged"]
        )
        writer.writeheader()
        writer.writerows(rows)


def row(n: int, requests: int, judged: bool, outcome: str = "http_404") -> dict[str, str]:
    return {
        "image_id": f"{WNID}_{n}",
        "url": f"http://h/{n}",
        "outcome": outcome,
        "sha256": "",
        "error": "",
        "requests": str(requests),
        "judged": str(judged),
    }


def test_fetch_summary_and_run_report_show_the_load_on_the_web(tmp_path: Path) -> None:
    round0, round1 = tmp_path / "round0.csv", tmp_path / "round1.csv"
    # Round 0 decided 1-3, looked ahead at 4 (a redirect: 2 requests) and 5; the top-up round
    # then decided 4 from the replay (no request): only 5's request was not needed.
    write_rows(
        round0, [row(1, 1, True), row(2, 3, True), row(3, 1, True), row(4, 2, False), row(5, 1, False)]
    )
    write_rows(round1, [row(4, 0, True)])
    result = RoundResult(WNID, "cat", 5, [], True, 4, [])
    summary = write_fetch_report(
        {WNID: result}, [round0, round1], tmp_path / "attempts.csv", tmp_path / "fetch_summary.json"
    )
    assert summary["requests"] == {"made": 8, "per_kept_image": None, "look_ahead_not_needed": 1}
    report = {"requests": {"made": 8, "per_kept_image": 1.6, "look_ahead_not_needed": 1}}
    assert (
        "Requests:     8 to the web (1.6 per kept image, 1 look-ahead requests not needed)"
        in format_summary(report)
    )


def test_the_requests_of_an_interrupted_round_are_still_counted(
    server: LoggingServer, tmp_path: Path
) -> None:
    store = ImageStore(tmp_path / "store")
    files = CategoryFiles(tmp_path / "fetch" / "seed0-n12-k6", WNID)
    # The first try at the round dies once every URL is decided: its journal is what is left.
    with Fetcher(SETTINGS) as fetcher:
        run_category_job(
            job(server, store, 6), fetch=fetcher.fetch, judge=judge_image, journal=files.journal(0)
        )
    asked = len(server.requests())
    run_round(files, 0, job(server, store, 6), settings=SETTINGS, judge=judge_image)
    assert server.requests() == []  # all replayed ...
    assert request_cost(read_attempts(files.attempts(0))).made == asked > 0  # ... and still counted


def test_every_fresh_push_back_halves_but_one_push_back_met_by_many_requests_halves_once(
    tmp_path: Path,
) -> None:
    """As TCP halves once per window: a request sent after the last halving that is pushed back
    halves again at once (a host answering in 50 ms must not wait out a one-second cooldown,
    meanwhile raised twenty times); those sent before it are the same push-back."""
    slots = RequestSlots(tmp_path / "slots", total=64, per_host=8, per_host_max=16)
    too_many = slots.guard(lambda url: answer(429, "http_429", retryable=True))
    for expected in (4, 2, 1):
        too_many("http://busy/a.jpg")  # sent after the halving before it
        assert slots.limits.limit("busy:80") == expected
    limits = HostLimits(tmp_path / "limit", start=8, most=16, refresh=0.0)
    sent_before = time.monotonic()
    limits.record("busy:80", answer(429, "http_429", retryable=True), sent_before)
    limits.record("busy:80", answer(503, "http_503", retryable=True), sent_before)  # in flight then
    assert limits.limit("busy:80") == 4


def test_the_run_s_rate_follows_the_rounds_written_last_not_the_rounds_long_gone(tmp_path: Path) -> None:
    """A run whose first categories were dead and whose later ones live must not flood the live
    ones with look-ahead sized by the dead (nor the reverse: crawl through the dead ones)."""
    folder = tmp_path / "hit-rates"
    folder.mkdir()
    for i in range(20):  # the first categories: 5 alive of 100
        path = folder / f"dead{i}-round0.rate"
        path.write_text("5 100\n")
        os.utime(path, ns=(10**18 + i, 10**18 + i))
    for i in range(RECENT):  # the ones running now: every URL alive
        path = folder / f"live{i}-round0.rate"
        path.write_text("5 5\n")
        os.utime(path, ns=(2 * 10**18 + i, 2 * 10**18 + i))
    assert RunHitRates(folder, "me-round0").others() == pytest.approx(5.5 / 6)
