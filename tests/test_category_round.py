"""Journal replay (category_round): what a round recorded is never asked of the web again.

A real loopback server serves real JPEGs, 404s, a redirect to Flickr's placeholder, a
download cut short, a cut JPEG and one banner behind two URLs; every request it gets is
logged, so each test can say which URLs a replay asked for.
"""

from __future__ import annotations

import csv
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sampler.fetch.attempts import read_attempts
from sampler.fetch.category_round import CategoryFiles, run_round
from sampler.fetch.gather import RoundPlan, write_round_plan
from sampler.fetch.http_fetch import Fetcher, FetchOutcome, FetchSettings
from sampler.fetch.image_check import judge_image
from sampler.fetch.replay import CategoryJob, ReplayingFetch, run_category_job
from sampler.fetch.results import RoundResult, read_result
from sampler.outcomes import GOOD_BODY
from sampler.report.model import attempt_table, read_table
from sampler.store import ImageStore
from tests.test_fetch_attacks import jpeg

WNID = "n01234567"
FLICKR_PLACEHOLDER = "https://s.yimg.com/pw/images/en-us/photo_unavailable_l.png"
SETTINGS = FetchSettings(deadline=10, retries=0, allow_private=True)


BANNER = jpeg(999)  # a host's "image not found" JPEG: a valid image, the same behind every URL

