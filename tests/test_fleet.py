"""One run over many machines: leases say which processes of a shared data_dir are alive.

The multi-host test runs two workers that present different host names, each in its own
UTS namespace (``unshare --uts``, its own ``hostname``), on one real luigid and one
data_dir, and kills one with -9 while it fetches.  The other takes over once the dead
one's lease expired, and the result is the one-process run's, byte for byte.  Likewise when
the dead one ran FetchFives and dies in a top-up round it yielded, whose tasks luigid would
give to no other worker.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import demo.world as dw
from demo.server import DemoServer
from sampler.atomic import sweep_dead_temporaries, temporary_sibling
from sampler.lease import FOLDER, Lease, hold_lease, host_name, lease_path, read_lease, release_all
from tests.conftest import REPO, Luigid, pipeline_env, write_demo_config
from tests.test_rerun_after_crash import api, files_of, temporaries


def write_lease(data_dir: Path, host: str, pid: int, renewed: float, seconds: float = 10.0) -> None:
    path = lease_path(data_dir, host, pid)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"host": host, "pid": pid, "boot_id": "b", "renewed": renewed, "seconds": seconds}
    path.write_text(json.dumps(record))


def foreign_temporary(data_dir: Path, host: str, pid: int, age: float) -> Path:
    folder = data_dir / "fetch" / "n01440764"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"results.jsonl.tmp-{host}-{pid}-0123abcd"
    path.write_bytes(b"half a file")
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_another_hosts_temporaries_stay_while_its_lease_is_renewed_and_go_once_it_expired(tmp_path):
    data = tmp_path / "data"
    # Written an hour ago by a process of a host whose lease is fresh: it may still write.
    kept = foreign_temporary(data, "otherhost", 4242, age=3600)
    write_lease(data, "otherhost", 4242, renewed=time.time())
    assert sweep_dead_temporaries(data) == [] and kept.exists()
    # The lease stopped being renewed 30 s ago (10 s period): the machine is gone.
    write_lease(data, "otherhost", 4242, renewed=time.time() - 30)
    assert sweep_dead_temporaries(data) == [kept] and not kept.exists()
    # A host that never held a lease here keeps a recent temporary (24 h, as before).
    recent = foreign_temporary(data, "unleased", 7, age=60)
    assert sweep_dead_temporaries(data) == [] and recent.exists()
    # This host's own temporaries are judged by pid, as before: a live one stays.
    own = temporary_sibling(data / "fetch" / "x.json")
    own.write_bytes(b"")
    assert sweep_dead_temporaries(data) == [] and own.exists()
    # A pid not running here, of a host with this one's name: dead, unless another machine
    # of that name (another boot id) renews a lease here.
    twin = foreign_temporary(data, host_name(), 999_999_999, age=3600)
    write_lease(data, host_name(), 999_999_998, renewed=time.time())  # boot id "b": a twin
    assert sweep_dead_temporaries(data) == [] and twin.exists()
    write_lease(data, host_name(), 999_999_998, renewed=time.time() - 30)
    assert sweep_dead_temporaries(data) == [twin]


def test_a_lease_is_renewed_while_its_process_lives_and_removed_on_a_clean_exit(tmp_path):
    lease = Lease(tmp_path, seconds=0.6)
    first = read_lease(lease.path)
    assert first is not None and first.pid == os.getpid() and first.fresh()
    time.sleep(0.5)
    later = read_lease(lease.path)
    assert later is not None and later.renewed > first.renewed
    lease.release()
    assert not lease.path.exists()
    held = hold_lease(tmp_path, 5)
    assert held is hold_lease(tmp_path, 5)
    child = os.fork()
    if child == 0:  # as luigi's task processes are made: the child exits, the lease stays
        release_all()
        os._exit(0)
    assert os.waitpid(child, 0)[1] == 0
    assert read_lease(held.path) is not None
    release_all()
    assert list((tmp_path / FOLDER).glob("*.lease")) == []


def unshare_works() -> bool:
    try:
        probe = subprocess.run(
            ["unshare", "--uts", "--fork", "sh", "-c", "hostname fleet-probe && hostname"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0 and probe.stdout.strip() == "fleet-probe"


def start_on_host(host: str, folder: Path, config: Path, server, luigid: Luigid) -> subprocess.Popen:
    """``python -m pipeline FetchFives`` in a UTS namespace of its own named ``host``."""
    log = (folder / f"{host}.log").open("w")
    return subprocess.Popen(
        [
            "unshare",
            "--uts",
            "--fork",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            host,
            sys.executable,
            "-m",
            "pipeline",
            "FetchFives",
            "--workers",
            "2",
            "--scheduler-host",
            "127.0.0.1",
            "--scheduler-port",
            str(luigid.port),
        ],  # fmt: skip
        cwd=REPO,
        env=pipeline_env(config, server),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: SIGKILL reaches the forked workers
    )


def running_on(luigid: Luigid, host: str, data: Path) -> list[str]:
    tasks = api(luigid, "task_list", status="RUNNING", upstream_status="", search="FetchCategory")
    return [
        task_id
        for task_id, task in tasks.items()
        if task["params"].get("data_dir") == str(data)
        and f"host={host}," in (task.get("worker_running") or "")
    ]


FLEET_REQUESTS = 16  # requests in flight at once, alpha and beta together (fleet-wide slots)


def fetch_tasks(luigid: Luigid, data: Path) -> dict[str, dict]:
    """{task id: luigid's entry} for every FetchCategory of ``data``, whatever its status."""
    tasks = api(luigid, "task_list", status="", upstream_status="", search="FetchCategory")
    return {task_id: task for task_id, task in tasks.items() if task["params"].get("data_dir") == str(data)}


def categories_of_answers(world: Path) -> dict[str, set[str]]:
    """{url_key of a URL the server answers 200 (a redirect's target): wnids listing it}."""
    found: dict[str, set[str]] = collections.defaultdict(set)
    for url, entry in dw.load_world(world)["urls"].items():
        wnids = {image_id.split("_")[0] for image_id in entry["ids"]}
        found[dw.url_key(entry.get("target") or url)] |= wnids
    return found


def images_fetched(server: DemoServer) -> collections.Counter:
    """How many times each URL was answered 200 (an image fetched) at the server."""
    return collections.Counter(url for _method, url, status in server.requests if status == 200)


@pytest.mark.skipif(not unshare_works(), reason="needs `unshare --uts` (root, or user namespaces)")
def test_two_hosts_one_killed_9_mid_fetch_the_other_redoes_its_work_exact_nothing_fetched_twice(
    finished_demo_run, tmp_path, demo_world
):
    """alpha and beta share one luigid and one data_dir; alpha dies (kill -9) while it runs
    a FetchCategory.  beta, waiting for that task, takes it over once alpha's lease expired
    (not luigid's worker_disconnect_delay), and the run is the one-process run's."""
    reference = finished_demo_run / "data"
    luigid = Luigid(tmp_path / "luigid")
    started: list[subprocess.Popen] = []
    try:
        for attempt in range(6):
            folder = tmp_path / f"try-{attempt}"
            data = folder / "data"
            # A fresh server each try: its transient faults fail the first request, as they
            # did for the reference run.
            with DemoServer(demo_world) as server:
                config = write_demo_config(
                    folder, demo_world, server,
                    fleet={"lease_seconds": 2}, FetchCategory={"fleet_requests": FLEET_REQUESTS},
                )  # fmt: skip
                alpha = start_on_host("alpha", folder, config, server, luigid)
                started.append(alpha)
                deadline = time.monotonic() + 60
                while not running_on(luigid, "alpha", data):
                    assert alpha.poll() is None, (folder / "alpha.log").read_text()[-3000:]
                    assert time.monotonic() < deadline, "alpha never ran a FetchCategory"
                    time.sleep(0.02)
                beta = start_on_host("beta", folder, config, server, luigid)
                started.append(beta)
                time.sleep(0.3 * 0.5**attempt)  # beta schedules; alpha is mid-fetch
                struck = running_on(luigid, "alpha", data)
                os.killpg(alpha.pid, signal.SIGKILL)
                alpha.wait(30)
                # What luigid lists as alpha's now, before its lease expires (2 s): every task
                # alpha started and did not report, whatever started since the look above.
                struck = sorted({*struck, *running_on(luigid, "alpha", data)})
                assert beta.wait(150) == 0, (folder / "beta.log").read_text()[-4000:]
                fetched = images_fetched(server)
            # luigid still lists alpha's worker (it gives one up after worker_disconnect_delay,
            # a minute): beta took alpha's tasks over on the lease, not on luigid's timeout.
            alpha_listed = any(worker.get("host") == "alpha" for worker in api(luigid, "worker_list"))
            if struck and "died; handed back to luigid" in (folder / "beta.log").read_text():
                break
        else:
            raise AssertionError("alpha always finished its categories before the kill")
        assert alpha_listed
        assert (data / "manifest.csv").read_bytes() == (reference / "manifest.csv").read_bytes()
        assert files_of(data / "images") == files_of(reference / "images")
        # Fetched twice: only what alpha had in flight when it died.  Every such URL is of a
        # category alpha was running then (what alpha finished is never asked again), and
        # there are at most as many as its request slots (FLEET_REQUESTS, which alpha and beta
        # share).  Not per_host: a category asks many hosts at once, and a host's limit grows
        # up to per_host_max.  The demo answers at once, and on a loaded machine the answered
        # bodies wait in alpha's sockets, not yet stored: with 64 slots, 9 were seen once.
        twice = [url for url, count in fetched.items() if count > 1]
        print(f"fetched twice: {len(twice)} URLs; tries: {attempt + 1}")
        killed = {
            task["params"]["wnid"] for task_id, task in fetch_tasks(luigid, data).items() if task_id in struck
        }
        categories = categories_of_answers(demo_world)
        assert all(categories[dw.url_key(url)] & killed for url in twice), (twice, killed)
        assert len(twice) <= FLEET_REQUESTS, twice
        # alpha's temporaries are gone once its lease expired: a later run sweeps them.
        sweep_dead_temporaries(data)
        assert temporaries(data) == []
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)
        luigid.stop()


