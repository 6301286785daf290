"""The run report of a dead web's run of all of ImageNet: peak RSS and seconds.

attempts.csv on a dead web is about 1.4 M rows (21,841 categories x ~64 attempts). This
fabricates one (and the manifest of what was kept) under bench-data/run_report/, then builds
the report from it in a fresh interpreter with the code of each checkout given (this one
first), and prints each one's peak RSS, seconds and whether its report's bytes are those of
the first.  Bar (issue 24): peak RSS at most 2 GB.

    python benchmarks/bench_run_report.py                                  # this checkout
    python benchmarks/bench_run_report.py --baseline /work/main            # beside main's code
    python benchmarks/bench_run_report.py --hosts 1000000 --rows-each 64   # a host per URL
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CHECKOUT))  # run as a script from anywhere

from sampler.fetch.attempts import ATTEMPT_FIELDS  # noqa: E402

BAR_MB = 2048
OUTCOMES = [
    "http_404",
    "dead_host",
    "timeout",
    "dead_host_known",
    "ssl_error",
    "ok",
    "http_410",
    "placeholder_redirect",
    "truncated_download",
    "not_jpeg",
    "duplicate_url",
    "http_429",
]
FIELDS = ["wnid", "round", *ATTEMPT_FIELDS]  # attempts.csv as FetchFives writes it

MEASURE = """
import json, resource, sys, time
from pathlib import Path
from sampler.categories.words import Category
from sampler.report.model import collect_run_report
from sampler.report.run_report import write_run_report
folder, out = Path(sys.argv[1]), Path(sys.argv[2])
categories = [Category(*line.rstrip("\\n").split("\\t")) for line in open(folder / "categories.tsv")]
start = time.monotonic()
report = collect_run_report(categories=categories, per_category=5, manifest=folder / "manifest.csv",
    fetch_summary=folder / "none.json", attempts=folder / "attempts.csv", url_report=folder / "none.json",
    sample=None, timings=folder / "none.csv")
report["generated"] = ""
write_run_report(report, out)
with open("/proc/self/status") as status:
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
print(json.dumps({"seconds": round(time.monotonic() - start, 1), "peak_mb": round(peak)}))
"""


def fabricate(folder: Path, categories: int, rows_each: int, hosts: int) -> None:
    """A dead web's attempts.csv: half the URLs on nine Flickr farms, the rest over ``hosts``."""
    done = folder / "made.json"
    shape = {"categories": categories, "rows_each": rows_each, "hosts": hosts}
    if done.exists() and json.loads(done.read_text()) == shape:
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    wnids = [f"n{10_000_000 + i * 37:08d}" for i in range(categories)]
    with (
        (folder / "attempts.csv").open("w", newline="", encoding="utf-8") as attempts,
        (folder / "manifest.csv").open("w", newline="", encoding="utf-8") as manifest,
    ):
        rows, kept = csv.writer(attempts, lineterminator="\n"), csv.writer(manifest, lineterminator="\n")
        rows.writerow(FIELDS)
        kept.writerow(["wnid", "label", "image_id", "url", "file", "sha256"])
        for number, wnid in enumerate(wnids):
            for k in range(rows_each):
                image_id = f"{wnid}_{rng.randrange(10**6)}"
                host = (
                    f"farm{rng.randrange(1, 10)}.static.flickr.com"
                    if rng.random() < 0.5
                    else f"www.site{rng.randrange(hosts)}.com"
                )
                url = f"http://{host}/images/{rng.getrandbits(64):016x}/photo_{k}.jpg"
                outcome = rng.choice(OUTCOMES)
                ms = rng.randrange(5, 30_000)
                if outcome == "ok":
                    sha = f"{rng.getrandbits(256):064x}"
                    rows.writerow(
                        [wnid, k // 20, image_id, url, url, 200, outcome, 12345, ms, "", sha, "", 1, "True"]
                    )
                    kept.writerow([wnid, f"class {number}", image_id, url, f"{image_id}.jpg", sha])
                else:
                    judged = rng.choice(["True", "False"])
                    rows.writerow(
                        [wnid, k // 20, image_id, url, "", "", outcome, 0, ms, "", "", outcome, 1, judged]
                    )
    (folder / "categories.tsv").write_text("".join(f"{w}\tclass {i}\n" for i, w in enumerate(wnids)))
    done.write_text(json.dumps(shape))


def measure(code: Path, folder: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, str(folder), str(out)],
        env=env,
        capture_output=True,
        text=True,
        cwd=code,
    )
    if run.returncode:
        raise SystemExit(f"{code}: {run.stderr[-2000:]}")
    return json.loads(run.stdout.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--categories", type=int, default=21_841)
    parser.add_argument("--rows-each", type=int, default=64, help="attempt rows a category (a dead web: ~64)")
    parser.add_argument("--hosts", type=int, default=150_000, help="hosts other than Flickr's farms")
    parser.add_argument(
        "--baseline", type=Path, action="append", default=[], help="another checkout to measure"
    )
    args = parser.parse_args()
    folder = CHECKOUT / "bench-data" / "run_report"
    fabricate(folder, args.categories, args.rows_each, args.hosts)
    size_mb = (folder / "attempts.csv").stat().st_size / 2**20
    print(f"attempts.csv: {args.categories * args.rows_each:,} rows, {size_mb:.0f} MB")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    first: bytes | None = None
    failed = False
    for number, code in enumerate([CHECKOUT, *args.baseline]):
        out = folder / f"report-{number}"
        figures = measure(code.resolve(), folder, out)
        report = (out / "run_report.json").read_bytes()
        first = first if first is not None else report
        same = "same report bytes" if report == first else "REPORT DIFFERS"
        verdict = "PASS" if figures["peak_mb"] <= BAR_MB else "FAIL"
        failed |= number == 0 and verdict == "FAIL"
        peak = f"peak RSS {figures['peak_mb']:,} MB ({verdict}: <= {BAR_MB} MB)"
        print(f"{code}: {figures['seconds']} s, {peak}, {same}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
