"""The retry policy table, parked retries, dead hosts shared across processes, the fleet's
request slots and the adaptive window: against real loopback servers and real processes."""

from __future__ import annotations

import io
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from demo.server import DemoServer
from sampler.fetch import retry_policy
from sampler.fetch.dead_hosts import DeadHosts
from sampler.fetch.http_fetch import Fetcher, FetchOutcome, FetchSettings
from sampler.fetch.image_check import judge_image
from sampler.fetch.request_slots import RequestSlots
from sampler.fetch.sample_order import HitRate, RetrySettings, fetch_category
from sampler.naming import host_port

REPO = Path(__file__).resolve().parents[1]


def jpeg(seed: int) -> bytes:
    img = Image.linear_gradient("L").resize((64, 48)).convert("RGB")
    img.putpixel((seed % 64, 0), (255, seed % 256, 0))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


# --- the table -------------------------------------------------------------------------


def test_the_table_in_docs_is_the_table_in_code() -> None:
    assert retry_policy.policy_markdown() in (REPO / "docs" / "faults.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("status", "retry"),
    [(429, True), (503, True), (408, True), (504, True), (500, False), (501, False), (502, False),
     (505, False), (599, False), (404, False), (410, False), (403, False), (400, False)],
)  # fmt: skip
def test_only_statuses_that_say_try_again_are_retried(status: int, retry: bool) -> None:
    verdict = retry_policy.for_status(status)
    assert (verdict.retry, verdict.dead_host) == (retry, False)


def test_name_and_connection_failures_are_final_and_kill_the_host() -> None:
    for what in (retry_policy.DNS_FAILURE, retry_policy.REFUSED):
        assert retry_policy.for_connection(what) == retry_policy.Verdict(False, True, what)
    assert retry_policy.for_connection(retry_policy.RESET_BEFORE_ANSWER).retry
    assert not retry_policy.for_connection(retry_policy.TLS_FAILURE).retry


def test_only_a_proxys_own_unreachable_page_means_dead() -> None:
    def says(status: int, **headers: str) -> str | None:
        import requests.structures

        return retry_policy.proxy_says_origin_unreachable(
            status,
            requests.structures.CaseInsensitiveDict({k.replace("_", "-"): v for k, v in headers.items()}),
        )

    assert says(502, X_Squid_Error="ERR_DNS_FAIL 0")
    assert says(503, x_squid_error="ERR_CONNECT_FAIL 111")
    assert says(504, Proxy_Status='proxy.example; error="dns_timeout"')
    assert says(502) is None  # an origin's own 502: a broken server, not a dead host
    assert says(502, X_Squid_Error="ERR_READ_TIMEOUT 0") is None
    assert says(404, X_Squid_Error="ERR_DNS_FAIL 0") is None


def test_the_demo_proxy_answers_dead_hosts_like_squid(monkeypatch: pytest.MonkeyPatch) -> None:
    with DemoServer() as server, Fetcher(FetchSettings(retries=0, allow_private=True)) as fetcher:
        monkeypatch.setenv("HTTP_PROXY", server.proxy_url)
        for name, status in (("squid_dns_fail", 502), ("squid_connect_fail", 503)):
            r = fetcher.fetch(server.fault_url(name))
            assert (r.outcome, r.status, r.dead_host, r.retryable) == ("dead_host", status, True, False)
            assert "ERR_" in r.error


# --- parked retries ----------------------------------------------------------------------


