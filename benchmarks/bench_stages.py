"""Every stage but the fetch itself at N categories x 5 images (issue 24: all of ImageNet is 21,841).

    python benchmarks/bench_stages.py [--categories 2000 21841] [--tarball bench-data/full.tgz]
        [--baseline-code /work/main] [--stages sample,close,...] [--workdir bench-data/stages]

One data_dir (``<workdir>/data``) for every N, pointed at the full-scale look-alike URL list
(``make_full_scale_tarball.py``) and words.txt of the reference data.  The upstream stages
(DownloadUrlTarball, ExtractUrls, ParseSynsets) run once through luigi.  For each N, in
increasing order (the categories are the first N synsets of the index, so each N's data is a
superset of the last's):

- ``sample``: SampleUrls (100 URLs per category from the full-scale index);
- a finished fetch is then made without the web, through the project's own writers: for each
  category the first 8 URLs of its sample, 5 kept (small real JPEGs, distinct bytes, put in
  ``store/`` and recorded in ``store/urls/``) and 3 dead (404), written as FetchCategory writes
  its round (``write_attempts``, ``RoundResult.to_text``);
- ``close``: FetchFives' run() -- every category's result read, top-up plan, every kept body
  checked, manifest.csv, attempts.csv, fetch_summary.json and the run's images/;
- ``complete``: ``FetchFives.complete()`` once done (what luigi asks of it at every later run);
- ``report``, ``sheet``, ``gallery``: RunReport, ContactSheet, Gallery;
- ``publish``: FetchFives.publish(), data_dir's view (images/, manifest, reports);
- ``export``: ExportDataset (ImageFolder and WebDataset) and its publish to export/<name>/;
- ``croissant``: mlcroissant validates croissant.json and reads every record back;
- ``verify``, ``prune``: VerifyStore and PruneStore over the whole store.

Each stage runs in its own subprocess (the task's own code, called directly: luigi's
scheduling is not measured here, it is the fetch's business); printed per stage: wall
seconds, CPU seconds (user + system, with children), peak RSS (``os.wait4``) and the sizes of
what it wrote.  With ``--baseline-code DIR`` each stage runs first with that checkout's code
(``PYTHONPATH=DIR``, from DIR) and then with this one's, its outputs removed in between:
before and after side by side.  Bars (issue 24): every stage's peak RSS at most 2 GB, and
its CPU seconds per category at the largest N within 1.3x of that at the smallest (wall
seconds printed beside; stages under 2 CPU s at both sizes are start-up bound and exempt).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SAMPLER_SHARED_DATA", CHECKOUT.parent / "shared" / "data"))
WORDS_TXT = SHARED_DATA / "imagenet" / "words.txt"
PER_CATEGORY = 5
TRIED = 8  # URLs each fabricated category tried: 5 kept, 3 dead
RSS_BAR_MB = 2048
GROWTH_BAR = 1.3
STAGES = (
    "sample",
    "close",
    "complete",
    "report",
    "sheet",
    "gallery",
    "publish",
    "export",
    "croissant",
    "verify",
    "prune",
)


# ----------------------------------------------------------------------------- the stages


def _fives():  # type: ignore[no-untyped-def]
    from tasks.fetch_fives import FetchFives

    return FetchFives()


def watch_anonymous_memory() -> dict[str, float]:
    """The peak of this process's anonymous and file-backed RSS, sampled every 50 ms.

    ``ru_maxrss`` counts the pages of a memory-mapped file too (the URL index: 1.1 GB at full
    scale), which the kernel drops under pressure; the anonymous peak is what a stage holds."""
    peaks = {"RssAnon": 0.0, "RssFile": 0.0}

    def sample() -> None:
        while True:
            with open("/proc/self/status", encoding="ascii") as status:
                for line in status:
                    name, _, value = line.partition(":")
                    if name in peaks:
                        peaks[name] = max(peaks[name], int(value.split()[0]) / 1024)
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    return peaks


def run_stage(stage: str) -> None:
    """One stage, in this process, with the code on PYTHONPATH (LUIGI_CONFIG_PATH: the bench's)."""
    peaks = watch_anonymous_memory()
    try:
        _run_stage(stage)
    finally:
        time.sleep(0.06)
        print(f"memory: anon {peaks['RssAnon']:.0f} MB, file-backed {peaks['RssFile']:.0f} MB")


def _run_stage(stage: str) -> None:
    if stage == "sample":
        from tasks.sample_urls import SampleUrls

        fives = _fives()
        task = fives.sample_task()
        assert isinstance(task, SampleUrls)
        task.run()
    elif stage == "complete":
        print(f"complete: {_fives().complete()}")
    elif stage == "close":
        for dependencies in _fives().run():  # a round to run means the fabricated fetch is wrong
            raise SystemExit(f"FetchFives asked for {len(dependencies)} more category tasks")
    elif stage in ("report", "sheet", "gallery"):
        from tasks.report import ContactSheet, Gallery, RunReport

        kind = {"report": RunReport, "sheet": ContactSheet, "gallery": Gallery}[stage]
        kind().run()  # type: ignore[abstract]
    elif stage == "publish":
        _fives().publish()
    elif stage == "export":
        from tasks.export_dataset import ExportDataset

        task = ExportDataset()
        task.run()
        task.publish()
    elif stage == "croissant":
        read_croissant()
    elif stage == "verify":
        from tasks.verify_store import VerifyStore

        VerifyStore().run()
    elif stage == "prune":
        from tasks.prune_store import PruneStore

        PruneStore().run()
    else:
        raise SystemExit(f"unknown stage {stage}")


def read_croissant() -> None:
    """Validate croissant.json with mlcroissant and read every image record (without decoding)."""
    import logging

    import mlcroissant as mlc

    from tasks.export_dataset import ExportDataset

    logging.getLogger("absl").setLevel(logging.ERROR)
    folder = ExportDataset().export_folder().fs_path
    dataset = mlc.Dataset(jsonld=str(folder / "croissant.json"))
    records = 0
    for _record in dataset.records(record_set="images"):
        records += 1
    with (folder / "files.csv").open(encoding="utf-8") as src:
        expected = sum(1 for _ in src) - 1
    print(f"croissant: {records} records read back, files.csv lists {expected}")
    if records != expected:
        raise SystemExit("croissant.json does not read back every image")


# ----------------------------------------------------------------------------- the world


def bench_config(data_dir: Path, tarball: Path, categories: Path) -> str:
    return (
        "[paths]\n"
        f"data_dir = {data_dir}\n"
        "[DownloadUrlTarball]\n"
        f"mirrors = {json.dumps([str(tarball)])}\n"
        "[ExtractUrls]\ncompare_published = false\n"
        "[ParseSynsets]\n"
        f"words_url = {WORDS_TXT}\n"
        f"categories = {categories}\n"
        f"[FetchFives]\nper_category = {PER_CATEGORY}\n"
        f"[FetchCategory]\nper_category = {PER_CATEGORY}\n"
    )


def category_csv(index_dir: Path, words: Path, n: int, path: Path) -> None:
    """The first ``n`` synsets of the index (wnid order), labelled as words.txt's first lemma."""
    sys.path.insert(0, str(CHECKOUT))
    from sampler.categories.sets import first_lemma
    from sampler.index.read import UrlIndex

    wnids = list(UrlIndex.open(index_dir).counts)[:n]
    labels: dict[str, str] = {}
    for line in words.read_text(encoding="utf-8").splitlines():
        wnid, _, text = line.partition("\t")
        labels[wnid] = text
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["wnid", "label"])
        writer.writerows([w, first_lemma(labels.get(w, w))] for w in wnids)


