"""A rerun right after a crash, with a real luigid: exit 0 at once, the exact result, nothing left.

kill -9 of a run's whole process group leaves luigid believing that the dead worker still
runs its tasks (until ``worker_disconnect_delay`` and a prune, a minute or two): the same
command rerun at once used to exit 10, "being run by another worker", under luigi's ":)".
These tests kill runs at random moments in the fetch, the export and All's Gallery stage,
rerun at once through the same luigid, and compare with an uninterrupted run.  The seed of
the random moments is printed; ``RERUN_SEED`` repeats one.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

from sampler.export import missing_files
from tests.conftest import REPO, Luigid, pipeline_env, run_luigi, write_demo_config

EXPORT = "export/categories"  # ExportDataset's folder for the demo world's category list
# luigid ignores "pending again" for [scheduler] stable_done_cooldown_secs (1 s) after a task
# was done: the outputs removed to make a stage run again are asked for after it.
COOLDOWN = 1.2


def api(luigid: Luigid, method: str, **data: object) -> dict:
    query = urllib.parse.urlencode({"data": json.dumps(data)})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{luigid.url}/api/{method}?{query}", timeout=10) as answer:
        return json.load(answer)["response"]


def running(luigid: Luigid, family: str, data: Path) -> list[str]:
    """Task ids of ``family`` on ``data`` that luigid lists as RUNNING."""
    tasks = api(luigid, "task_list", status="RUNNING", upstream_status="", search=family)
    return [
        task_id
        for task_id, task in tasks.items()
        if task["name"] == family and task["params"].get("data_dir") == str(data)
    ]


def command(task: str, luigid: Luigid, entry: str) -> list[str]:
    module = ["luigi", "--module", "pipeline"] if entry == "luigi" else ["pipeline"]
    return [
        sys.executable, "-m", *module, task, "--no-lock", "--workers", "2",
        "--scheduler-host", "127.0.0.1", "--scheduler-port", str(luigid.port),
    ]  # fmt: skip


def start(folder: Path, config: Path, server, luigid: Luigid, task: str, entry: str) -> subprocess.Popen:
    log = (folder / f"run-{time.monotonic_ns()}.log").open("w")
    return subprocess.Popen(
        command(task, luigid, entry),
        cwd=REPO,
        env=pipeline_env(config, server),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: SIGKILL reaches the forked workers
    )


def kill_in(
    process: subprocess.Popen, luigid: Luigid, family: str, data: Path, after: float, output: Path
) -> bool:
    """SIGKILL the run's group ``after`` seconds after luigid lists ``family`` running (a
    random moment); whether it struck while it ran, before ``output`` was made.  The demo
    world's stages last a fraction of a second: each try after a miss aims sooner, down to
    the moment luigid hands the task to the worker."""
    deadline = time.monotonic() + 120
    while not running(luigid, family, data):
        assert process.poll() is None, f"the run ended before {family} started"
        assert time.monotonic() < deadline, f"{family} never started"
        time.sleep(0.05)
    time.sleep(after)
    struck = bool(running(luigid, family, data))
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)
    return struck and not output.exists()


def rerun(config: Path, server, luigid: Luigid, task: str, entry: str) -> subprocess.CompletedProcess:
    """The same command again, at once; it must not wait for luigid to give the dead worker up
    (a minute or more): 45 s is ample for what is left of the demo run."""
    run = subprocess.run(
        command(task, luigid, entry),
        cwd=REPO,
        env=pipeline_env(config, server),
        capture_output=True,
        text=True,
        timeout=45,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert "being run by another worker" not in run.stderr and "This progress looks :)" in run.stderr
    return run


def unmake(data: Path, published: str, made: str) -> None:
    """Remove an output, published view and keyed folders alike, so that a run makes it again."""
    for path in [data / published, *data.glob(made)]:
        shutil.rmtree(path, ignore_errors=True)


def temporaries(data: Path) -> list[Path]:
    return [path for path in data.rglob("*") if ".tmp-" in path.name]


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_kill_9_in_the_fetch_the_export_and_the_gallery_then_an_immediate_rerun_exits_0_exact(
    finished_demo_run, tmp_path, demo_world, demo_server, luigid
):
    seed = int(os.environ.get("RERUN_SEED", random.randrange(10**6)))
    print("RERUN_SEED =", seed)
    rng = random.Random(seed)
    # The uninterrupted result: the session's finished FetchFives, exported and reported.
    reference = tmp_path / "reference"
    shutil.copytree(finished_demo_run / "data", reference / "data", symlinks=True)
    reference_config = write_demo_config(reference, demo_world, demo_server)
    for task in ("ExportDataset", "Gallery"):
        made = run_luigi(reference_config, demo_server, "--workers", "2", task=task)
        assert made.returncode == 0, made.stderr[-3000:]

    takeovers = 0

    # 1. The fetch: ExportDataset killed while categories are being fetched (a second or two).
    for attempt in range(8):
        folder = tmp_path / f"crashed-{attempt}"
        data = folder / "data"
        config = write_demo_config(folder, demo_world, demo_server)
        run = start(folder, config, demo_server, luigid, "ExportDataset", "luigi")
        if kill_in(run, luigid, "FetchCategory", data, rng.uniform(0, 0.5**attempt), data / "manifest.csv"):
            break
    else:
        raise AssertionError("the fetch always finished before the kill")
    again = rerun(config, demo_server, luigid, "ExportDataset", "luigi")
    takeovers += again.stderr.count("which died")
    assert (data / "manifest.csv").read_bytes() == (reference / "data" / "manifest.csv").read_bytes()
    assert files_of(data / "images") == files_of(reference / "data" / "images")
    files_csv = data / EXPORT / "files.csv"
    assert files_csv.read_bytes() == (reference / "data" / EXPORT / "files.csv").read_bytes()

    # 2. The export (made again: its folder removed), killed while it writes; `python -m pipeline`.
    for attempt in range(8):
        unmake(data, EXPORT, "exports/*")
        time.sleep(COOLDOWN)
        run = start(folder, config, demo_server, luigid, "ExportDataset", "pipeline")
        if kill_in(run, luigid, "ExportDataset", data, rng.uniform(0, 0.3 * 0.5**attempt), data / EXPORT):
            break
    else:
        raise AssertionError("the export always finished before the kill")
    again = rerun(config, demo_server, luigid, "ExportDataset", "pipeline")
    takeovers += again.stderr.count("which died")
    assert files_of(data / EXPORT) == files_of(reference / "data" / EXPORT)

    # 3. All, killed in its Gallery stage.
    for attempt in range(8):
        unmake(data, "gallery", "runs/*/gallery")
        time.sleep(COOLDOWN)
        run = start(folder, config, demo_server, luigid, "All", "luigi")
        if kill_in(run, luigid, "Gallery", data, rng.uniform(0, 0.3 * 0.5**attempt), data / "gallery"):
            break
    else:
        raise AssertionError("the gallery was always finished before the kill")
    again = rerun(config, demo_server, luigid, "All", "luigi")
    takeovers += again.stderr.count("which died")
    assert files_of(data / "gallery" / "thumbs") == files_of(reference / "data" / "gallery" / "thumbs")
    assert sorted(files_of(data / "gallery")) == sorted(files_of(reference / "data" / "gallery"))

    # Every rerun found luigid still holding a dead worker's task, and took it over.
    assert takeovers >= 3
    assert temporaries(data) == []


def test_two_live_workers_started_at_once_never_run_one_task_twice(
    finished_demo_run, tmp_path, demo_world, demo_server, luigid
):
    """Taking over a dead worker's task must not take a live one's: two runs of All at once
    share the reports, each task run once, neither overruled."""
    shutil.copytree(finished_demo_run / "data", tmp_path / "data", symlinks=True)
    config = write_demo_config(tmp_path, demo_world, demo_server)
    runs = [start(tmp_path, config, demo_server, luigid, "All", "pipeline") for _ in range(2)]
    for run in runs:
        assert run.wait(90) == 0
    logs = [path.read_text() for path in sorted(tmp_path.glob("run-*.log"))]
    for family in ("ContactSheet", "RunReport", "Gallery"):
        ran = [log.count(f" running   {family}(") for log in logs]
        assert sum(ran) == 1, (family, ran)
    assert not any("which died" in log for log in logs)


def test_a_run_sweeps_every_dead_temporary_under_data_dir_whatever_it_asks_for(
    finished_demo_run, tmp_path, demo_world, demo_server
):
    shutil.copytree(finished_demo_run / "data", tmp_path / "data", symlinks=True)
    config = write_demo_config(tmp_path, demo_world, demo_server)
    data = tmp_path / "data"
    host = socket.gethostname().replace("-", "_")
    exited = subprocess.Popen(["true"])  # a process that has exited: its temporaries are a dead owner's
    exited.wait()
    dead_pid_reaped = exited.pid
    left = [
        data / "export" / f"old-name.tmp-{host}-{dead_pid_reaped}-0123abcd",  # a folder nobody asks for
        data / "runs" / "a-run" / "report" / f"run_report.json.tmp-{host}-{dead_pid_reaped}-89abcdef",
        data / "fetch" / "deep" / "er" / f"n01.json.tmp-{dead_pid_reaped}",  # the older pid-only form
    ]
    left[0].mkdir(parents=True)
    (left[0] / "train").mkdir()
    (left[0] / "train" / "x.jpg").write_bytes(b"\xff\xd8" * 1000)
    for path in left[1:]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    live = data / "runs" / "a-run" / "report" / f"summary.txt.tmp-{host}-{os.getpid()}-00000000"  # live
    live.write_text("being written")
    not_a_temporary = data / "notes" / "my.tmp-list.txt"
    not_a_temporary.parent.mkdir()
    not_a_temporary.write_text("mine")

    run = run_luigi(config, demo_server, "--local-scheduler")  # FetchFives: complete already
    assert run.returncode == 0, run.stderr[-3000:]
    assert not any(path.exists() for path in left), [p for p in left if p.exists()]
    assert live.exists() and not_a_temporary.exists()
    assert "removed 3 temporaries" in run.stderr


def test_luigid_killed_mid_fetch_and_restarted_8_s_later_costs_no_download_and_says_so(
    finished_demo_run, tmp_path, demo_world, demo_server
):
    """Progress and status messages are best-effort: a scheduler outage never fails a category.
    The run ends 0 and exact, or, when luigi itself cannot go on, with one last line saying
    that luigid went away and that a rerun resumes; the rerun is exact."""
    config = write_demo_config(tmp_path, demo_world, demo_server)
    data = tmp_path / "data"
    scheduler = Luigid(tmp_path / "luigid")
    try:
        run = start(tmp_path, config, demo_server, scheduler, "FetchFives", "luigi")
        deadline = time.monotonic() + 120
        while not running(scheduler, "FetchCategory", data):
            assert run.poll() is None and time.monotonic() < deadline, "the fetch never started"
            time.sleep(0.05)
        scheduler.process.kill()
        scheduler.process.wait()
        time.sleep(8)
        scheduler.stop()
        scheduler = Luigid(tmp_path / "luigid", port=scheduler.port)
        code = run.wait(120)
        output = next(tmp_path.glob("run-*.log")).read_text()
        assert "Traceback" not in output.partition("Uncaught exception in luigi")[0], output[-4000:]
        if code != 0:
            last = output.strip().splitlines()[-1]
            assert "luigid at" in last and "went away" in last and "rerun the same command" in last, last
            rerun(config, demo_server, scheduler, "FetchFives", "luigi")
    finally:
        scheduler.stop()
    assert (data / "manifest.csv").read_bytes() == (finished_demo_run / "data" / "manifest.csv").read_bytes()
    assert files_of(data / "images") == files_of(finished_demo_run / "data" / "images")


def exports_of(data: Path) -> dict[str, dict]:
    """Every keyed export's export.json, by its folder name."""
    return {
        path.parent.name: json.loads(path.read_text()) for path in (data / "exports").glob("*/export.json")
    }