class SlotHolder(BaseHTTPRequestHandler):
    """/busy/<n>: 503 with Retry-After 1 on the first request, then a JPEG; /img/<n>: a JPEG.
    Records (path, time) of every request."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        with srv.lock:  # type: ignore[attr-defined]
            srv.log.append((self.path, time.monotonic()))  # type: ignore[attr-defined]
            first = self.path not in srv.seen  # type: ignore[attr-defined]
            srv.seen.add(self.path)  # type: ignore[attr-defined]
        time.sleep(0.02)
        if self.path.startswith("/busy/") and first:
            body, status, headers = b"busy", 503, {"Retry-After": "1"}
        else:
            body, status, headers = jpeg(int(self.path.rsplit("/", 1)[1])), 200, {}
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def slot_server() -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), SlotHolder)
    srv.daemon_threads = True
    srv.lock, srv.log, srv.seen = threading.Lock(), [], set()  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_a_retry_is_parked_and_the_others_proceed_with_its_slot(
    slot_server: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    base = f"http://127.0.0.1:{slot_server.server_address[1]}"
    cands = [("busy0", f"{base}/busy/0")] + [(f"img{i}", f"{base}/img/{i}") for i in range(1, 8)]
    # One thread only: if the 503 held it while waiting, nothing else could run meanwhile.
    with Fetcher(FetchSettings(retries=0, allow_private=True)) as fetcher:
        started = time.monotonic()
        result = fetch_category(
            cands, 4, fetch=fetcher.fetch, judge=judge_image, banned=set(), max_in_flight=1,
            retry=RetrySettings(retries=2, backoff=0.05),
        )  # fmt: skip
    log = slot_server.log  # type: ignore[attr-defined]
    busy = [t for p, t in log if p == "/busy/0"]
    assert len(busy) == 2 and busy[1] - busy[0] >= 0.95  # Retry-After honoured
    during = [p for p, t in log if busy[0] < t < busy[1]]
    assert len(during) >= 1 and all(p.startswith("/img/") for p in during)  # fetched ahead meanwhile
    # Still decided in sample order: the retried one is kept first.
    assert [k.image_id for k in result.kept] == ["busy0", "img1", "img2", "img3"]
    assert result.judged[0].outcome == "ok" and "after 2 tries" in result.judged[0].error
    assert time.monotonic() - started < 10  # the 1 s Retry-After and a few quick answers


def test_retry_after_beyond_the_cap_is_final_at_once() -> None:
    calls: list[str] = []

    def fetch(url: str) -> FetchOutcome:
        calls.append(url)
        return FetchOutcome(url, url, 429, "http_429", None, 0, 1, "HTTP 429", 0, 1, True, 3600.0)

    result = fetch_category([("a", "http://h/a")], 1, fetch=fetch, judge=judge_image, banned=set())
    assert calls == ["http://h/a"] and result.judged[0].outcome == "http_429"
    assert "gave up" in result.judged[0].error


# --- dead hosts ---------------------------------------------------------------------------


def _dead_in_child(folder: str, host: str, ready: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    hosts = DeadHosts(Path(folder))
    hosts.add(host, "DNS: no such host")
    ready.set()  # type: ignore[attr-defined]
    time.sleep(0.5)
    hosts.close()


def test_a_dead_host_found_in_one_process_is_settled_without_a_request_in_another(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "fetch" / "dead-hosts"
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_dead_in_child, args=(str(folder), "gone.example:80", ready))
    child.start()
    assert ready.wait(30)
    child.join(30)
    # A process killed mid-write leaves a torn line: it is ignored, never half-read.
    (folder / "killed-1-abcd.hosts").write_bytes(f"other.example:80\tDNS\t{time.time()}\nhalf.exam".encode())

    calls: list[str] = []

    def network(url: str) -> FetchOutcome:
        calls.append(url)
        return FetchOutcome(url, url, 200, "ok", jpeg(1), 10, 1, "", 0, 1)

    with DeadHosts(folder, refresh=0) as hosts:
        fetch = hosts.guard(network)
        urls = ["http://gone.example/a.jpg", "http://other.example/b.jpg"]
        urls += ["http://half.example/c.jpg", "http://alive.example/d.jpg"]
        outcomes = [fetch(u) for u in urls]
    assert [o.outcome for o in outcomes] == ["dead_host_known", "dead_host_known", "ok", "ok"]
    assert calls == ["http://half.example/c.jpg", "http://alive.example/d.jpg"]
    assert "gone.example:80" in outcomes[0].error and outcomes[0].attempts == 0
    assert all(p.is_relative_to(tmp_path) for p in tmp_path.rglob("*"))


def test_a_host_fetch_reports_dead_is_remembered_on_disk(tmp_path: Path) -> None:
    def network(url: str) -> FetchOutcome:
        return FetchOutcome(url, url, 502, "dead_host", None, 0, 1, "proxy: X-Squid-Error: ERR_DNS_FAIL 0",
                            0, 1, dead_host=True)  # fmt: skip

    with DeadHosts(tmp_path) as hosts:
        assert hosts.guard(network)("http://Gone.Example:80/x.jpg").outcome == "dead_host"
    (written,) = tmp_path.glob("*.hosts")
    host, reason, when = written.read_text().rstrip("\n").split("\t")
    assert (host, reason) == ("gone.example:80", "proxy: X-Squid-Error: ERR_DNS_FAIL 0")
    assert abs(float(when) - time.time()) < 60
    with DeadHosts(tmp_path) as fresh:
        assert fresh.known_dead("http://gone.example/y.jpg") is not None
        assert fresh.known_dead("https://gone.example/y.jpg") is None  # another port
    assert host_port("ftp://x/y") is None


def test_a_dead_host_is_asked_again_once_its_memory_expires(tmp_path: Path) -> None:
    # "Remembered for the run": a host refused yesterday, or back up since, is asked again.
    old = time.time() - 7200
    (tmp_path / "yesterday-1-abcd.hosts").write_text(
        f"old.example:80\trefused\t{old}\nundated.example:80\trefused\n"
    )
    calls: list[str] = []

    def network(url: str) -> FetchOutcome:
        calls.append(url)
        return FetchOutcome(url, url, 200, "ok", jpeg(1), 10, 1, "", 0, 1)

    with DeadHosts(tmp_path, refresh=0, max_age=3600) as hosts:
        fetch = hosts.guard(network)
        assert [fetch(u).outcome for u in ("http://old.example/a.jpg", "http://undated.example/b.jpg")] == [
            "ok",
            "ok",
        ]
    assert len(calls) == 2
    with DeadHosts(tmp_path, refresh=0, max_age=3 * 3600) as longer:
        assert longer.known_dead("http://old.example/c.jpg") is not None  # still within its memory


# --- request slots ----------------------------------------------------------------------


def _hold_slots(folder: str, n: int, ready: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    slots = RequestSlots(Path(folder), total=2, per_host=2)
    with slots.hold(f"h{n}:80"):
        ready.set()  # type: ignore[attr-defined]
        time.sleep(60)  # until killed


def test_request_slots_cap_requests_across_processes_and_a_dead_holder_frees_its_slot(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    readies = [ctx.Event(), ctx.Event()]
    children = [ctx.Process(target=_hold_slots, args=(str(tmp_path), i, readies[i])) for i in range(2)]
    for child in children:
        child.start()
    try:
        assert all(r.wait(30) for r in readies)
        slots = RequestSlots(tmp_path, total=2, per_host=2)
        deadline = time.monotonic() + 0.3
        with slots.hold("other:80", give_up=lambda: time.monotonic() > deadline) as got:
            assert not got  # both total slots are held by the other processes
        children[0].kill()  # a crash: the kernel drops its lock
        children[0].join(30)
        with slots.hold("other:80", give_up=lambda: time.monotonic() > deadline + 30) as got:
            assert got
    finally:
        for child in children:
            child.kill()
            child.join(30)


def test_per_host_slots_hold_one_host_back_not_the_others(tmp_path: Path) -> None:
    slots = RequestSlots(tmp_path, total=8, per_host=1)
    with slots.hold("busy:80"):
        with slots.hold("busy:80", give_up=lambda: True) as got:
            assert not got
        with slots.hold("free:80", give_up=lambda: True) as got:
            assert got


# --- the adaptive window -----------------------------------------------------------------------


def test_the_window_grows_on_a_dead_category_and_stays_small_on_a_live_one() -> None:
    rate = HitRate()
    assert rate.wants_more(5, 0, 7) and not rate.wants_more(5, 0, 8)  # prior: one hit in two
    for _ in range(20):
        rate.add(False)
    assert rate.wants_more(5, 0, 27) and not rate.wants_more(5, 0, 28)  # 1 in 7: 28 ahead
    live = HitRate()
    for _ in range(20):
        live.add(True)
    assert live.wants_more(5, 0, 4) and not live.wants_more(5, 0, 5)

    def run(alive_every: int) -> tuple[int, int]:
        """(most fetches running at once, fetches made) on a category with 1 in alive_every alive."""
        lock, running, most, made = threading.Lock(), [0], [0], [0]

        def fetch(url: str) -> FetchOutcome:
            with lock:
                running[0] += 1
                made[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.1)  # long enough that a loaded machine refills before fetches end
            with lock:
                running[0] -= 1
            n = int(url.rsplit("/", 1)[1])
            if n % alive_every:
                return FetchOutcome(url, url, 404, "http_404", None, 0, 20, "HTTP 404", 0, 1)
            return FetchOutcome(url, url, 200, "ok", jpeg(n), 10, 20, "", 0, 1)

        cands = [(str(i), f"http://h/{i}") for i in range(1, 201)]
        result = fetch_category(cands, 5, fetch=fetch, judge=judge_image, banned=set(), max_in_flight=48)
        assert len(result.kept) == 5
        return most[0], made[0]

    dead_most, _ = run(20)
    live_most, live_made = run(1)
    assert dead_most > 24 and live_most <= 8 and live_made <= 8


def test_no_file_is_written_outside_the_folders_given(tmp_path: Path) -> None:
    before = set(os.listdir(tmp_path))
    RequestSlots(tmp_path / "slots", 2, 1)
    with DeadHosts(tmp_path / "dead") as hosts:
        hosts.add("x:80", "refused")
    assert set(os.listdir(tmp_path)) - before == {"slots", "dead"}
