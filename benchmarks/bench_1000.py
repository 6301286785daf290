"""1000 categories (the ilsvrc2012 preset) on a demo world, through luigid and locally.

``python -m benchmarks.bench_1000 [--folder bench-data/1000] [--workers 8] [--per-category 5]``

Builds a demo world of ILSVRC-2012's 1000 classes (once), serves it on loopback, runs the
stages up to SampleUrls once, then times FetchFives alone, each time from an empty fetch/:

- through a luigid started with the project's luigi.cfg;
- through a luigid with ``[scheduler] prune_on_get_work = false``;
- with the local scheduler;

and, for each scheduler, benchmarks/luigi_floor.py's 1000 empty tasks (luigi's own cost).
While FetchFives runs it samples the memory (RSS) of luigid and of the worker processes,
and how long luigid's UI API takes to list the finished tasks.  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

from benchmarks.bench_fetch import REPO, free_port, proxy_env
from demo.config import write_demo_config
from demo.world import build_demo_world
from sampler.categories.sets import PRESETS

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found


class Sampler(threading.Thread):
    """Peak RSS of luigid and of the pipeline's process tree; UI API timings."""

    def __init__(self, luigid_pid: int | None, run_pid: int, ui_url: str | None) -> None:
        super().__init__(daemon=True)
        self.luigid_pid, self.run_pid, self.ui_url = luigid_pid, run_pid, ui_url
        self.peak_luigid = self.peak_workers = self.peak_processes = 0
        self.ui: list[tuple[float, int, int]] = []  # (seconds, bytes, tasks listed)
        self.stop = threading.Event()

    def run(self) -> None:
        last_ui = 0.0
        while not self.stop.is_set():
            tree = descendants(self.run_pid)
            self.peak_processes = max(self.peak_processes, len(tree))
            self.peak_workers = max(self.peak_workers, sum(rss_kib(p) for p in tree))
            if self.luigid_pid:
                self.peak_luigid = max(self.peak_luigid, rss_kib(self.luigid_pid))
            if self.ui_url and time.monotonic() - last_ui > 5:
                last_ui = time.monotonic()
                self.ui.append(ui_listing(self.ui_url))
            self.stop.wait(0.5)


def ui_listing(url: str) -> tuple[float, int, int]:
    """What the UI's Task List asks for: every task of each status."""
    t0, size, tasks = time.perf_counter(), 0, 0
    for status in ("DONE", "RUNNING", "PENDING"):
        query = urllib.parse.quote(json.dumps({"status": status, "upstream_status": "", "search": ""}))
        with _DIRECT.open(f"{url}/api/task_list?data={query}", timeout=120) as resp:
            body = resp.read()
        size += len(body)
        tasks += len(json.loads(body)["response"])
    return time.perf_counter() - t0, size, tasks