def alpha_running(luigid: Luigid, data: Path) -> dict[str, dict]:
    """{task id: its entry} for the FetchCategory tasks luigid lists as run by host alpha."""
    tasks = api(luigid, "task_list", status="RUNNING", upstream_status="", search="FetchCategory")
    return {
        task_id: task
        for task_id, task in tasks.items()
        if task["params"].get("data_dir") == str(data) and "host=alpha," in (task.get("worker_running") or "")
    }


@pytest.mark.skipif(not unshare_works(), reason="needs `unshare --uts` (root, or user namespaces)")
def test_a_host_killed_after_its_task_wrote_its_output_before_telling_luigid_blocks_nobody(
    finished_demo_run, tmp_path, demo_world
):
    """alpha's FetchCategory has written its output, and alpha is killed -9 before it tells
    luigid (the window between a task process's end and its worker's report, here held open
    by stopping alpha's worker process, its lease kept fresh meanwhile).  beta schedules then:
    it finds the category complete, and luigid, listing it as alpha's, ignores beta's "done".
    Once alpha's lease expired, beta tells luigid the category is done, instead of handing
    it back as pending to no worker that would run it and waiting for it for ever."""
    reference = finished_demo_run / "data"
    luigid = Luigid(tmp_path / "luigid")
    started: list[subprocess.Popen] = []
    alive = threading.Event()
    try:
        with DemoServer(demo_world) as server:
            data = tmp_path / "data"
            config = write_demo_config(tmp_path, demo_world, server, fleet={"lease_seconds": 2})
            alpha = start_on_host("alpha", tmp_path, config, server, luigid)
            started.append(alpha)
            deadline = time.monotonic() + 60
            while not (struck := alpha_running(luigid, data)):
                assert alpha.poll() is None, (tmp_path / "alpha.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "alpha never ran a FetchCategory"
                time.sleep(0.02)
            pid = next(w["pid"] for w in api(luigid, "worker_list") if w.get("host") == "alpha")
            os.kill(pid, signal.SIGSTOP)  # its task processes go on; it tells luigid nothing more

            def renew_alphas_lease() -> None:  # as alpha's (stopped) lease thread would
                while alive.is_set():
                    write_lease(data, "alpha", pid, renewed=time.time(), seconds=2.0)
                    time.sleep(0.2)

            alive.set()
            threading.Thread(target=renew_alphas_lease, daemon=True).start()
            task_id, entry = next(iter(struck.items()))
            done_line = re.compile(rf"done +FetchCategory\(.*wnid={entry['params']['wnid']},")
            while not done_line.search((tmp_path / "alpha.log").read_text()):
                assert time.monotonic() < deadline, "alpha's task process never finished its category"
                time.sleep(0.05)
            beta = start_on_host("beta", tmp_path, config, server, luigid)
            started.append(beta)
            while "Done scheduling tasks" not in (tmp_path / "beta.log").read_text():
                assert beta.poll() is None, (tmp_path / "beta.log").read_text()[-3000:]
                assert time.monotonic() < deadline + 60, "beta never scheduled"
                time.sleep(0.05)
            assert task_id in alpha_running(luigid, data)  # luigid ignored beta's "complete"
            alive.clear()
            os.killpg(alpha.pid, signal.SIGKILL)
            alpha.wait(30)
            try:
                code = beta.wait(90)  # 2 s of lease, a second of watch: 90 s is "for ever"
            except subprocess.TimeoutExpired:
                code = None
            log = (tmp_path / "beta.log").read_text()
            assert code == 0, log[-4000:]
        assert "died after finishing it, before telling luigid" in log
        assert (data / "manifest.csv").read_bytes() == (reference / "manifest.csv").read_bytes()
        assert files_of(data / "images") == files_of(reference / "images")
    finally:
        alive.clear()
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)
        luigid.stop()


