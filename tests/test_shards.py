"""Shard tasks: a large category set fetched a batch of categories per task (FetchShard).

The demo world has 10 categories; ``--FetchFives-shard-from 1`` makes it a "large" set, so
these tests run the shape that all 21,841 synsets take, against the per-category shape's
finished run (``finished_demo_run``): the same manifest and images, byte for byte, whichever
shape ran, after a kill -9 mid-shard too, and a shape finding the other's results asks the
web nothing.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from demo.server import DemoServer
from demo.world import CATEGORIES_CSV
from sampler.fetch.results import RoundResult
from sampler.fetch.shards import batches, describe, run_shard
from tests.conftest import REPO, Luigid, run_luigi, write_demo_config
from tests.test_rerun_after_crash import api, files_of, rerun, running, start, temporaries

SHARDS = ("--FetchFives-shard-from", "1", "--FetchFives-shard-size", "3", "--FetchFives-shard-threads", "2")


def result_of(wnid: str, kept: int = 5) -> RoundResult:
    return RoundResult(wnid=wnid, label=wnid, needed=5, kept=[], exhausted=False, tried=kept, judged=[])


# --- the plain module ------------------------------------------------------------------------


def test_batches_keep_list_order_and_every_category_once() -> None:
    wnids = [f"n{i:08d}" for i in range(10)]
    assert batches(wnids, 3) == [wnids[0:3], wnids[3:6], wnids[6:9], wnids[9:]]
    assert batches(wnids, 100) == [wnids]
    assert batches([], 3) == []
    with pytest.raises(ValueError, match="at least one category"):
        batches(wnids, 0)


def test_a_shard_runs_categories_at_once_and_says_which_and_how_many_are_done() -> None:
    categories = [(f"n{i:08d}", f"label {i}") for i in range(6)]
    at_once, most = [0], [0]
    lock = threading.Lock()
    both_started = threading.Barrier(2, timeout=10)
    reports: list[tuple[float, str]] = []

    def one(wnid: str, label: str) -> RoundResult | None:
        with lock:
            at_once[0] += 1
            most[0] = max(most[0], at_once[0])
        if wnid in ("n00000000", "n00000001"):
            both_started.wait()  # the first two run together, or this times out
        with lock:
            at_once[0] -= 1
        return None if wnid == "n00000005" else result_of(wnid)  # the last one was done before

    results = run_shard(categories, one, threads=2, progress=lambda p, m: reports.append((p, m)))
    assert sorted(results) == [wnid for wnid, _ in categories[:5]]
    assert most[0] == 2
    assert reports[0] == (0, "0/6 categories done (n00000000 label 0 … n00000005 label 5)")
    assert reports[-1][0] == 100 and reports[-1][1].startswith("6/6 categories done (n00000000 label 0 …")
    assert all(p < 100 for p, _ in reports[:-1])
    assert describe([("n1", "one")]) == "n1 one"


def test_a_failed_category_fails_the_shard_after_the_others_in_flight_finish() -> None:
    finished: list[str] = []

    def one(wnid: str, label: str) -> RoundResult | None:
        if wnid == "n2":
            raise OSError("disk full")
        time.sleep(0.05)
        finished.append(wnid)
        return result_of(wnid)

    with pytest.raises(OSError, match="disk full") as failure:
        run_shard([(f"n{i}", "x") for i in range(1, 40)], one, threads=2)
    # The traceback names the category that failed: the shard's task name lists them all.
    assert failure.value.__notes__ == ["in category n2 (x) of this shard"]
    assert "n1" in finished  # done, its files written: a rerun does only the rest
    assert len(finished) < 38  # no category started once one failed (beyond those in flight)


# --- the shape, end to end ---------------------------------------------------------------------


def results_of(data: Path) -> dict[str, bytes]:
    """Every category round's result file (fetch/<configuration>/round<R>/<wnid>.json)."""
    return {str(p.relative_to(data)): p.read_bytes() for p in sorted(data.glob("fetch/*/round*/*.json"))}


def test_the_shard_shape_makes_the_per_category_shape_s_run_byte_for_byte(
    finished_demo_run, tmp_path, demo_world
):
    reference = finished_demo_run / "data"
    with DemoServer(demo_world) as server:  # fresh: its transient faults as the reference met them
        config = write_demo_config(tmp_path, demo_world, server)
        run = run_luigi(config, server, "--workers", "2", *SHARDS)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "FetchShard(" in run.stderr and "FetchCategory(" not in run.stderr  # the shape asked for
    data = tmp_path / "data"
    assert (data / "manifest.csv").read_bytes() == (reference / "manifest.csv").read_bytes()
    assert files_of(data / "images") == files_of(reference / "images")
    # Each category's result where FetchCategory writes it, with the same bytes.
    assert results_of(data) == results_of(reference)