class Luigid:
    def __init__(self, folder: Path, config: Path | None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        if config is not None:
            env["LUIGI_CONFIG_PATH"] = str(config)
        command = [sys.executable, "-c", "from luigi.cmdline import luigid; luigid()"]
        command += ["--address", "127.0.0.1", "--port", str(self.port)]
        command += ["--state-path", str(folder / "state.pickle"), "--logdir", str(folder)]
        self.process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(200):
            try:
                _DIRECT.open(self.url + "/", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("luigid did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def timed_run(command: list[str], env: dict, log: Path, luigid: Luigid | None) -> dict:
    t0 = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        sampler = Sampler(luigid.process.pid if luigid else None, process.pid, luigid.url if luigid else None)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    code = os.waitstatus_to_exitcode(status)
    process.returncode = code
    if code != 0:
        raise SystemExit(f"{' '.join(command)} exited {code}; see {log}")
    result: dict[str, object] = {
        "seconds": round(seconds, 1),
        "cpu": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_processes": sampler.peak_processes,
        "peak_workers_mib": round(sampler.peak_workers / 1024),
    }
    if luigid:
        result["peak_luigid_mib"] = round(sampler.peak_luigid / 1024)
        if sampler.ui:
            result["ui_listing_max_s"] = round(max(s for s, _, _ in sampler.ui), 2)
            result["ui_listing_max_kib"] = round(max(b for _, b, _ in sampler.ui) / 1024)
        result["ui_after"] = ui_listing(luigid.url)
    return result


def clear_fetch(data: Path) -> None:
    for name in ("fetch", "images"):
        shutil.rmtree(data / name, ignore_errors=True)
    for name in ("manifest.csv", "attempts.csv", "fetch_summary.json"):
        (data / name).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_1000")
    parser.add_argument("--folder", type=Path, default=REPO / "bench-data" / "1000")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--per-category", type=int, default=5)
    parser.add_argument("--latency", type=float, nargs=2, default=(0.01, 0.04))
    parser.add_argument("--only", nargs="*", default=["luigid", "luigid-noprune", "local"])
    args = parser.parse_args(argv)
    folder = args.folder.resolve()
    world = folder / "world"
    if not (world / "world.json").exists():
        t0 = time.perf_counter()
        build_demo_world(world, categories_csv=PRESETS["ilsvrc2012"], n_categories=1000)
        print(f"world built in {time.perf_counter() - t0:.1f} s", flush=True)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "demo.server", "--world", str(world), "--port", str(port)]
        + ["--latency", *(str(x) for x in args.latency)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    server_url = server.stdout.readline().strip()

    class Proxy:
        url = server_url

    results: dict[str, dict] = {}
    try:
        # Where things live; every fetch and worker setting stays as luigi.cfg has it.
        config = write_demo_config(
            folder / "bench-luigi.cfg", server_url, folder / "data", "ilsvrc2012", fetch_timeouts=None
        )
        env = proxy_env(Proxy, config)  # type: ignore[arg-type]
        data = folder / "data"
        base = [sys.executable, "-m", "pipeline"]
        t0 = time.perf_counter()
        subprocess.run(
            base + ["SampleUrls", "--local-scheduler"], cwd=REPO, env=env, check=True, capture_output=True
        )
        print(f"up to SampleUrls: {time.perf_counter() - t0:.1f} s", flush=True)
        noprune = folder / "noprune.cfg"
        noprune.write_text("[scheduler]\nprune_on_get_work = false\n")
        for name in args.only:
            luigid = None
            if name.startswith("luigid"):
                luigid = Luigid(folder / f"luigid-{name}", noprune if name == "luigid-noprune" else None)
            sched = ["--scheduler-port", str(luigid.port)] if luigid else ["--local-scheduler"]
            try:
                clear_fetch(data)
                command = base + ["FetchFives", "--workers", str(args.workers), "--no-lock"] + sched
                command += ["--FetchFives-per-category", str(args.per_category)]
                results[f"FetchFives {name}"] = timed_run(command, env, folder / f"{name}.log", luigid)
                print(name, results[f"FetchFives {name}"], flush=True)
                floor = folder / "floor"
                shutil.rmtree(floor, ignore_errors=True)
                floor.mkdir()
                command = [sys.executable, "-m", "luigi", "--module", "benchmarks.luigi_floor", "EmptyFives"]
                command += [
                    "--folder",
                    str(floor),
                    "--tasks",
                    "1000",
                    "--workers",
                    str(args.workers),
                    "--no-lock",
                ]
                results[f"floor {name}"] = timed_run(
                    command + sched, env, folder / f"floor-{name}.log", luigid
                )
                print("floor", name, results[f"floor {name}"], flush=True)
            finally:
                if luigid:
                    luigid.stop()
        manifest = (data / "manifest.csv").read_text(encoding="utf-8").count("\n") - 1
        results["kept"] = {"images": manifest}
    finally:
        server.terminate()
        server.wait(30)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
