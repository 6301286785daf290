"""All of ImageNet (21,841 synsets x 5) on a loopback web where every URL is alive: issue 24's bars.

``python -m benchmarks.bench_all [--folder bench-data/all] [--tarball bench-data/full.tgz]
[--runs shards:2000 shards:21841 shards:3000 per-category:2000 per-category:3000]``

The world: the full-scale URL list (``make_full_scale_tarball.py``: 14.2 M lines, the real
per-synset counts; made once, about 330 MB, git-ignored) and the real words.txt, served by
``benchmarks.fast_web``, where every image URL answers at once with a small JPEG of its own.
Downloads then cost next to nothing, and what is left is the workflow's own cost.

The upstream stages run once (``--ParseSynsets-categories all``: 21,841 synsets).  A run of N
categories takes the first N of that list (a CSV of them, whose SampleUrls runs before the
clock starts).  Each timed run is FetchFives alone (``--FetchFives-per-category 5``, 8
workers, local scheduler) from an empty fetch/ and store/, in one of two shapes:

- ``shards``: the default, FetchShard tasks of ``[FetchFives] shard_size`` categories for
  sets of ``shard_from`` categories or more (``--FetchFives-shard-from 1`` forces it);
- ``per-category``: one FetchCategory per category, today's shape for small sets
  (``--FetchFives-shard-from 1000000``), the baseline.

Printed per run: wall seconds, CPU of the run's process tree, peak RSS of that tree, requests
counted at the server, ms per category, images kept, the load average; then the growth
ratio (ms per category at the largest N over that at 2,000) and PASS/FAIL for the bars:
all 21,841 within 600 s, at most 2 GB peak RSS, growth within 1.3x.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from benchmarks.bench_1000 import timed_run
from benchmarks.bench_fetch import REPO, free_port
from demo.config import write_demo_config
from demo.world import URLS_TGZ, WORDS_TXT

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
SHARED_DATA = Path(os.environ.get("SAMPLER_SHARED_DATA", REPO.parent / "shared" / "data"))
ALL = 21_841
BARS = {"seconds": 600.0, "peak_mib": 2048, "growth": 1.3}
SHAPES = {"shards": ["--FetchFives-shard-from", "1"], "per-category": ["--FetchFives-shard-from", "1000000"]}


class Web:
    """``benchmarks.fast_web`` in its own process."""

    def __init__(self, tarball: Path, words: Path) -> None:
        port = free_port()
        command = [sys.executable, "-m", "benchmarks.fast_web", "--port", str(port)]
        command += ["--file", f"{URLS_TGZ}={tarball}", "--file", f"{WORDS_TXT}={words}"]
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url:
            raise SystemExit("benchmarks.fast_web did not start")

    def stats(self, clear: bool = False) -> dict:
        with _DIRECT.open(self.url + "/__stats" + ("?clear=1" if clear else ""), timeout=30) as resp:
            return json.loads(resp.read())

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def env_for(web: Web, config: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "HTTP_PROXY": web.url,
            "http_proxy": web.url,
            "HTTPS_PROXY": web.url,
            "https_proxy": web.url,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PYTHONPATH": str(REPO),
            "LUIGI_CONFIG_PATH": str(config),
        }
    )
    return env


def clear_fetch(data: Path) -> None:
    """Everything FetchFives made, and the store: the next run fetches every image again."""
    for name in ("fetch", "store", "runs", "images", "request-slots"):
        shutil.rmtree(data / name, ignore_errors=True)
    for name in ("manifest.csv", "attempts.csv", "fetch_summary.json"):
        (data / name).unlink(missing_ok=True)


def first_categories(data: Path, n: int, out: Path) -> Path:
    """A ``wnid,label`` CSV of the first ``n`` categories of the resolved ``all`` list."""
    tables = [p for p in (data / "synsets").glob("all-*.csv")]
    if len(tables) != 1:
        raise SystemExit(f"expected one resolved 'all' list under {data / 'synsets'}, found {tables}")
    with tables[0].open(encoding="utf-8", newline="") as src:
        rows = list(csv.reader(src))
    header, body = rows[0], rows[1:]
    if n > len(body):
        raise SystemExit(f"--categories {n}: the list has {len(body)}")
    with out.open("w", encoding="utf-8", newline="") as dst:
        writer = csv.writer(dst, lineterminator="\n")
        writer.writerow(header[:2])
        writer.writerows(row[:2] for row in body[:n])
    return out


def run(command: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("w") as out:
        code = subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if code:
        raise SystemExit(f"{' '.join(command)} exited {code}; see {log}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_all")
    parser.add_argument("--folder", type=Path, default=REPO / "bench-data" / "all")
    parser.add_argument("--tarball", type=Path, default=REPO / "bench-data" / "full.tgz")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["shards:2000", f"shards:{ALL}", "shards:3000", "per-category:2000", "per-category:3000"],
        help="SHAPE:N (shards or per-category, N the first N categories of all)",
    )
    parser.add_argument("--extra", nargs="*", default=[], help="more flags for every FetchFives run")
    args = parser.parse_args(argv)
    folder = args.folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    tarball = args.tarball.resolve()
    if not tarball.exists():
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / "make_full_scale_tarball.py"), str(tarball)],
            cwd=REPO,
            check=True,
        )
        print(f"full-scale list made in {time.perf_counter() - t0:.0f} s", flush=True)
    web = Web(tarball, SHARED_DATA / "imagenet" / "words.txt")
    data = folder / "data"
    base = [sys.executable, "-m", "pipeline"]
    results: list[dict] = []
    try:
        config_all = write_demo_config(folder / "all.cfg", web.url, data, "all", fetch_timeouts=None)
        t0 = time.perf_counter()
        run(base + ["SampleUrls", "--local-scheduler"], env_for(web, config_all), folder / "upstream.log")
        print(f"upstream stages (all {ALL}): {time.perf_counter() - t0:.0f} s", flush=True)
        for item in args.runs:
            shape, _, count = item.partition(":")
            n = int(count)
            if n >= ALL:
                config = config_all
            else:
                listing = first_categories(data, n, folder / f"first-{n}.csv")
                config = write_demo_config(
                    folder / f"first-{n}.cfg", web.url, data, listing, fetch_timeouts=None
                )
                run(
                    base + ["SampleUrls", "--local-scheduler"],
                    env_for(web, config),
                    folder / f"sample-{n}.log",
                )
            clear_fetch(data)
            web.stats(clear=True)
            server_cpu = web.cpu_seconds()
            command = base + ["FetchFives", "--workers", str(args.workers), "--local-scheduler", "--no-lock"]
            command += ["--FetchFives-per-category", "5", *SHAPES[shape], *args.extra]
            figures = timed_run(command, env_for(web, config), folder / f"{shape}-{n}.log", None)
            after = web.stats()
            manifest = next(data.glob("runs/*/manifest.csv"))
            with manifest.open(encoding="utf-8") as src:
                kept = sum(1 for _ in src) - 1
            requests = after["requests"]
            figures.update(
                shape=shape,
                categories=n,
                requests=requests,
                repeated=after["repeated"],
                requests_per_category=round(requests / n, 2),
                ms_per_category=round(1000 * figures["seconds"] / n, 1),
                kept=kept,
                server_cpu=round(web.cpu_seconds() - server_cpu, 1),
                load_average=[round(x, 2) for x in os.getloadavg()],
            )
            results.append(figures)
            print(json.dumps(figures), flush=True)
            (folder / "results.json").write_text(json.dumps(results, indent=1))
    finally:
        web.stop()
    report(results)
    return 0


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(results: list[dict]) -> None:
    columns = ["shape", "categories", "wall s", "CPU s", "peak RSS MiB", "requests", "per category"]
    columns += ["ms per category", "kept", "load"]
    print("\n| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['shape']} | {r['categories']:,} | {r['seconds']} | {r['cpu']} | {r['peak_workers_mib']} "
            f"| {r['requests']:,} | {r['requests_per_category']} | {r['ms_per_category']} | {r['kept']:,} "
            f"| {r['load_average'][0]} |"
        )
    shards = {r["categories"]: r for r in results if r["shape"] == "shards"}
    whole = shards.get(ALL)
    if whole is None:
        return
    seconds, peak = whole["seconds"], whole["peak_workers_mib"]
    print(
        f"\nbar: all {ALL:,} within {BARS['seconds']:.0f} s: {verdict(seconds <= BARS['seconds'])} "
        f"({seconds} s; load average {whole['load_average'][0]} at its end)"
    )
    print(f"bar: peak RSS at most {BARS['peak_mib']} MiB: {verdict(peak <= BARS['peak_mib'])} ({peak} MiB)")
    small = shards.get(2000)
    if small is not None:
        growth = whole["ms_per_category"] / small["ms_per_category"]
        print(
            f"bar: ms per category at {ALL:,} within {BARS['growth']}x of 2,000's: "
            f"{verdict(growth <= BARS['growth'])} ({growth:.2f}x: {whole['ms_per_category']} against "
            f"{small['ms_per_category']} ms; load {small['load_average'][0]} then {whole['load_average'][0]})"
        )


if __name__ == "__main__":
    sys.exit(main())
