"""429 answers (issue 26, item 5): said on the console and in luigid, and asked again by a
later run once their Retry-After has passed -- never final for ever."""

from __future__ import annotations

import csv
import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from demo import world as dw
from demo.server import DemoServer
from sampler.fetch.http_fetch import FetchOutcome
from tests.conftest import run_luigi, write_demo_config


def api(luigid_url: str, method: str, **data: object) -> dict:
    query = urllib.parse.urlencode({"data": json.dumps(data)})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{luigid_url}/api/{method}?{query}", timeout=10) as answer:
        return json.load(answer)["response"]


def attempts_rows(data: Path) -> list[dict[str, str]]:
    with (data / "attempts.csv").open(encoding="utf-8", newline="") as src:
        return list(csv.DictReader(src))


def ask_again_after(error: str) -> float | None:
    from sampler.fetch.rate_limits import ask_again_after

    return ask_again_after(error)


def test_a_429_records_when_to_ask_again_and_replay_asks_once_that_time_has_passed():
    from sampler.fetch.rate_limits import host_limits, is_due, noting_rate_limits

    answer = FetchOutcome("http://h.test/1.jpg", "http://h.test/1.jpg", 429, "http_429", None, 0, 1, "", 0, 1)
    noted = noting_rate_limits(lambda url: answer, default_wait=900, clock=lambda: 1_000_000.0)
    row = {"url": answer.url, "outcome": "http_429", "error": noted(answer.url).error}
    assert "no Retry-After" in row["error"] and ask_again_after(row["error"]) == 1_000_900.0
    assert not is_due(row, now=1_000_899.0) and is_due(row, now=1_000_900.0)
    limit = host_limits([row])[0]
    assert (limit.host, limit.urls, limit.retry_after) == ("h.test", 1, None)
    # A row written before the time was recorded: asked again at once.
    assert is_due({"url": answer.url, "outcome": "http_429", "error": ""})
    assert not is_due({"url": answer.url, "outcome": "http_404", "error": ""})


def test_a_retry_after_past_any_date_is_recorded_as_a_long_wait_not_a_crash():
    """Retry-After "1e308", "inf" or 999999999999 (year 33715) parse as seconds: the moment
    to ask again is capped (MAX_WAIT), so the 429 is recorded as one, not "fetch raised
    OverflowError" (a final error, never asked again)."""
    from sampler.fetch.http_fetch import _retry_after
    from sampler.fetch.rate_limits import MAX_WAIT, host_limits, noting_rate_limits

    for header in ("1e308", "inf", "999999999999"):
        answer = FetchOutcome(
            "http://h.test/1.jpg", "http://h.test/1.jpg", 429, "http_429", None, 0, 1, "", 0, 1,
            retry_after=_retry_after(header),
        )  # fmt: skip
        noted = noting_rate_limits(lambda url, answer=answer: answer, clock=lambda: 1_000_000.0)
        error = noted(answer.url).error
        assert ask_again_after(error) == 1_000_000.0 + MAX_WAIT, header
        if header != "inf":  # the longest Retry-After said, read back whole (not "308 s" of 1e+308)
            (limit,) = host_limits([{"url": answer.url, "outcome": "http_429", "error": error}])
            assert limit.retry_after == pytest.approx(float(header), rel=1e-5), error


def test_rate_limited_urls_are_reported_and_asked_again_after_their_retry_after(tmp_path, demo_world, luigid):
    # A server of its own: the demo server answers 429 to a URL's first request only, and the
    # session's server has served every URL already.
    with DemoServer(demo_world) as demo_server:
        rate_limited_then_asked_again(tmp_path, demo_world, demo_server, luigid)


def rate_limited_then_asked_again(tmp_path: Path, demo_world: Path, demo_server: DemoServer, luigid) -> None:
    """No retry within the run (retries 0): the demo world's rate-limited host answers 429
    (Retry-After: 1) the first time.  The run says so -- in luigid's status message and on
    the console -- and a run after that second asks those URLs again and keeps them, in
    sample order."""
    config = write_demo_config(tmp_path, demo_world, demo_server, FetchCategory={"retries": "0"})
    data = tmp_path / "data"
    demo_server.clear_log()
    first = run_luigi(config, demo_server, "--workers", "2", scheduler=luigid)
    assert first.returncode == 0, first.stderr[-3000:]
    limited = {r["url"] for r in attempts_rows(data) if r["outcome"] == "http_429" and r["judged"] == "True"}
    assert limited, "no URL the categories decided on was rate limited: the test proves nothing"
    said = first.stdout + first.stderr
    assert "answered 429 (rate limited) for" in said and "Retry-After 1 s" in said, said[-3000:]
    summary = json.loads((data / "fetch_summary.json").read_text())
    assert summary["rate_limited"] and summary["rate_limited"][0]["retry_after"] == 1
    messages = [
        task["status_message"] or ""
        for task in api(luigid.url, "task_list", status="DONE").values()
        if task["name"] == "FetchCategory" and task["params"]["data_dir"] == str(data)
    ]
    assert any("answered 429 (rate limited)" in message for message in messages), messages

    # The Retry-After (1 s, rounded up to the second) passes; the same command again.  (With
    # the local scheduler: luigid would not run again, within its stable_done_cooldown_secs
    # of 10 s, the FetchFives it saw done.)
    wait_until = max(ask_again_after(r["error"]) or 0 for r in attempts_rows(data) if r["url"] in limited)
    time.sleep(max(0.0, wait_until - time.time()) + 0.1)
    demo_server.clear_log()
    second = run_luigi(config, demo_server, "--workers", "2")
    assert second.returncode == 0, second.stderr[-3000:]
    asked = {dw.url_key(url) for method, url, _status in demo_server.requests if method == "GET"}
    assert {dw.url_key(url) for url in limited} <= asked  # every one asked again
    with (data / "manifest.csv").open(encoding="utf-8", newline="") as src:
        kept = {row["url"] for row in csv.DictReader(src)}
    assert kept & limited, "none of the URLs answered 429 at first is kept now"
    latest = {row["url"]: row for row in attempts_rows(data)}
    assert all(latest[url]["outcome"] != "http_429" for url in limited)
    # And a third run does not ask them again: their 429 is settled.
    demo_server.clear_log()
    third = run_luigi(config, demo_server, "--workers", "2")
    assert third.returncode == 0, third.stderr[-3000:]
    asked = {dw.url_key(url) for method, url, _status in demo_server.requests if method == "GET"}
    assert not asked & {dw.url_key(url) for url in limited}