def asked(server: DemoServer) -> set[str]:
    """The image URLs asked at the server (not the list and words.txt it serves itself)."""
    return {url for _method, url, _status in server.requests if not url.startswith(server.url)}


@pytest.mark.parametrize("first_shape", ["per-category", "shards"])
def test_a_shape_reuses_the_other_s_categories_and_asks_no_url_again(
    first_shape, finished_demo_run, tmp_path, demo_world
):
    """Half the categories fetched by one shape (a list of the first five), then all ten by
    the other: the first five are not fetched again, and the run is the reference's."""
    reference = finished_demo_run / "data"
    half = tmp_path / "first-five.csv"
    with (demo_world / CATEGORIES_CSV).open(encoding="utf-8") as src:
        half.write_text("".join(src.readlines()[:6]), encoding="utf-8")  # the header and five
    shapes = {"per-category": (), "shards": SHARDS}
    second_shape = "shards" if first_shape == "per-category" else "per-category"
    with DemoServer(demo_world) as server:
        config = write_demo_config(tmp_path, demo_world, server, ParseSynsets={"categories": half})
        first = run_luigi(config, server, "--workers", "2", *shapes[first_shape])
        assert first.returncode == 0, first.stderr[-3000:]
        asked_first = asked(server)
        server.clear_log()
        config = write_demo_config(tmp_path, demo_world, server)
        second = run_luigi(config, server, "--workers", "2", *shapes[second_shape])
        assert second.returncode == 0, second.stderr[-3000:]
        asked_second = asked(server)
    assert ("FetchShard(" in second.stderr) == (second_shape == "shards")
    assert asked_first and asked_second
    assert asked_first & asked_second == set()  # the first five's URLs: replayed, not asked
    data = tmp_path / "data"
    assert (data / "manifest.csv").read_bytes() == (reference / "manifest.csv").read_bytes()
    assert files_of(data / "images") == files_of(reference / "images")
    assert results_of(data) == results_of(reference)


def test_kill_9_mid_shard_then_an_immediate_rerun_takes_the_shard_over_and_is_exact(
    finished_demo_run, tmp_path, demo_world, luigid: Luigid
):
    seed = int(os.environ.get("RERUN_SEED", random.randrange(10**6)))
    print("RERUN_SEED =", seed)
    rng = random.Random(seed)
    reference = finished_demo_run / "data"
    with DemoServer(demo_world) as server:
        for attempt in range(8):
            folder = tmp_path / f"crashed-{attempt}"
            data = folder / "data"
            # One category at a time per shard: a shard lasts long enough to be struck.
            config = write_demo_config(
                folder, demo_world, server, FetchFives={"shard_from": 1, "shard_size": 5, "shard_threads": 1}
            )
            run = start(folder, config, server, luigid, "FetchFives", "luigi")
            deadline = time.monotonic() + 120
            while not running(luigid, "FetchShard", data):
                assert run.poll() is None, "the run ended before a shard started"
                assert time.monotonic() < deadline, "no shard ever started"
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.4 * 0.5**attempt))
            struck = running(luigid, "FetchShard", data)
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(30)
            done = {p: p.stat().st_mtime_ns for p in data.glob("fetch/*/round0/*.json")}
            if struck and not (data / "manifest.csv").exists() and len(done) < 10:
                break
        else:
            raise AssertionError("the shards always finished before the kill")
        again = rerun(config, server, luigid, "FetchFives", "luigi")
    # luigid still listed the dead worker's shard: this run took it over, and did the rest.
    assert "which died" in again.stderr
    assert (data / "manifest.csv").read_bytes() == (reference / "manifest.csv").read_bytes()
    assert files_of(data / "images") == files_of(reference / "images")
    assert results_of(data) == results_of(reference)
    # The categories the killed run had finished stayed done: their results were not written again.
    assert {path: path.stat().st_mtime_ns for path in done} == done
    assert temporaries(data) == []
    # The UI: each shard's status message names its categories and how many are done.
    shards = api(luigid, "task_list", status="DONE", upstream_status="", search="FetchShard")
    mine = [task_id for task_id, task in shards.items() if task["params"].get("data_dir") == str(data)]
    assert len(mine) >= 2  # round 0's two shards of 5, and any top-up round's
    messages = [api(luigid, "get_task_status_message", task_id=task_id)["statusMessage"] for task_id in mine]
    assert any(message.startswith("5/5 categories done (n") for message in messages), messages