def base_jpegs() -> list[bytes]:
    """32 small real JPEGs of different colours (96 x 72, 1-3 kB)."""
    from PIL import Image, ImageDraw

    bodies = []
    for i in range(32):
        image = Image.new("RGB", (96, 72), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256))
        ImageDraw.Draw(image).ellipse((10 + i % 20, 8, 70, 60), fill=(255 - i * 7, 40, i * 8))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=85)
        bodies.append(out.getvalue())
    return bodies


def distinct_jpeg(base: bytes, tag: str) -> bytes:
    """``base`` with a COM segment naming ``tag`` after its SOI: a valid JPEG of its own bytes."""
    text = tag.encode("ascii")
    return base[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + base[2:]


def fabricate_fetch() -> None:
    """The finished fetch of the configuration, as FetchCategory writes it (no web)."""
    from sampler.atomic import atomic_write_text
    from sampler.fetch.attempts import write_attempts
    from sampler.fetch.category_round import CategoryFiles
    from sampler.fetch.results import Attempt, KeptImage, RoundResult
    from sampler.naming import image_filename
    from sampler.outcomes import Outcome, http_status
    from sampler.sampling import read_sample_csv

    fives = _fives()
    store = fives.image_store()
    labels = {c.wnid: c.label for c in fives.categories()}
    rows_by_wnid: dict[str, list[tuple[str, str]]] = {}
    for image_id, url in read_sample_csv(fives.sample_task().output().fs_path):
        wnid = image_id.split("_", 1)[0]
        if len(rows_by_wnid.setdefault(wnid, [])) < TRIED:
            rows_by_wnid[wnid].append((image_id, url))
    bases = base_jpegs()
    made = 0
    for number, (wnid, label) in enumerate(labels.items()):
        files = CategoryFiles(fives.folder(), wnid)
        if files.result(0).exists():
            continue  # made for a smaller N
        kept: list[KeptImage] = []
        judged: list[Attempt] = []
        attempts: list[dict[str, object]] = []
        for position, (image_id, url) in enumerate(rows_by_wnid.get(wnid, [])):
            alive = position % 3 != 2 and len(kept) < PER_CATEGORY
            if alive:
                body = distinct_jpeg(bases[(number + position) % len(bases)], image_id)
                sha256 = store.put(body)
                md5 = hashlib.md5(body).hexdigest()
                store.remember_url(wnid, url, url, sha256)
                name = image_filename(image_id, label)
                kept.append(KeptImage(image_id, url, url, name, sha256, md5, len(body), 96, 72))
                outcome, status, size = str(Outcome.OK), 200, len(body)
            else:
                sha256 = md5 = ""
                outcome, status, size = http_status(404), 404, 0
            judged.append(Attempt(image_id, url, outcome=outcome, md5=md5, sha256=sha256))
            attempts.append(
                {
                    "image_id": image_id,
                    "url": url,
                    "final_url": url,
                    "status": status,
                    "outcome": outcome,
                    "bytes": size,
                    "ms": 20 + position,
                    "md5": md5,
                    "sha256": sha256,
                    "error": "" if alive else "404 Not Found",
                    "requests": 1,
                    "judged": True,
                }
            )
        files.result(0).parent.mkdir(parents=True, exist_ok=True)
        write_attempts(attempts, files.attempts(0), {"round": 0})
        result = RoundResult(wnid, label, PER_CATEGORY, kept, False, len(judged), judged, 0)
        atomic_write_text(files.result(0), result.to_text())
        made += 1
    print(f"fabricated {made} categories' rounds")


# ----------------------------------------------------------------------------- measuring


def folder_size(path: Path) -> tuple[int, int]:
    if path.is_file():
        return 1, path.stat().st_size
    files = size = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            files += 1
            size += os.lstat(os.path.join(root, name)).st_size
    return files, size


def stage_outputs(data_dir: Path, stage: str) -> list[Path]:
    """What a stage writes (removed before each run of it, so that before and after start alike)."""
    runs = sorted((data_dir / "runs").glob("*/")) if (data_dir / "runs").is_dir() else []
    run = max(runs, key=lambda p: p.stat().st_mtime) if runs else data_dir / "runs" / "-"
    outputs = {
        "sample": sorted((data_dir / "sample").glob("*.csv")),
        "close": [run / "manifest.csv", run / "attempts.csv", run / "fetch_summary.json", run / "images"],
        "report": [run / "report"],
        "sheet": [run / "contact_sheet.jpg", run / "contact_sheet"],
        "gallery": [run / "gallery"],
        "publish": [
            data_dir / name
            for name in (
                "images",
                "manifest.csv",
                "attempts.csv",
                "fetch_summary.json",
                "report",
                "gallery",
                "contact_sheet.jpg",
                "contact_sheet",
            )
        ],
        "export": [data_dir / "exports", data_dir / "export"],
        "verify": [data_dir / "store" / "verify_report.json"],
        "prune": [data_dir / "store" / "prune_report.json"],
    }
    return [p for p in outputs.get(stage, []) if p.exists()]


def remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def measure(stage: str, code: Path, config: Path, sizes_of: list[Path] | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "LUIGI_CONFIG_PATH": str(config)}
    command = [sys.executable, str(Path(__file__).resolve()), "--run-stage", stage]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    output = process.stdout.read().decode("utf-8", "replace")
    _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    code_ = os.waitstatus_to_exitcode(status)
    if code_ != 0:
        print(output[-4000:])
        raise SystemExit(f"stage {stage} failed with {code_} ({code})")
    lines = [line for line in output.splitlines() if line.startswith(("croissant:", "complete:"))]
    anon = [line for line in output.splitlines() if line.startswith("memory: anon ")]
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,
        "anon_mb": float(anon[-1].split()[2]) if anon else None,
        "load": load,
        "note": "; ".join(lines),
    }