def top_up_running(luigid: Luigid, data: Path) -> dict[str, str]:
    """{task id: host running it} for every top-up round FetchCategory (round ≥ 1) of ``data``."""
    tasks = api(luigid, "task_list", status="RUNNING", upstream_status="", search="FetchCategory")
    return {
        task_id: re.sub(r".*host=([^,]*),.*", r"\1", task.get("worker_running") or "")
        for task_id, task in tasks.items()
        if task["params"].get("data_dir") == str(data) and task["params"].get("round", "0") != "0"
    }


def renew_lease(alive: threading.Event, data: Path, host: str, pid: int) -> None:
    """As the lease thread of a stopped process would, while ``alive`` is set."""
    while alive.is_set():
        write_lease(data, host, pid, renewed=time.time(), seconds=2.0)
        time.sleep(0.2)


def parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def worker_of(luigid: Luigid, host: str, process: subprocess.Popen) -> dict | None:
    """luigid's entry for the worker ``process`` started (under ``unshare --fork``), once
    it told luigid who it is (as it starts running tasks, after scheduling)."""
    for worker in api(luigid, "worker_list"):
        if worker.get("host") == host and parent_pid(worker["pid"]) == process.pid:
            return worker
    return None


def hold_idle(luigid: Luigid, host: str, process: subprocess.Popen, deadline: float) -> int | None:
    """SIGSTOP ``host``'s worker process at a moment it runs no task; its pid (None: it ended)."""
    while process.poll() is None:
        assert time.monotonic() < deadline, f"{host} never stood idle"
        worker = worker_of(luigid, host, process)
        if worker is not None and not worker.get("running"):
            try:
                os.kill(worker["pid"], signal.SIGSTOP)
            except ProcessLookupError:
                return None
            time.sleep(0.5)  # a request for work it sent just before, answered meanwhile
            if not (worker_of(luigid, host, process) or {}).get("running"):
                return worker["pid"]
            os.kill(worker["pid"], signal.SIGCONT)
        time.sleep(0.05)
    return None