def fetch_fives_mistake(data_dir: Path, *flags: str, config: Path | None = None) -> list[str]:
    """``python -m pipeline FetchFives`` with a mistake: its stderr lines, once it has exited
    40 (a mistake) without making data_dir."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if config is not None:
        env["LUIGI_CONFIG_PATH"] = str(config)
    command = [sys.executable, "-m", "pipeline", "FetchFives", "--local-scheduler"]
    command += ["--paths-data-dir", str(data_dir)]
    run = subprocess.run(
        [*command, *flags], cwd=data_dir.parent, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 40, run.stderr[-2000:]
    assert not data_dir.exists()
    return run.stderr.strip().splitlines()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ("--FetchFives-shard-size", "0"),
            "--FetchFives-shard-size (on the command line) must be at least 1, not 0",
        ),
        (("--FetchFives-shard-threads", "65"), "must be at most [resources] fetch_slots (64)"),
    ],
)
def test_shard_knobs_that_cannot_work_fail_before_anything_runs_naming_the_flag(tmp_path, flags, message):
    assert message in fetch_fives_mistake(tmp_path / "d", *flags)[-1]


def test_the_hit_rate_folder_stays_small_and_its_readers_answer_as_before(tmp_path) -> None:
    """A rate file per category round: a run of 21,841 made every category read 21,841
    files.  A round that ends prunes all but the KEEP written last, which are all a reader
    uses: its answer is unchanged."""
    from sampler.fetch.hit_rates import KEEP, RunHitRates

    folder = tmp_path / "hit-rates"
    folder.mkdir()
    for i in range(200):
        path = folder / f"n{i:08d}-round0.rate"
        path.write_text(f"{i % 7} 10\n")
        os.utime(path, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))  # written in this order
    before = RunHitRates(folder, "fresh-round0").others()
    with RunHitRates(folder, "n99999999-round0") as ending:
        ending.add(True)
    assert len(list(folder.iterdir())) == KEEP
    assert (folder / "n99999999-round0.rate").exists()  # the newest stay
    # A reader's answer: the RECENT newest others, the one just written among them.
    with_it = RunHitRates(folder, "fresh-round0").others()
    without_it = RunHitRates(folder, "n99999999-round0").others()
    assert without_it == pytest.approx(before)
    assert with_it != before


def test_a_luigid_without_the_package_s_resources_runs_shards_one_category_at_a_time(
    tmp_path, demo_world, demo_server
):
    """A plain ``luigid`` (no [resources]) grants a task 1 fetch_slot: a shard asking for
    shard_threads of them stayed pending for ever.  It asks for what luigid grants instead."""
    from tests.conftest import free_port, wait_for_http

    port = free_port()
    unset = ("LUIGI_CONFIG_PATH", "PYTHONPATH")
    env = {name: value for name, value in os.environ.items() if name not in unset}
    plain = subprocess.Popen(
        [sys.executable, "-c", "import sys; from luigi.cmdline import luigid; luigid(sys.argv[1:])",
         "--address", "127.0.0.1", "--port", str(port), "--logdir", str(tmp_path)],
        cwd=tmp_path,  # no luigi.cfg here: luigi's defaults alone
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_http(f"http://127.0.0.1:{port}/")
        scheduler = Luigid.__new__(Luigid)
        scheduler.port = port
        config = write_demo_config(tmp_path, demo_world, demo_server)
        run = run_luigi(config, demo_server, "--workers", "2", *SHARDS, scheduler=scheduler, timeout=120)
    finally:
        plain.terminate()
        plain.wait(10)
    assert run.returncode == 0, run.stderr[-3000:]
    told = "luigid grants 1 [resources] fetch_slots, fewer than the 2 of --FetchFives-shard-threads"
    assert told in run.stderr
    assert (tmp_path / "data" / "manifest.csv").exists()


def test_a_small_fetch_slots_runs_shards_fewer_at_a_time_instead_of_refusing_the_default(
    finished_demo_run, tmp_path, demo_world, demo_server
):
    """[resources] fetch_slots below the default shard_threads (8) refused every run, even
    one that never shards; now a shard runs as many categories at once as there are slots."""
    config = write_demo_config(tmp_path, demo_world, demo_server, resources={"fetch_slots": 2})
    run = run_luigi(config, demo_server, "--FetchFives-shard-from", "1", "--FetchFives-shard-size", "5")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[resources] fetch_slots is 2, fewer than the 8 of --FetchFives-shard-threads" in run.stderr
    reference = finished_demo_run / "data"
    assert (tmp_path / "data" / "manifest.csv").read_bytes() == (reference / "manifest.csv").read_bytes()


@pytest.mark.parametrize(
    ("slots", "message"), [("0", "must be at least 1, not 0"), ("x", "not a whole number")]
)
def test_fetch_slots_under_1_fails_at_once_naming_it_instead_of_hanging(tmp_path, slots, message):
    """[resources] fetch_slots = 0 left every category or shard task PENDING for ever."""
    config = tmp_path / "my.cfg"
    config.write_text(f"[resources]\nfetch_slots = {slots}\n", encoding="utf-8")
    last = fetch_fives_mistake(tmp_path / "d", config=config)
    assert len(last) == 1 and last[0].startswith(f"ERROR: [resources] fetch_slots (in {config}")
    assert message in last[0]