def self_consistent(export: Path, run: Path) -> None:
    """The export holds exactly the run folder's manifest, and every file it lists is there."""
    with (run / "manifest.csv").open(encoding="utf-8", newline="") as src:
        manifest = {row["image_id"] for row in csv.DictReader(src)}
    with (export / "files.csv").open(encoding="utf-8", newline="") as src:
        exported = {row["image_id"] for row in csv.DictReader(src)}
    assert manifest and exported == manifest
    assert missing_files(export, json.loads((export / "export.json").read_text())) == []


def test_two_configurations_at_once_and_one_after_the_other_keep_their_outputs_and_going_back_is_free(
    tmp_path, demo_world, demo_server, luigid
):
    """Seeds 1 and 2 at once, then class_names=label after them: each export stands in its own
    folder, complete; both runs exit 0; the published view is one configuration's whole; and
    going back to seed 1 republishes it without a request."""
    config = write_demo_config(tmp_path, demo_world, demo_server)
    data = tmp_path / "data"
    runs = {}
    for seed in (1, 2):
        log = (tmp_path / f"seed{seed}.log").open("w")
        runs[seed] = subprocess.Popen(
            [*command("ExportDataset", luigid, "luigi"), "--SampleUrls-seed", str(seed)],
            cwd=REPO,
            env=pipeline_env(config, demo_server),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    for seed, run in runs.items():
        assert run.wait(240) == 0, (tmp_path / f"seed{seed}.log").read_text()[-3000:]
        assert "This progress looks :)" in (tmp_path / f"seed{seed}.log").read_text()
    labelled = run_luigi(
        config, demo_server, "--SampleUrls-seed", "2", "--ExportDataset-class-names", "label",
        task="ExportDataset", scheduler=luigid,
    )  # fmt: skip
    assert labelled.returncode == 0, labelled.stderr[-3000:]

    exports = exports_of(data)
    by_setting = {
        (e["provenance"]["seed"], e["settings"]["class_names"]): name for name, e in exports.items()
    }
    assert set(by_setting) == {(1, "wnid"), (2, "wnid"), (2, "label")}, exports.keys()
    for (seed, _), name in by_setting.items():
        [run_dir] = (data / "runs").glob(f"*-seed{seed}-n*")
        self_consistent(data / "exports" / name, run_dir)

    def classes(name: str) -> list[tuple[str, ...]]:  # index, wnid, label (not the folder)
        with (data / "exports" / name / "classes.csv").open(encoding="utf-8", newline="") as src:
            return [(row["index"], row["wnid"], row["label"]) for row in csv.DictReader(src)]

    assert classes(by_setting[2, "label"]) == classes(by_setting[2, "wnid"])  # one fetch, two exports
    # The published view: the last configuration asked for, whole.
    published = json.loads((data / EXPORT / "export.json").read_text())
    assert (published["provenance"]["seed"], published["settings"]["class_names"]) == (2, "label")
    [seed2] = (data / "runs").glob("*-seed2-n*")
    assert (data / "manifest.csv").read_bytes() == (seed2 / "manifest.csv").read_bytes()

    # Going back: no request, and the view is seed 1's again, images included.
    demo_server.clear_log()
    back = run_luigi(config, demo_server, "--SampleUrls-seed", "1", task="ExportDataset", scheduler=luigid)
    assert back.returncode == 0, back.stderr[-3000:]
    assert demo_server.requests == []
    [seed1] = (data / "runs").glob("*-seed1-n*")
    assert (data / "manifest.csv").read_bytes() == (seed1 / "manifest.csv").read_bytes()
    assert json.loads((data / EXPORT / "export.json").read_text())["provenance"]["seed"] == 1
    assert sorted(p.name for p in (data / "images").iterdir()) == sorted(
        p.name for p in (seed1 / "images").iterdir()
    )
    assert exports_of(data) == exports  # nothing made again, nothing lost


def test_luigid_gone_for_good_mid_run_ends_in_one_line_naming_the_luigid_the_run_used(
    tmp_path, demo_world, demo_server
):
    """luigi's worker gives up on an RPC once its retries are spent: the last line says that
    luigid went away, and names the one this run talked to (its --scheduler-port), not the
    configuration's default, which is all that is left once luigi's command line has ended."""
    config = write_demo_config(tmp_path, demo_world, demo_server)
    data = tmp_path / "data"
    scheduler = Luigid(tmp_path / "luigid")
    try:
        run = start(tmp_path, config, demo_server, scheduler, "FetchFives", "luigi")
        deadline = time.monotonic() + 120
        while not running(scheduler, "FetchCategory", data):
            assert run.poll() is None and time.monotonic() < deadline, "the fetch never started"
            time.sleep(0.05)
    finally:
        scheduler.stop()
    code = run.wait(180)
    output = next(tmp_path.glob("run-*.log")).read_text()
    last = output.strip().splitlines()[-1]
    assert code != 0, output[-3000:]
    assert last.startswith(f"luigid at {scheduler.url} went away"), last


def test_dependencies_luigid_calls_done_whose_outputs_are_gone_fail_once_not_for_ever(
    tmp_path, demo_world, demo_server, luigid
):
    """luigid ignores "pending again" for a second after a task was done
    ([scheduler] stable_done_cooldown_secs): SampleUrls' outputs removed and FetchFives run at
    once (made certain here: another worker keeps calling it done), luigid hands out the
    categories, which fail luigi's check of their dependencies before their run.  The worker
    never asks for SampleUrls again, so every retry failed the same way, for minutes (a
    keep-alive worker: without end).  The run stops at the first, in one line, and a rerun
    makes the sample again."""
    config = write_demo_config(tmp_path, demo_world, demo_server)
    data = tmp_path / "data"
    made = run_luigi(config, demo_server, task="SampleUrls", scheduler=luigid)
    assert made.returncode == 0, made.stderr[-3000:]
    done = api(luigid, "task_list", status="DONE", upstream_status="", search="SampleUrls")
    sample_ids = [
        i for i, t in done.items() if t["name"] == "SampleUrls" and t["params"]["data_dir"] == str(data)
    ]
    assert len(sample_ids) == 1
    shutil.rmtree(data / "sample")

    stop = threading.Event()

    def another_worker_calls_it_done() -> None:
        while not stop.is_set():
            api(luigid, "add_task", task_id=sample_ids[0], status="DONE", worker="another-worker")
            stop.wait(0.2)

    caller = threading.Thread(target=another_worker_calls_it_done)
    caller.start()
    try:
        run = subprocess.run(
            command("FetchFives", luigid, "luigi"),
            cwd=REPO,
            env=pipeline_env(config, demo_server),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        stop.set()
        caller.join()
    assert run.returncode == 30, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: FetchCategory failed: luigid called its dependencies done"), last
    assert "rerun the same command" in last
    assert "Traceback" not in run.stderr, run.stderr[-3000:]

    time.sleep(COOLDOWN)
    again = rerun(config, demo_server, luigid, "FetchFives", "luigi")
    assert "This progress looks :)" in again.stderr
    assert (data / "manifest.csv").is_file()