# The category, in sample order.  The banner at 3 is kept, then evicted when 6 serves its bytes.
KINDS = ["good", "gone", "flickr", "banner", "cut", "half", "banner", "good", "gone", "good", "good", "good"]
GOOD_COUNT = 5  # good, minus the evicted banner


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LoggingServer

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.log.append(self.path)
        kind, _, name = self.path.strip("/").partition("/")
        n = int(name.split(".")[0])
        if kind == "gone":
            self.reply(404, b"<html>gone</html>")
        elif kind == "flickr":
            self.send_response(302)
            self.send_header("Location", FLICKR_PLACEHOLDER)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "cut":  # announces the whole photo, sends half of it and hangs up
            body = jpeg(n)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
        elif kind == "half":  # half a photo, announced as such
            self.reply(200, jpeg(n)[: len(jpeg(n)) // 2])
        else:
            self.reply(200, BANNER if kind == "banner" else jpeg(n))

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class LoggingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.log: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def requests(self) -> list[str]:
        """Full URLs requested since the last call."""
        with self.lock:
            paths, self.log = self.log, []
        return [self.url + path for path in paths]


@pytest.fixture()
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoggingServer]:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    srv = LoggingServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def sample(server: LoggingServer) -> list[tuple[str, str]]:
    return [(f"{WNID}_{i}", f"{server.url}/{kind}/{i}.jpg") for i, kind in enumerate(KINDS)]


def job(
    server: LoggingServer, store: ImageStore, needed: int, earlier: list[dict[str, str]] | None = None, **kw
) -> CategoryJob:
    return CategoryJob(
        WNID, "cat", needed, sample(server), lambda: iter(()), store, set(), list(earlier or []), **kw
    )


def run(job: CategoryJob, journal: Path | None = None) -> tuple[RoundResult, list[dict[str, object]]]:
    with Fetcher(SETTINGS) as fetcher:
        return run_category_job(job, fetch=fetcher.fetch, judge=judge_image, journal=journal)


def kept(result: RoundResult) -> list[tuple[str, str]]:
    return [(image.image_id, image.sha256) for image in result.kept]


def outcomes(rows: list[dict[str, object]]) -> dict[str, str]:
    """URL -> its last recorded outcome (an eviction is recorded after the first decision)."""
    return {str(row["url"]): str(row["outcome"]) for row in rows}


def reference(
    server: LoggingServer, tmp_path: Path, needed: int
) -> tuple[RoundResult, list[dict[str, object]]]:
    """An uninterrupted first run on a data_dir of its own, one candidate at a time."""
    result, rows = run(job(server, ImageStore(tmp_path / "reference-store"), needed, max_in_flight=1))
    server.requests()
    return result, rows


def test_every_outcome_has_its_own_name_and_a_cut_download_records_what_it_received(server, tmp_path):
    result, rows = run(job(server, ImageStore(tmp_path / "store"), needed=len(KINDS)))
    by_kind: dict[str, set[str]] = {}
    for (_, url), kind in zip(sample(server), KINDS, strict=True):
        by_kind.setdefault(kind, set()).add(outcomes(rows)[url])
    assert by_kind == {
        "good": {"ok"},
        "gone": {"http_404"},
        "flickr": {"placeholder_redirect"},
        "banner": {"evicted_duplicate", "duplicate"},
        "cut": {"truncated_download"},
        "half": {"truncated_jpeg"},
    }
    assert result.exhausted and len(result.kept) == GOOD_COUNT
    # What legacy() must not lean on: a cut download's bytes column is not 0.
    (cut,) = [row for row in rows if row["outcome"] == "truncated_download"]
    assert int(cut["bytes"]) > 0 and cut["sha256"] == ""
    (half,) = [row for row in rows if row["outcome"] == "truncated_jpeg"]
    assert int(half["bytes"]) > 0 and half["sha256"] != ""


def test_a_finished_journal_replays_without_a_single_request(server, tmp_path):
    store, journal = ImageStore(tmp_path / "store"), tmp_path / "round0" / f"{WNID}.journal.csv"
    # More wanted than the category has: every candidate is decided, so every one is journaled.
    first, first_rows = run(job(server, store, needed=GOOD_COUNT + 1, max_in_flight=8), journal)
    assert len(server.requests()) == len(KINDS)

    replayed, rows = run(job(server, store, GOOD_COUNT + 1, read_attempts(journal), max_in_flight=8))
    assert server.requests() == []
    assert kept(replayed) == kept(first)
    assert outcomes(rows) == outcomes(first_rows)
    # The result file too, byte for byte: a body judged not good keeps its digests when replayed.
    assert any(judged.sha256 and judged.outcome not in GOOD_BODY for judged in first.judged)
    assert replayed.to_text() == first.to_text()

    # The journal is what spares the failures: the store alone answers only the good bodies.
    _result, _rows = run(job(server, store, GOOD_COUNT + 1, max_in_flight=8))
    failed = {row["url"] for row in first_rows if row["outcome"] not in GOOD_BODY}
    assert set(server.requests()) == failed


def cut_mid_line(journal: Path, complete_rows: int) -> set[str]:
    """What a kill leaves: the header, ``complete_rows`` rows and half of the next one.
    Returns the URLs of the complete rows."""
    lines = journal.read_bytes().splitlines(keepends=True)
    torn = lines[1 + complete_rows]
    journal.write_bytes(b"".join(lines[: 1 + complete_rows]) + torn[: len(torn) // 2])
    return {row["url"] for row in read_attempts(journal)}


@pytest.mark.parametrize("complete_rows", [0, 4, 9])
def test_a_round_killed_mid_line_replays_what_it_recorded_and_fetches_only_the_rest(
    server, tmp_path, complete_rows
):
    store, journal = ImageStore(tmp_path / "store"), tmp_path / "round0" / f"{WNID}.journal.csv"
    needed = GOOD_COUNT + 1  # every candidate is needed: the rerun must settle every one
    _first, first_rows = run(job(server, store, needed, max_in_flight=4), journal)
    server.requests()
    recorded = cut_mid_line(journal, complete_rows)
    assert len(read_attempts(journal)) == complete_rows  # the torn row is not read

    rerun, rows = run(job(server, store, needed, read_attempts(journal), max_in_flight=4), journal)
    # Good bodies come from the store whether journaled or not; failures only from the journal.
    failed = {row["url"] for row in first_rows if row["outcome"] not in GOOD_BODY}
    assert sorted(server.requests()) == sorted(failed - recorded)
    reference_result, reference_rows = reference(server, tmp_path, needed)
    assert kept(rerun) == kept(reference_result)
    assert outcomes(rows) == outcomes(reference_rows)
    # The rerun appended to the journal after dropping the torn line: killed again now, its
    # next rerun would replay every decision (no row glued onto the torn one and lost with it).
    assert {row["url"] for row in read_attempts(journal)} == {url for _, url in sample(server)}


@pytest.mark.parametrize("max_in_flight", [1, 3, 16])
def test_the_same_images_are_kept_whatever_the_history(server, tmp_path, max_in_flight):
    needed = 3
    reference_result, _rows = reference(server, tmp_path, needed)
    assert [image_id for image_id, _ in kept(reference_result)] == [f"{WNID}_0", f"{WNID}_7", f"{WNID}_9"]

    store = ImageStore(tmp_path / "store")
    journal = tmp_path / "journal.csv"
    fresh, _ = run(job(server, store, needed, max_in_flight=max_in_flight), journal)
    cut_mid_line(journal, 5)
    after_kill, _ = run(job(server, store, needed, read_attempts(journal), max_in_flight=max_in_flight))
    from_store_only, _ = run(job(server, store, needed, max_in_flight=max_in_flight))
    assert kept(fresh) == kept(after_kill) == kept(from_store_only) == kept(reference_result)


OLD_NAMES = {  # what each outcome was called before every meaning had its own name
    "placeholder_redirect": "placeholder",
    "evicted_duplicate": "placeholder",
    "truncated_download": "truncated",
    "truncated_jpeg": "truncated",
}


def test_a_journal_written_with_the_old_names_replays_under_the_new_ones(server, tmp_path):
    store, journal = ImageStore(tmp_path / "store"), tmp_path / "round0" / f"{WNID}.journal.csv"
    needed = GOOD_COUNT + 1
    _first, first_rows = run(job(server, store, needed, max_in_flight=4), journal)
    server.requests()
    with journal.open(encoding="utf-8", newline="") as src:
        old_rows = list(csv.DictReader(src))
    assert {row["outcome"] for row in old_rows} >= set(OLD_NAMES)  # every renamed meaning is there
    for row in old_rows:
        row["outcome"] = OLD_NAMES.get(row["outcome"], row["outcome"])
    with journal.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, list(old_rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(old_rows)

    replayed, rows = run(job(server, store, needed, read_attempts(journal), max_in_flight=4))
    assert server.requests() == []  # an old "placeholder" redirect is final, its evicted twin in the store
    assert outcomes(rows) == outcomes(first_rows)  # each old name read back as its own meaning
    assert kept(replayed) == kept(_first)


def test_replayed_rows_of_an_old_run_keep_their_meaning(server, tmp_path):
    # A top-up round, or a run resumed from a killed one's journal, replays earlier failures:
    # such a row recorded no digest before replays kept them.  Written before the renames, a
    # replayed cut JPEG said "truncated" with an empty sha256, like a cut download; its error
    # tells them apart.
    store, journal = ImageStore(tmp_path / "store"), tmp_path / "round0" / f"{WNID}.journal.csv"
    needed = GOOD_COUNT + 1
    run(job(server, store, needed, max_in_flight=4), journal)
    _replayed, replay_rows = run(job(server, store, needed, read_attempts(journal), max_in_flight=4))
    cut = {str(row["outcome"]): row for row in replay_rows if str(row["outcome"]).startswith("truncated")}
    assert set(cut) == {"truncated_download", "truncated_jpeg"}
    assert cut["truncated_download"]["sha256"] == "" and cut["truncated_jpeg"]["sha256"] != ""
    for row in cut.values():  # as an old run's replay wrote them: what the digest cannot tell
        row["md5"] = row["sha256"] = ""
    old_file = tmp_path / "old.attempts.csv"
    with old_file.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, list(replay_rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in replay_rows:
            writer.writerow({**row, "outcome": OLD_NAMES.get(str(row["outcome"]), row["outcome"])})
    assert outcomes(read_attempts(old_file)) == outcomes(replay_rows)
    table = attempt_table(read_table(old_file))
    assert dict(zip(table["url"], table["outcome"], strict=True)) == outcomes(replay_rows)


def test_ReplayingFetch_answers_from_the_record_the_store_or_else_the_web(server, tmp_path):
    store = ImageStore(tmp_path / "store")
    journal = tmp_path / "journal.csv"
    run(job(server, store, needed=GOOD_COUNT + 1), journal)
    server.requests()
    earlier = read_attempts(journal)
    url: dict[str, str] = {}  # the first URL of each kind
    for (_, u), kind in zip(sample(server), KINDS, strict=True):
        url.setdefault(kind, u)
    with Fetcher(SETTINGS) as fetcher:
        fetch = ReplayingFetch(fetcher.fetch, earlier, store, store.stored_urls(WNID))
        answers: dict[str, FetchOutcome] = {kind: fetch(u) for kind, u in url.items()}
        assert server.requests() == []
        assert answers["good"].outcome == "ok" and answers["good"].body == jpeg(0)
        assert answers["banner"].body == BANNER  # evicted later, but its body was good: the store has it
        assert (answers["gone"].outcome, answers["gone"].status) == ("http_404", 404)
        assert answers["flickr"].final_url == FLICKR_PLACEHOLDER
        assert {answers[k].outcome for k in ("flickr", "cut", "half")} == {
            "placeholder_redirect", "truncated_download", "truncated_jpeg"
        }  # fmt: skip
        # A body the store lost since is asked of the web again.
        sha256 = next(row["sha256"] for row in earlier if row["url"] == url["good"])
        store.path(sha256).unlink()
        assert fetch(url["good"]).body == jpeg(0)
        assert server.requests() == [url["good"]]


def test_a_round_resumes_its_torn_journal_and_leaves_a_result_and_no_journal(server, tmp_path):
    files = CategoryFiles(tmp_path / "data" / "fetch" / "seed0-n12-k3", WNID)
    store = ImageStore(tmp_path / "data" / "store")
    needed = 3
    # A round 0 killed mid-way: run it as a job with the round's journal, then tear the journal.
    _killed, killed_rows = run(job(server, store, needed, max_in_flight=2), files.journal(0))
    server.requests()
    recorded = cut_mid_line(files.journal(0), 3)

    summary = run_round(files, 0, job(server, store, needed, max_in_flight=2), settings=SETTINGS,
                                   judge=judge_image).result  # fmt: skip
    stored = {row["url"] for row in killed_rows if row["outcome"] in GOOD_BODY}
    assert not set(server.requests()) & (recorded | stored)  # (it may fetch further than the killed run)
    reference_result, _rows = reference(server, tmp_path, needed)
    assert kept(summary) == kept(reference_result) and summary.round == 0 and summary.shortfall == 0
    assert read_result(files.result(0)).to_json() == summary.to_json()
    assert not files.journal(0).exists()
    assert {row["round"] for row in csv.DictReader(files.attempts(0).open(encoding="utf-8"))} == {"0"}

    # A top-up round whose plan bans the first kept image: round 0 is replayed, nothing is asked
    # again, and the next good candidate takes the banned one's place.
    banned = summary.kept[0].sha256
    plan = RoundPlan(placeholders={banned}, rerun=[WNID])
    write_round_plan(files.folder, 1, plan)
    topped = run_round(files, 1, job(server, store, needed, max_in_flight=2), settings=SETTINGS,
                                  judge=judge_image).result  # fmt: skip
    asked_before = {row["url"] for row in read_attempts(files.attempts(0))}
    assert not set(server.requests()) & asked_before
    assert [image.image_id for image in topped.kept] == [f"{WNID}_7", f"{WNID}_9", f"{WNID}_10"]
    assert banned not in {image.sha256 for image in topped.kept} and topped.round == 1


def test_a_result_file_keeps_the_shape_earlier_versions_wrote_and_read(tmp_path):
    """One vocabulary in memory and on disk: a result's file still holds exactly the fields it
    always held, in the same order -- not an attempt's status, timing or error, nor a kept
    image's body -- and reads back as what was written."""
    from sampler.fetch.results import Attempt, KeptImage, RoundResult

    kept = KeptImage(
        "n01_1", "http://h/1.jpg", "http://h/one.jpg", "n01_1_cat.jpg", "ab", "cd", 3, 64, 48, b"abc"
    )
    judged = [
        Attempt("n01_1", "http://h/1.jpg", "http://h/one.jpg", 200, "ok", 3, 12, "cd", "ab", "", True, 2),
        Attempt("n01_2", "http://h/2.jpg", outcome="http_404", status=404, error="gone", ms=5),
    ]
    speculative = [Attempt("n01_3", "http://h/3.jpg", outcome="ok", judged=False)]
    result = RoundResult("n01", "cat", 2, [kept], True, 2, judged, 1, speculative)
    expected = """{
 "wnid": "n01",
 "label": "cat",
 "needed": 2,
 "kept": [
  {
   "image_id": "n01_1",
   "url": "http://h/1.jpg",
   "final_url": "http://h/one.jpg",
   "file": "n01_1_cat.jpg",
   "sha256": "ab",
   "md5": "cd",
   "bytes": 3,
   "width": 64,
   "height": 48
  }
 ],
 "shortfall": 1,
 "exhausted": true,
 "tried": 2,
 "judged": [
  {
   "image_id": "n01_1",
   "url": "http://h/1.jpg",
   "outcome": "ok",
   "md5": "cd",
   "sha256": "ab"
  },
  {
   "image_id": "n01_2",
   "url": "http://h/2.jpg",
   "outcome": "http_404",
   "md5": "",
   "sha256": ""
  }
 ],
 "round": 1
}
"""
    assert result.to_text() == expected
    path = tmp_path / "n01.json"
    path.write_text(expected, encoding="utf-8")
    again = read_result(path)
    assert again.to_text() == expected
    assert again.kept == [kept] and again.kept[0].body == b""  # the body is the store's
    assert [(a.url, a.outcome) for a in again.judged] == [(a.url, a.outcome) for a in judged]


JOURNAL_THEN_WAIT = """
import sys
from pathlib import Path
from sampler.fetch.http_fetch import Fetcher, FetchSettings
from sampler.fetch.image_check import judge_image
from sampler.fetch.replay import CategoryJob, run_category_job
from sampler.store import ImageStore

store, journal, urls = ImageStore(Path(sys.argv[1])), Path(sys.argv[2]), sys.argv[3:]
sample = [(f"n01234567_{i}", url) for i, url in enumerate(urls)]
job = CategoryJob("n01234567", "cat", 3, sample, lambda: iter(()), store, set(), [], max_in_flight=8)
with Fetcher(FetchSettings(per_host=8)) as fetcher:
    run_category_job(job, fetch=fetcher.fetch, judge=judge_image, journal=journal)
"""


def test_a_kill_while_the_first_candidate_is_slow_loses_none_of_the_answers_after_it(
    tmp_path, demo_server, monkeypatch
):
    """The look-ahead's answers wait for their turn in sample order; a kill meanwhile lost
    them all (they were journaled only when decided) and the rerun asked every one again:
    with shards, up to 200 URLs after one kill.  Journaled as they arrive, none is asked again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    tag = tmp_path.name
    # The first answers after seconds (a good JPEG); the rest at once: 404s and good JPEGs.
    urls = [demo_server.fault_url("slow", f"{tag}-0.jpg")]
    urls += [demo_server.fault_url("http_404" if i % 3 else "ok", f"{tag}-{i}.jpg") for i in range(1, 12)]
    store_dir, journal = tmp_path / "store", tmp_path / "round0" / f"{WNID}.journal.csv"
    env = {**os.environ, "HTTP_PROXY": demo_server.proxy_url, "http_proxy": demo_server.proxy_url}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    demo_server.clear_log()
    killed = subprocess.Popen(
        [sys.executable, "-c", JOURNAL_THEN_WAIT, str(store_dir), str(journal), *urls], env=env
    )
    try:
        deadline = time.monotonic() + 20
        while len(read_attempts(journal)) < 3:  # answers after the slow first one, journaled
            assert killed.poll() is None and time.monotonic() < deadline, "no answer journaled"
            time.sleep(0.02)
    finally:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(10)
    answered = {row["url"] for row in read_attempts(journal)}
    assert urls[0] not in answered  # the kill came while the first was still on its way

    monkeypatch.setenv("HTTP_PROXY", demo_server.proxy_url)
    monkeypatch.setenv("http_proxy", demo_server.proxy_url)
    demo_server.clear_log()
    sample = [(f"{WNID}_{i}", url) for i, url in enumerate(urls)]
    rerun = CategoryJob(
        WNID, "cat", 3, sample, lambda: iter(()), ImageStore(store_dir), set(), read_attempts(journal),
        max_in_flight=8,
    )  # fmt: skip
    with Fetcher(FetchSettings(per_host=8)) as fetcher:
        result, _rows = run_category_job(rerun, fetch=fetcher.fetch, judge=judge_image)
    asked_again = {url for _method, url, _status in demo_server.requests} & answered
    assert asked_again == set()
    assert [image.image_id for image in result.kept] == [f"{WNID}_0", f"{WNID}_3", f"{WNID}_6"]
