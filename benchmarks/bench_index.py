"""Benchmark: 100 URLs per DET category from the URL tarball, three ways, on the same tarball.

(a) naive: ``tar xzf`` to disk, csv-module scan (tab delimiter) of the whole list into
    per-synset lists, ``random.sample`` 100 for each of the 200 DET synsets;
(b) cold:  ``build_url_index`` (one streaming pass) + ``sample_urls`` for the 200;
(c) warm:  open the existing index and sample again with another seed.

Each runs in its own subprocess; wall seconds include interpreter start-up, and
peak RSS and CPU seconds are that child's (from ``os.wait4``, which covers the
children it waited for too, e.g. ``tar``).  The bars: a/b >= 5, a/c >= 20 (wall
time); the CPU-time ratios are printed too, because on a loaded machine the
wall-time ratios sink towards them.  With ``--repeat N``, N rounds of (a), (b), (c)
back to back, and the fastest of each is compared.

Usage: python benchmarks/bench_index.py TARBALL [--workdir D] [--seed S] [--repeat N] [--keep-index]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DET_CSV = REPO / "config" / "det200.csv"
PER_CATEGORY = 100
COLD_BAR, WARM_BAR = 5.0, 20.0


def det_wnids() -> list[str]:
    with open(DET_CSV, encoding="utf-8", newline="") as f:
        return [row["wnid"] for row in csv.DictReader(f)]


def write_rows(rows: list[tuple[str, str]], path: Path) -> None:
    from sampler.sampling import write_sample_csv

    write_sample_csv(rows, path)


# --------------------------------------------------------------------------- the three children


def child_naive(tarball: Path, workdir: Path, seed: int) -> dict:
    from sampler.download import URL_LIST_MEMBER  # imported before the clock starts, as (b) does

    extract = workdir / "extract"  # emptied by the parent, outside the timing
    extract.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    subprocess.run(["tar", "xzf", str(tarball.resolve()), "-C", str(extract)], check=True)
    t1 = time.perf_counter()
    by_synset: dict[str, list[tuple[str, str]]] = {}
    text = next(extract.rglob(URL_LIST_MEMBER))
    # errors="replace": a strict UTF-8 reader dies on the list's stray bytes.
    with open(text, encoding="utf-8", errors="replace", newline="") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 2:
                by_synset.setdefault(row[0].split("_", 1)[0], []).append((row[0], row[1]))
    t2 = time.perf_counter()
    rng = random.Random(seed)
    rows: list[tuple[str, str]] = []
    wnids = det_wnids()
    for wnid in wnids:
        urls = by_synset.get(wnid, [])
        rows.extend(rng.sample(urls, min(PER_CATEGORY, len(urls))))
    t3 = time.perf_counter()
    write_rows(rows, workdir / "sample_naive.csv")
    return {
        "phases": {"tar xzf": t1 - t0, "csv scan": t2 - t1, "sample": t3 - t2},
        "rows": len(rows),
        "counts": {w: len(by_synset.get(w, [])) for w in wnids},
    }


def child_cold(tarball: Path, workdir: Path, seed: int) -> dict:
    from sampler.index.read import UrlIndex
    from sampler.index.stream import build_url_index
    from sampler.sampling import sample_urls

    index_dir = workdir / "index"  # removed by the parent, outside the timing
    t0 = time.perf_counter()
    report = build_url_index(tarball, index_dir)
    t1 = time.perf_counter()
    index = UrlIndex.open(index_dir)
    wnids = det_wnids()
    rows, short = sample_urls(index, wnids, PER_CATEGORY, seed)
    t2 = time.perf_counter()
    write_rows(rows, workdir / "sample_cold.csv")
    return {
        "phases": {"build_url_index": t1 - t0, "open + sample": t2 - t1},
        "rows": len(rows),
        "short": short,
        "counts": {w: index.count(w) for w in wnids},
        "report": {k: report[k] for k in ("lines", "bytes", "urls", "synsets", "malformed_total", "grouped")},
    }


def child_warm(tarball: Path, workdir: Path, seed: int) -> dict:
    from sampler.index.read import UrlIndex
    from sampler.sampling import sample_urls

    t0 = time.perf_counter()
    index = UrlIndex.open(workdir / "index")
    rows, short = sample_urls(index, det_wnids(), PER_CATEGORY, seed)
    t1 = time.perf_counter()
    write_rows(rows, workdir / "sample_warm.csv")
    return {"phases": {"open + sample": t1 - t0}, "rows": len(rows), "short": short}


CHILDREN = {"naive": child_naive, "cold": child_cold, "warm": child_warm}


# --------------------------------------------------------------------------- the parent


def run_child(kind: str, tarball: Path, workdir: Path, seed: int) -> dict:
    os.sync()  # the previous child's dirty pages are written back before, not during, this one
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        str(tarball),
        "--workdir",
        str(workdir),
    ]
    cmd += ["--seed", str(seed)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed with exit code {proc.returncode}")
    result = json.loads(out)
    result.update(seconds=seconds, peak_rss_mb=usage.ru_maxrss / 1024, cpu=usage.ru_utime + usage.ru_stime)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("tarball", type=Path)
    parser.add_argument("--workdir", type=Path, default=REPO / "bench-data" / "bench-work")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--keep-index", action="store_true", help="keep the index built by (b)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run each way N times and compare the fastest (shared machines)"
    )
    args = parser.parse_args(argv)

    if args.child:
        result = CHILDREN[args.child](args.tarball, args.workdir, args.seed)
        json.dump(result, sys.stdout)
        return 0

    args.workdir.mkdir(parents=True, exist_ok=True)
    size = args.tarball.stat().st_size
    with open(args.tarball, "rb") as f:  # the same start for all three: the tarball in the page cache
        while f.read(1 << 24):
            pass
    print(
        f"tarball {args.tarball} ({size / 1e6:,.1f} MB), {len(det_wnids())} DET synsets, {PER_CATEGORY} each"
    )
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    # Leftovers of an earlier run are removed here: deleting a 1.1 GB file takes time.
    shutil.rmtree(args.workdir / "extract", ignore_errors=True)
    shutil.rmtree(args.workdir / "index", ignore_errors=True)
    runs: dict[str, list[dict]] = {"naive": [], "cold": [], "warm": []}
    # One round is naive, cold, warm back to back, so that on a shared machine the three
    # of a round see about the same load; the fastest of each kind is compared.
    for k in range(args.repeat):
        try:
            runs["naive"].append(run_child("naive", args.tarball, args.workdir, args.seed))
        finally:
            shutil.rmtree(args.workdir / "extract", ignore_errors=True)  # the 1.1 GB text file
        shutil.rmtree(args.workdir / "index", ignore_errors=True)
        runs["cold"].append(run_child("cold", args.tarball, args.workdir, args.seed))
        runs["warm"].append(run_child("warm", args.tarball, args.workdir, args.seed + 1 + k))
    if not args.keep_index:
        shutil.rmtree(args.workdir / "index", ignore_errors=True)
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results = {kind: min(tries, key=lambda r: r["seconds"]) for kind, tries in runs.items()}

    labels = {
        "naive": "(a) naive: tar xzf + csv scan",
        "cold": "(b) cold: build index + sample",
        "warm": "(c) warm: open index + sample",
    }
    print()
    print(f"{'':34s} {'seconds':>8s} {'CPU s':>7s} {'peak RSS':>10s}  phases")
    for kind, label in labels.items():
        r = results[kind]
        phases = ", ".join(f"{k} {v:.2f} s" for k, v in r["phases"].items())
        print(f"{label:34s} {r['seconds']:8.2f} {r['cpu']:7.2f} {r['peak_rss_mb']:7.0f} MB  {phases}")
    if args.repeat > 1:
        print(f"(fastest of {args.repeat}; all runs, seconds:)")
        for kind, tries in runs.items():
            seconds = ", ".join(f"{r['seconds']:.2f}" for r in tries)
            print(f"    {kind}: {seconds}")
    a, b, c = (results[k]["seconds"] for k in ("naive", "cold", "warm"))
    a_cpu, b_cpu, c_cpu = (results[k]["cpu"] for k in ("naive", "cold", "warm"))
    print()
    for name, ratio, cpu_ratio, bar in (
        ("a/b (cold)", a / b, a_cpu / b_cpu, COLD_BAR),
        ("a/c (warm)", a / c, a_cpu / c_cpu, WARM_BAR),
    ):
        print(
            f"{name}: {ratio:6.1f}x   bar >= {bar:.0f}x   {'PASS' if ratio >= bar else 'FAIL'}"
            f"   (CPU seconds: {cpu_ratio:.1f}x)"
        )
    # With more runnable threads than CPUs, each process gets about its share of CPU time
    # whatever its thread count, so wall-time ratios sink towards the CPU-time ratios.
    print("on a loaded machine the wall-time ratios tend towards the CPU-time ratios")

    agree = results["naive"]["counts"] == results["cold"]["counts"]
    print()
    print(f"per-synset URL counts of the 200, naive scan vs index: {'identical' if agree else 'DIFFERENT'}")
    rows = ", ".join(f"{kind} {results[kind]['rows']:,}" for kind in ("naive", "cold", "warm"))
    print(f"sample rows: {rows}")
    print(f"index report: {results['cold']['report']}")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