@pytest.mark.skipif(not unshare_works(), reason="needs `unshare --uts` (root, or user namespaces)")
def test_a_host_killed_in_a_top_up_round_it_yielded_blocks_nobody(finished_demo_run, tmp_path, demo_world):
    """beta schedules FetchFives while alpha fetches round 0, and is held (SIGSTOP, its lease
    kept fresh) so that alpha runs FetchFives, which yields a top-up round: dynamic
    dependencies, of which luigid lists alpha alone as worker.  alpha dies (kill -9) while it
    runs one of them, and beta goes on.  Once alpha's lease expired, beta hands the round
    back and becomes a worker of it (the tasks alpha ran and those it had not started),
    instead of waiting for ever for tasks that only a dead worker may run."""
    reference = finished_demo_run / "data"
    luigid = Luigid(tmp_path / "luigid")
    started: list[subprocess.Popen] = []
    alive = threading.Event()
    try:
        for attempt in range(6):
            folder = tmp_path / f"try-{attempt}"
            data = folder / "data"
            with DemoServer(demo_world) as server:
                config = write_demo_config(
                    folder, demo_world, server,
                    fleet={"lease_seconds": 2}, FetchCategory={"fleet_requests": FLEET_REQUESTS},
                )  # fmt: skip
                alpha = start_on_host("alpha", folder, config, server, luigid)
                started.append(alpha)
                deadline = time.monotonic() + 60
                while not running_on(luigid, "alpha", data):
                    assert alpha.poll() is None, (folder / "alpha.log").read_text()[-3000:]
                    assert time.monotonic() < deadline, "alpha never ran a FetchCategory"
                    time.sleep(0.02)
                alpha_worker = worker_of(luigid, "alpha", alpha)  # it runs a task: it said who it is
                assert alpha_worker is not None and alpha_worker["pid"] > 1
                alpha_pid = alpha_worker["pid"]
                beta = start_on_host("beta", folder, config, server, luigid)  # before any top-up
                started.append(beta)
                while "Done scheduling tasks" not in (folder / "beta.log").read_text():
                    assert beta.poll() is None, (folder / "beta.log").read_text()[-3000:]
                    assert time.monotonic() < deadline, "beta never scheduled"
                    time.sleep(0.02)
                beta_pid = hold_idle(luigid, "beta", beta, deadline)
                if beta_pid is None:  # alpha and beta finished first: again
                    alpha.wait(60)
                    continue

                alive.set()
                threading.Thread(
                    target=renew_lease, args=(alive, data, "beta", beta_pid), daemon=True
                ).start()
                # alpha's task processes log "running" as they start: the first of a top-up
                # round stops alpha's worker (luigid's view frozen), then alpha dies.
                top_up = re.compile(r"running +FetchCategory\(.*, round=[1-9]")
                while not top_up.search((folder / "alpha.log").read_text()) and alpha.poll() is None:
                    assert time.monotonic() < deadline + 60, "no top-up round ran"
                    time.sleep(0.005)
                with contextlib.suppress(ProcessLookupError):  # alpha may have just finished
                    os.kill(alpha_pid, signal.SIGSTOP)
                struck = top_up_running(luigid, data)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(alpha.pid, signal.SIGKILL)
                alpha.wait(30)
                # Every task alpha started and did not report, whatever started since the look.
                killed = sorted({*struck, *running_on(luigid, "alpha", data)})
                alive.clear()
                os.kill(beta_pid, signal.SIGCONT)
                try:
                    code = beta.wait(90)  # 2 s of lease, a second of watch: 90 s is "for ever"
                except subprocess.TimeoutExpired:
                    code = None
                log = (folder / "beta.log").read_text()
                fetched = images_fetched(server)
            assert code == 0, log[-4000:]
            if struck:
                break
        else:
            raise AssertionError("alpha always finished its top-up round before it was seen running")
        assert set(struck.values()) == {"alpha"}
        assert "died; handed back to luigid" in log and "pending for dead workers only" in log
        assert (data / "manifest.csv").read_bytes() == (reference / "manifest.csv").read_bytes()
        assert files_of(data / "images") == files_of(reference / "images")
        # Fetched twice: only what alpha had in flight, as in the first test.
        twice = [url for url, count in fetched.items() if count > 1]
        print(f"fetched twice: {len(twice)} URLs; tries: {attempt + 1}; killed in: {killed}")
        wnids = {
            task["params"]["wnid"] for task_id, task in fetch_tasks(luigid, data).items() if task_id in killed
        }
        categories = categories_of_answers(demo_world)
        assert all(categories[dw.url_key(url)] & wnids for url in twice), (twice, wnids)
        assert len(twice) <= FLEET_REQUESTS, twice
    finally:
        alive.clear()
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)
        luigid.stop()