def outputs_text(data_dir: Path, stage: str) -> str:
    parts = []
    for path in stage_outputs(data_dir, stage):
        files, size = folder_size(path)
        parts.append(f"{path.name} {size / 1e6:,.1f} MB" + (f" ({files:,} files)" if path.is_dir() else ""))
    return ", ".join(parts)


def details(data_dir: Path, stage: str) -> str:
    """What a user of the output would notice: pages, index size, sheets; the sha256 of the
    files whose bytes must not change with the code (before and after compared)."""
    published = stage_outputs(data_dir, stage)
    if stage in ("sample", "close") and published:
        files = [p for p in published if p.suffix == ".csv"]
        return "sha256 " + " ".join(f"{p.name}={file_digest(p)[:12]}" for p in files)
    if stage == "gallery" and published:
        gallery = published[0]
        pages = sorted(gallery.glob("page-*.html"))
        sizes = [p.stat().st_size for p in pages]
        index = (gallery / "index.html").stat().st_size
        return f"index.html {index / 1e3:,.0f} kB, {len(pages)} pages" + (
            f" of {min(sizes) / 1e3:,.0f}-{max(sizes) / 1e3:,.0f} kB" if sizes else ""
        )
    if stage == "sheet" and published:
        sheets = sorted(published[0].glob("sheet-*.jpg")) if published[0].is_dir() else published
        from PIL import Image

        with Image.open(sheets[-1]) as image:
            size = image.size
        return f"{len(sheets)} sheet(s), {size[0]}x{size[1]} px"
    if stage == "export":
        exports = sorted((data_dir / "exports").glob("*/croissant.json"))
        if exports:
            return f"croissant.json {exports[0].stat().st_size / 1e3:,.0f} kB"
    return ""


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare(args: argparse.Namespace, n: int) -> tuple[Path, Path]:
    """The data_dir with its upstream stages done for the first ``n`` synsets; the config file."""
    work = args.workdir.resolve()
    data_dir = work / "data"
    lists = work / "lists"
    lists.mkdir(parents=True, exist_ok=True)
    config = work / f"luigi-{n}.cfg"
    categories = lists / f"first-{n}.csv"
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
    if not (data_dir / "urls").is_dir():
        boot = work / "luigi-boot.cfg"
        boot.write_text(bench_config(data_dir, args.tarball.resolve(), CHECKOUT / "config" / "det200.csv"))
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "luigi", "--module", "pipeline", "ExtractUrls", "--local-scheduler"],
            cwd=CHECKOUT,
            env={**env, "LUIGI_CONFIG_PATH": str(boot)},
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        print(f"index of the full-scale list built in {time.perf_counter() - started:.1f} s")
    if not categories.exists():
        category_csv(data_dir / "urls", WORDS_TXT, n, categories)
    config.write_text(bench_config(data_dir, args.tarball.resolve(), categories))
    subprocess.run(
        [sys.executable, "-m", "luigi", "--module", "pipeline", "ParseSynsets", "--local-scheduler"],
        cwd=CHECKOUT,
        env={**env, "LUIGI_CONFIG_PATH": str(config)},
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return data_dir, config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-stage", help=argparse.SUPPRESS)
    parser.add_argument("--categories", type=int, nargs="+", default=[2000, 21841])
    parser.add_argument("--tarball", type=Path, default=CHECKOUT / "bench-data" / "full.tgz")
    parser.add_argument("--workdir", type=Path, default=CHECKOUT / "bench-data" / "stages")
    parser.add_argument("--baseline-code", type=Path, help="a checkout whose code runs each stage first")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--baseline-stages", help="the stages the baseline runs (default: all asked)")
    parser.add_argument("--figures", type=Path, help="figures file (default <workdir>/figures.json)")
    parser.add_argument(
        "--compare",
        type=Path,
        nargs=2,
        metavar=("BEFORE", "AFTER"),
        help="print two figures files side by side (each run's 'after') and the bars of the second",
    )
    args = parser.parse_args()
    if args.run_stage == "fabricate":
        fabricate_fetch()
        return 0
    if args.run_stage:
        run_stage(args.run_stage)
        return 0
    if args.compare:
        return compare(*args.compare)
    if not args.tarball.is_file():
        print(f"{args.tarball} missing: python benchmarks/make_full_scale_tarball.py {args.tarball}")
        return 1
    stages = [s for s in args.stages.split(",") if s]
    baseline_stages = set((args.baseline_stages or args.stages).split(",")) if args.baseline_code else set()
    codes = ([("before", args.baseline_code.resolve())] if args.baseline_code else []) + [("after", CHECKOUT)]
    figures: dict[int, dict[str, dict[str, dict]]] = {}
    print(f"load average at start {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
    for n in sorted(args.categories):
        data_dir, config = prepare(args, n)
        figures[n] = {}
        print(f"\n== {n:,} categories x {PER_CATEGORY} images ==")
        columns = f"{'wall s':>8} {'CPU s':>8} {'peak RSS MB':>12} {'anon':>6} {'load':>5}"
        print(f"{'stage':10} {'code':7} {columns}  outputs")
        for stage in stages:
            if stage == "close":  # (categories made for a smaller N are kept)
                made = measure("fabricate", CHECKOUT, config)
                fabricated = f"{made['wall']:8.2f} {made['cpu']:8.2f} {made['rss_mb']:12.0f}"
                print(f"{'(fabricate the fetch)':18} {fabricated}")
            figures[n][stage] = {}
            for name, code in codes:
                if name == "before" and stage not in baseline_stages:
                    continue
                remove(stage_outputs(data_dir, stage))
                result = measure(stage, code, config)
                result["outputs"] = outputs_text(data_dir, stage)
                result["details"] = details(data_dir, stage)
                figures[n][stage][name] = result
                extra = "; ".join(x for x in (result["outputs"], result["details"], result["note"]) if x)
                anon = f"{result['anon_mb']:.0f}" if result["anon_mb"] is not None else "-"
                print(
                    f"{stage:10} {name:7} {result['wall']:8.2f} {result['cpu']:8.2f} "
                    f"{result['rss_mb']:12.0f} {anon:>6} {result['load']:5.1f}  {extra}",
                    flush=True,
                )
    figures_path = args.figures or args.workdir / "figures.json"
    figures_path.write_text(json.dumps({str(k): v for k, v in figures.items()}, indent=1))
    return verdict(figures)


def compare(before_path: Path, after_path: Path) -> int:
    """Two runs' figures side by side (e.g. main's code, then this code, at the same sizes)."""

    def load(path: Path) -> dict[int, dict[str, dict[str, dict]]]:
        return {int(n): stages for n, stages in json.loads(path.read_text()).items()}

    before, after = load(before_path), load(after_path)
    heading = [f"{name}: wall / CPU s / RSS MB" for name in ("before", "after")]
    print(f"{'N':>7} {'stage':10} {heading[0]:>32} {heading[1]:>32}  load")
    for n in sorted(after):
        for stage, runs in after[n].items():
            # The baseline of the same run (--baseline-code) if it ran this stage, else the other file's.
            b = runs.get("before") or before.get(n, {}).get(stage, {}).get("after")
            a = runs.get("after")
            if a is None:
                continue
            cells = [f"{x['wall']:8.2f} / {x['cpu']:8.2f} / {x['rss_mb']:6.0f}" if x else "-" for x in (b, a)]
            loads = "/".join(f"{x['load']:.1f}" for x in (b, a) if x)
            print(f"{n:7,} {stage:10} {cells[0]:>32} {cells[1]:>32}  {loads}")
    return verdict(after)


def verdict(figures: dict[int, dict[str, dict[str, dict]]]) -> int:
    failed = False
    sizes = sorted(figures)
    print("\n== bars (this code) ==")
    stages = {stage for n in sizes for stage in figures[n]}
    for stage in [s for s in STAGES if s in stages]:
        runs = [figures[n][stage]["after"] for n in sizes if "after" in figures[n].get(stage, {})]
        peak = max(run["rss_mb"] for run in runs)
        ok = peak <= RSS_BAR_MB
        failed |= not ok
        who = " (a consumer: mlcroissant reading the export)" if stage == "croissant" else ""
        print(f"{stage:10} peak RSS {peak:7,.0f} MB (bar {RSS_BAR_MB:,} MB): {'PASS' if ok else 'FAIL'}{who}")
    if len(sizes) >= 2:
        # Growth per category in CPU seconds (user + system): on a shared machine the wall
        # time is the other sessions' as much as the stage's.  Wall beside it.
        small, large = sizes[0], sizes[-1]
        for stage in figures[large]:
            if "after" not in figures[large][stage] or "after" not in figures[small].get(stage, {}):
                continue
            at_small, at_large = figures[small][stage]["after"], figures[large][stage]["after"]
            a, b = at_small["cpu"], at_large["cpu"]
            growth = (b / large) / (a / small)
            wall_growth = (at_large["wall"] / large) / (at_small["wall"] / small)
            exempt = a < 2 and b < 2
            ok = growth <= GROWTH_BAR or exempt
            failed |= not ok
            print(
                f"{stage:10} CPU {a / small * 1e3:7.2f} ms/category at {small:,}, {b / large * 1e3:7.2f} at "
                f"{large:,}: {growth:4.2f}x (wall {wall_growth:4.2f}x; bar {GROWTH_BAR}x) "
                + ("exempt (under 2 CPU s)" if exempt else "PASS" if ok else "FAIL")
            )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
