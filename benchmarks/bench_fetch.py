"""Benchmark: five working JPEGs per category, three ways, on the same sampled URLs.

A demo world (``demo.world``) with N categories is served on loopback by
``demo.server`` (its own process, per-request latency LO..HI seconds);
every image URL goes through it as an HTTP proxy.  The pipeline's upstream stages
(DownloadUrlTarball .. SampleUrls) run once, so all contenders start from the same
``sample/seed0-n100-<digest>.csv``.  Then, each against a freshly started server (same
port, empty request log, transient faults armed again).  The server renders every
image of the world before it starts serving (``--prerender``, cached in the work
folder): a real web server does not paint its JPEGs per request, and on 2 cores a
mirror busy rendering would mostly measure itself.

(a) one-at-a-time, made strict: per category in sample order ``requests.get(url,
    timeout=10)``, a 429/503/504 tried again after its Retry-After (at most twice); keep
    status 200 whose body is a JPEG that Pillow decodes fully and that no other URL served
    (a placeholder: both copies dropped) and not a redirect to Flickr's "photo
    unavailable"; stop at 5 per category;
(b) img2dataset 1.47.0 from its own venv on ALL sampled URLs (it has no per-category
    quota); what it would give is the first 5 successes per category in sample order;
(c) FetchFives: ``python -m luigi --module pipeline FetchFives --local-scheduler``
    with luigi.cfg's settings (upstream outputs exist, so only the fetch stage runs).

Then the luigi floor: as many empty tasks as FetchFives ran category tasks, scheduled
the same way (``benchmarks/luigi_floor.py``): what luigi itself costs, downloads aside.

Every contender's kept images are judged by the same checks: bytes (JPEG magic,
Pillow full decode, same bytes behind two URLs, repeats in a category) and the
world's truth (``demo.world.expected_jpeg``: the bytes a correct
downloader keeps for a URL).  Bars from the issue: FetchFives >= 15x faster than
one-at-a-time, faster than img2dataset, no placeholder/duplicate/broken image.

Worlds (``--world``): ``dead``, today's web (>= 90% of links dead: 404/410/403,
dead hosts answered by the proxy with Squid's 502/503 pages, permanent 500s,
placeholders, a few transient 429/503; in every third category only 5 of 100
alive), or ``half``, the demo world of the tests (about half alive).

Usage:
  python benchmarks/bench_fetch.py [--world dead] [--categories 200] [--latency 0.01 0.04]
      [--img2dataset PATH_TO_ITS_PYTHON] [--workers W] [--contenders a,b,c]
      [any luigi flag for FetchFives, e.g. --FetchCategory-max-connections 32]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import requests  # noqa: E402
from PIL import Image  # noqa: E402

from demo import world as dw  # noqa: E402
from demo.config import write_demo_config  # noqa: E402
from sampler.naming import wnid_of  # noqa: E402
from sampler.sampling import read_sample_csv  # noqa: E402

PER_CATEGORY = 5
SAMPLE_SIZE = 100
SEED = 0
NAIVE_TIMEOUT = 10.0
DEFAULT_I2D_PYTHON = REPO / "bench-data" / "img2dataset-venv" / "bin" / "python"
I2D_THREADS = 64
I2D_TIMEOUT = 5

Kept = tuple[str, str, bytes]  # (image_id, url, body as kept)


# --------------------------------------------------------------------------- the demo server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerProcess:
    """``python -m demo.server`` in its own process (its own GIL: the server's
    work never competes with the contender's threads inside one interpreter)."""

    def __init__(self, world_dir: Path, port: int, latency: tuple[float, float]) -> None:
        self.world_dir, self.port, self.latency = world_dir, port, latency
        self.render_cache = world_dir.parent / "render-cache.marshal"
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        command = [sys.executable, "-m", "demo.server", "--world", str(self.world_dir)]
        command += ["--port", str(self.port), "--latency", *(str(x) for x in self.latency)]
        command += ["--prerender", str(self.render_cache)]
        for _ in range(50):  # the port of the previous instance may linger a moment
            self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
            assert self.process.stdout is not None
            line = self.process.stdout.readline().strip()
            if line == self.url:
                return self
            self.process.wait()
            time.sleep(0.2)
        raise SystemExit(f"demo server did not start on port {self.port}")

    @property
    def requests(self) -> list[list]:
        """The server's request log: [method, URL, status] per request."""
        with _DIRECT.open(self.url + "/__stats", timeout=30) as resp:
            return json.loads(resp.read())["requests"]

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (Linux /proc)."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def clear_log(self) -> None:
        with _DIRECT.open(self.url + "/__stats?clear=1", timeout=30) as resp:
            resp.read()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def proxy_env(server: ServerProcess, config: Path | None = None, code: Path = REPO) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "HTTP_PROXY": server.url,
            "http_proxy": server.url,
            # No TLS offline: the demo server answers CONNECT with 403 (Flickr's https placeholder).
            "HTTPS_PROXY": server.url,
            "https_proxy": server.url,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PYTHONPATH": str(code),
            "NO_ALBUMENTATIONS_UPDATE": "1",
        }
    )
    if config is not None:
        env["LUIGI_CONFIG_PATH"] = str(config)
    return env


# --------------------------------------------------------------------------- judging


@dataclass
class Judgement:
    per_category_valid: dict[str, int]
    kept: int = 0
    valid: int = 0
    flags: Counter = field(default_factory=Counter)  # placeholder, duplicate, broken, non_jpeg, other
    shared_url_copies: int = 0  # one URL listed under two synsets, kept in both (legitimate)


class Truth:
    """What a correct downloader keeps, from the world alone."""

    def __init__(self, world: dict) -> None:
        self.world = world
        self.entries = {dw.url_key(u): (u, e) for u, e in world["urls"].items()}
        banner = dw.banner_jpeg()
        self.placeholder_digests = {
            hashlib.sha256(b).hexdigest() for b in (banner, dw.placeholder_png(), dw.placeholder_gif())
        }
        self._cache: dict[str, bytes | None] = {}

    def entry(self, url: str) -> dict | None:
        found = self.entries.get(dw.url_key(url))
        return found[1] if found else None

    def jpeg(self, url: str) -> bytes | None:
        """The valid JPEG behind ``url``; a "slow" URL counts too (its JPEG comes after a
        few seconds: a patient downloader gets it, and it is a perfectly good photo)."""
        if url not in self._cache:
            body = dw.expected_jpeg(self.world, url)
            entry = self.entry(url)
            if body is None and entry is not None and entry["behaviour"] == "slow":
                body = dw.entry_jpeg(self.world["seed"], self.entries[dw.url_key(url)][0], entry)
            self._cache[url] = body
        return self._cache[url]


def decodes_as_jpeg(body: bytes) -> tuple[bool, bool]:
    """(is_jpeg, decodes_fully) judged by the bytes alone, independently of any downloader."""
    if not body.startswith(b"\xff\xd8\xff"):
        return False, False
    try:
        with Image.open(io.BytesIO(body)) as img:
            if img.format not in ("JPEG", "MPO"):
                return False, False
            img.load()
    except Exception:  # any decoder complaint means broken
        return True, False
    return True, True


_NON_JPEG_BEHAVIOURS = {"png_image", "gif_image", "html_200"}
_PLACEHOLDER_BEHAVIOURS = {"jpeg_banner", "flickr_placeholder_redirect"}


def judge(kept: dict[str, list[Kept]], truth: Truth, wnids: list[str]) -> Judgement:
    """Flag every kept image; a flagged image is never counted valid.

    placeholder: known placeholder bytes, the same bytes behind two or more different
      URLs of this output, or a URL that the world says serves a placeholder;
    duplicate: the same bytes as an earlier kept image of the same category;
    broken: JPEG magic but Pillow's full decode fails, or the URL serves a cut-off JPEG;
    non_jpeg: no JPEG magic / not a JPEG to Pillow, or the URL serves PNG/GIF/HTML
      (a downloader that re-encodes turns those into JPEGs);
    other: none of the above, yet not the bytes the URL serves.
    """
    urls_by_digest: dict[str, set[str]] = defaultdict(set)
    for items in kept.values():
        for _, url, body in items:
            urls_by_digest[hashlib.sha256(body).hexdigest()].add(dw.url_key(url))
    result = Judgement(per_category_valid={w: 0 for w in wnids})
    digest_categories: dict[tuple[str, str], set[str]] = defaultdict(set)
    for wnid in wnids:
        seen: set[str] = set()
        for _, url, body in kept.get(wnid, []):
            result.kept += 1
            digest = hashlib.sha256(body).hexdigest()
            entry = truth.entry(url)
            behaviour = entry["behaviour"] if entry else "unknown"
            is_jpeg, decodes = decodes_as_jpeg(body)
            flags = set()
            if not is_jpeg or behaviour in _NON_JPEG_BEHAVIOURS:
                flags.add("non_jpeg")
            elif not decodes or behaviour == "truncated_jpeg":
                flags.add("broken")
            if (
                digest in truth.placeholder_digests
                or len(urls_by_digest[digest]) >= 2
                or behaviour in _PLACEHOLDER_BEHAVIOURS
            ):
                flags.add("placeholder")
            if digest in seen:
                flags.add("duplicate")
            seen.add(digest)
            if not flags and body != truth.jpeg(url):
                flags.add("other")
            result.flags.update(flags)
            if not flags:
                result.valid += 1
                result.per_category_valid[wnid] += 1
            digest_categories[(digest, dw.url_key(url))].add(wnid)
    result.shared_url_copies = sum(len(c) - 1 for c in digest_categories.values())
    return result


# --------------------------------------------------------------------------- the pipeline


def run_timed(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[int, float, float]:
    """(exit code, wall seconds, CPU seconds of the child and the children it waited for)."""
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return proc.returncode, seconds, usage.ru_utime + usage.ru_stime


def write_config(folder: Path, world: Path, server: ServerProcess, fetch_slots: int | None = None) -> Path:
    """Overrides for the project's luigi.cfg (read from REPO first): only where things live.
    Every FetchCategory / worker / resources setting stays as luigi.cfg has it."""
    resources = {"resources": {"fetch_slots": fetch_slots}} if fetch_slots is not None else {}
    return write_demo_config(
        folder / "bench-luigi.cfg",
        server.url,
        folder / "data",
        world / dw.CATEGORIES_CSV,
        fetch_timeouts=None,
        sections=resources,
    )


def run_luigi(
    task: str,
    config: Path,
    server: ServerProcess,
    args: list[str],
    log: Path,
    preload: str = "",
    module: str = "pipeline",
    code: Path = REPO,
) -> tuple[float, float]:
    """``python -m luigi --module MODULE TASK --local-scheduler ARGS`` from ``code`` (this
    checkout by default; its luigi.cfg is read, then ``config``); (wall, CPU) seconds.
    ``preload``: modules imported before luigi starts (an experiment: what forked task
    processes would no longer import each time)."""
    if preload:
        imports = "".join(f"import {m}; " for m in preload.split(","))
        command = [
            sys.executable,
            "-c",
            f"{imports}import sys; from luigi.cmdline import luigi_run; luigi_run(sys.argv[1:])",
        ]
    else:
        command = [sys.executable, "-m", "luigi"]
    command += ["--module", module, task, "--local-scheduler", *args]
    status, seconds, cpu = run_timed(command, code, proxy_env(server, config, code), log)
    if status != 0:
        raise SystemExit(f"{' '.join(command)} exited {status}; see {log}")
    return seconds, cpu


# --------------------------------------------------------------------------- the contenders


NAIVE_RETRIES = 2  # as FetchFives' [FetchCategory] retries


def polite_get(url: str, proxies: dict[str, str]) -> requests.Response:
    """``requests.get``, trying a 429/503/504 again after its Retry-After (as FetchFives does:
    a loop that gave such an image up would keep other images, and compare unlike with
    unlike), but not a proxy's "origin unreachable" page (a dead host)."""
    for retry in range(NAIVE_RETRIES + 1):
        resp = requests.get(url, proxies=proxies, timeout=NAIVE_TIMEOUT)
        transient = resp.status_code in (429, 503, 504) and "x-squid-error" not in resp.headers
        if not transient or retry == NAIVE_RETRIES:
            return resp
        try:
            wait = float(resp.headers.get("retry-after", ""))
        except ValueError:
            wait = 0.5 * 2**retry
        if wait > 10:
            return resp
        time.sleep(wait)
    return resp


def one_at_a_time(groups: dict[str, list[tuple[str, str]]], server: ServerProcess, out: Path) -> dict:
    """The blog post's loop, made strict: the same checks as FetchFives' in their simplest form."""
    proxies = {"http": server.url, "https": server.url}
    out.mkdir(parents=True, exist_ok=True)
    kept: dict[str, list[Kept]] = {}
    seen: dict[str, tuple[str, str] | None] = {}  # sha256 -> (wnid, image_id) kept with it, or None
    errors = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for wnid, rows in groups.items():
        got: list[Kept] = []
        kept[wnid] = got
        for image_id, url in rows:
            if len(got) >= PER_CATEGORY:
                break
            try:
                resp = polite_get(url, proxies)
            except Exception:  # dead host, bad scheme, timeout...: next URL
                errors += 1
                continue
            body = resp.content
            if resp.status_code != 200 or "photo_unavailable" in resp.url:
                continue
            is_jpeg, decodes = decodes_as_jpeg(body)
            if not (is_jpeg and decodes):
                continue
            digest = hashlib.sha256(body).hexdigest()
            if digest in seen:  # the same bytes behind two URLs: a placeholder, drop both
                earlier = seen[digest]
                if earlier is not None:
                    kept[earlier[0]][:] = [k for k in kept[earlier[0]] if k[0] != earlier[1]]
                    seen[digest] = None
                continue
            seen[digest] = (wnid, image_id)
            got.append((image_id, url, body))
            (out / f"{image_id}.jpg").write_bytes(body)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": seconds, "cpu": cpu, "kept": kept, "note": f"{errors} requests raised an exception"}


def img2dataset(
    python: Path, groups: dict[str, list[tuple[str, str]]], server: ServerProcess, folder: Path
) -> dict:
    rows = [(wnid, image_id, url) for wnid, items in groups.items() for image_id, url in items]
    input_csv = folder / "i2d-input.csv"
    with input_csv.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["url", "wnid"])
        writer.writerows((url, wnid) for wnid, _, url in rows)
    output = folder / "i2d-output"
    shutil.rmtree(output, ignore_errors=True)
    script = python.parent / "img2dataset"
    command = [str(script)] if script.exists() else [str(python), "-m", "img2dataset"]
    command += [
        "--url_list", str(input_csv), "--output_folder", str(output),
        "--input_format", "csv", "--url_col", "url", "--save_additional_columns", '["wnid"]',
        "--output_format", "files", "--resize_mode", "no", "--skip_reencode", "True",
        "--processes_count", "1", "--thread_count", str(I2D_THREADS), "--timeout", str(I2D_TIMEOUT),
        "--number_sample_per_shard", "10000",
    ]  # fmt: skip
    log = folder / "i2d.log"
    code, seconds, cpu = run_timed(command, folder, proxy_env(server), log)
    if code != 0:
        raise RuntimeError(f"img2dataset exited {code}; see {log}")

    import pyarrow.parquet as pq

    # key = shard * 10**4 + index in shard = row of the input (10,000 rows per shard).
    downloaded: dict[int, bytes] = {}
    statuses: Counter = Counter()
    for parquet in sorted(output.glob("*.parquet")):
        table = pq.read_table(parquet, columns=["key", "url", "status"]).to_pylist()
        for rec in table:
            statuses[rec["status"]] += 1
            row = int(rec["key"])
            if rows[row][2] != rec["url"]:
                raise RuntimeError(f"img2dataset key {rec['key']} is not input row {row}")
            if rec["status"] == "success":
                files = list(output.glob(f"*/{rec['key']}.jpg"))
                if len(files) != 1:
                    raise RuntimeError(f"no image file for key {rec['key']}")
                downloaded[row] = files[0].read_bytes()
    durations = [json.loads(p.read_text())["duration"] for p in output.glob("*_stats.json")]
    everything: dict[str, list[Kept]] = defaultdict(list)
    kept: dict[str, list[Kept]] = defaultdict(list)
    for i, (wnid, image_id, url) in enumerate(rows):  # sample order
        if i in downloaded:
            everything[wnid].append((image_id, url, downloaded[i]))
            if len(kept[wnid]) < PER_CATEGORY:
                kept[wnid].append((image_id, url, downloaded[i]))
    note = (
        f"downloaded all {len(rows):,} sampled URLs: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0])))
        + f"; its own shard timers {sum(durations):.1f} s (the rest is start-up and reading)"
    )
    return {"seconds": seconds, "cpu": cpu, "kept": dict(kept), "everything": dict(everything), "note": note}


def fetch_fives(
    config: Path,
    server: ServerProcess,
    folder: Path,
    workers: int | None,
    luigi_args: list[str],
    preload: str,
    fetch_slots: int | None,
    code: Path = REPO,
) -> dict:
    data = folder / "data"
    # Nothing of an earlier contender's run may be replayed: its store, slots, dead hosts.
    for name in ("fetch", "images", "store", "request-slots"):
        shutil.rmtree(data / name, ignore_errors=True)
    for name in ("manifest.csv", "attempts.csv", "fetch_summary.json"):
        (data / name).unlink(missing_ok=True)
    args = (["--workers", str(workers)] if workers else []) + luigi_args
    log = folder / f"fetchfives-{'this' if code == REPO else code.name}.log"
    seconds, cpu = run_luigi("FetchFives", config, server, args, log, preload, code=code)
    kept: dict[str, list[Kept]] = defaultdict(list)
    with (data / "manifest.csv").open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            kept[row["wnid"]].append(
                (row["image_id"], row["url"], (data / "images" / row["file"]).read_bytes())
            )
    rounds = len(list((data / "fetch").glob("*/round*.json")))
    extra = f", extra flags {' '.join(luigi_args)}" if luigi_args else ""
    tasks = len(list((data / "fetch").glob("*/round*/*.json")))
    preloaded = f", parent preloads {preload}" if preload else ""
    slots = (
        f"[resources] fetch_slots = {fetch_slots}"
        if fetch_slots
        else "fetch_slots and [FetchCategory] from luigi.cfg"
    )
    summary = json.loads((data / "fetch_summary.json").read_text(encoding="utf-8"))
    cost = summary.get("requests")
    own_count = (
        f"; its own count: {cost['made']:,} requests, {cost['look_ahead_not_needed']:,} look-ahead "
        "requests not needed"
        if isinstance(cost, dict)
        else ""
    )
    note = (
        f"code {code}, {workers_text(workers)}{extra}{preloaded}, {slots}; {tasks} category rounds "
        f"({rounds} top-up round(s) after cross-category placeholders){own_count}"
    )
    return {"seconds": seconds, "cpu": cpu, "kept": dict(kept), "note": note, "tasks": tasks}


def workers_text(workers: int | None) -> str:
    return f"luigi --workers {workers}" if workers else "luigi workers from luigi.cfg ([core] workers)"


def luigi_floor(
    config: Path, server: ServerProcess, folder: Path, tasks: int, workers: int | None
) -> tuple[float, float]:
    """(wall, CPU) seconds of ``tasks`` empty luigi tasks scheduled as FetchFives schedules
    its category tasks (benchmarks/luigi_floor.py): luigi's own share of a FetchFives run."""
    out = folder / "floor"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    args = ["--folder", str(out), "--tasks", str(tasks)] + (["--workers", str(workers)] if workers else [])
    log = folder / "floor.log"
    return run_luigi("EmptyFives", config, server, args, log, module="benchmarks.luigi_floor")


# --------------------------------------------------------------------------- main


def luigi_startup_seconds() -> float:
    """What a FetchFives run pays before any task: interpreter + luigi + pipeline imports."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import luigi.cmdline, pipeline"], cwd=REPO, check=True)
    return time.perf_counter() - t0


LABELS = {
    "a": "(a) one-at-a-time",
    "b": "(b) img2dataset 1.47.0",
    "m": "(c0) FetchFives before",
    "c": "(c) FetchFives",
}


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """(this benchmark's options, the rest: luigi flags for FetchFives)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--categories", type=int, default=200, help="first N of config/det200.csv")
    parser.add_argument("--latency", type=float, nargs=2, default=(0.01, 0.04), metavar=("LO", "HI"))
    parser.add_argument("--img2dataset", type=Path, default=DEFAULT_I2D_PYTHON, help="python of its venv")
    parser.add_argument(
        "--workers", type=int, default=None, help="luigi --workers for FetchFives (default: luigi.cfg's)"
    )
    parser.add_argument(
        "--contenders", default="a,b,c", help="subset of a,b,c (and m, with --baseline-code) to run"
    )
    parser.add_argument(
        "--baseline-code",
        type=Path,
        default=None,
        help="another checkout (e.g. /work/main): its FetchFives runs too, as (c0), with its own "
        "luigi.cfg, against the same world (adds m to --contenders)",
    )
    parser.add_argument(
        "--world",
        choices=("dead", "worst", "half", "2017", "flickr"),
        default="dead",
        help="today's dead web (88-95%% dead), worst (every category 95%% dead), half alive, 2017 "
        "(living images at the blog post's 2017 positions: needs the reference data), or flickr "
        "(the dead web with the real list's host mix: most URLs on five Flickr hosts)",
    )
    parser.add_argument(
        "--speedup-bar",
        type=float,
        default=None,
        help="FetchFives / one-at-a-time bar (default: the issue's: dead web 5x at loopback latency, "
        "25x at latency >= 0.1 s; half-alive 3x)",
    )
    parser.add_argument(
        "--fetch-slots",
        type=int,
        default=None,
        help="[resources] fetch_slots for the run (default: luigi.cfg's)",
    )
    parser.add_argument(
        "--preload", default="", help="experiment: modules the luigi parent imports first, e.g. pandas"
    )
    parser.add_argument("--workdir", type=Path, default=REPO / "bench-data" / "bench-fetch")
    args, luigi_args = parser.parse_known_args(argv)
    args.img2dataset = args.img2dataset.absolute()  # not resolve(): a venv's python is a symlink
    args.latency = (args.latency[0], args.latency[1])
    if args.speedup_bar is None:
        dead = args.world != "half"
        args.speedup_bar = (25.0 if args.latency[0] >= 0.1 else 10.0) if dead else 3.0
    if args.baseline_code is not None:
        args.baseline_code = args.baseline_code.resolve()
        args.contenders += ",m"
    return args, luigi_args


def fresh_workdir(workdir: Path) -> Path:
    """``workdir`` emptied, refusing a non-empty folder this benchmark did not make."""
    workdir = workdir.resolve()
    marker = workdir / ".bench-fetch-workdir"
    if workdir.exists() and any(workdir.iterdir()) and not marker.exists():
        raise SystemExit(f"{workdir} is not empty and was not made by this benchmark: not touching it")
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    marker.touch()
    return workdir


def run_contender(
    key: str,
    args: argparse.Namespace,
    luigi_args: list[str],
    server: ServerProcess,
    groups: dict[str, list[tuple[str, str]]],
    config: Path,
    workdir: Path,
) -> dict:
    """One contender against a freshly started ``server``: its result with the server's view
    (requests, statuses, CPU), or {"skipped": why} when img2dataset is absent or fails."""
    if key == "b" and not args.img2dataset.exists():
        return {"skipped": f"no img2dataset python at {args.img2dataset}"}
    server.start()
    try:
        server.clear_log()
        startup_cpu = server.cpu_seconds()  # loading its renders is not serving
        try:
            if key == "a":
                res = one_at_a_time(groups, server, workdir / "naive")
            elif key == "b":
                res = img2dataset(args.img2dataset, groups, server, workdir)
            else:
                code = args.baseline_code if key == "m" else REPO
                res = fetch_fives(
                    config, server, workdir, args.workers, luigi_args, args.preload, args.fetch_slots, code
                )
        except Exception as exc:
            if key != "b":
                raise
            return {"skipped": f"img2dataset failed: {exc!r}"[:500]}
        res["server_cpu"] = server.cpu_seconds() - startup_cpu
        log = server.requests
        res["requests"] = len(log)
        res["statuses"] = Counter(status for _, _, status in log)
        res["hosts"] = Counter(urllib.parse.urlsplit(url).hostname or "" for _, url, _ in log)
    finally:
        server.stop()
    return res


def print_table(results: dict[str, dict]) -> None:
    """One row per contender: time, CPU, requests, and the judge's counts of its images."""
    base = results.get("a", {}).get("seconds")
    columns = [
        ("", 24), ("wall s", 8), ("vs (a)", 7), ("CPU s", 6), ("requests", 9), ("CPU ms/req", 10),
        ("valid/cat", 10),
        ("at 5", 8), ("kept", 5), ("placeh.", 7), ("dupl.", 5), ("broken", 6), ("non-JPEG", 8), ("other", 5),
    ]  # fmt: skip
    print("\n" + " ".join(f"{name:>{width}s}" if name else " " * width for name, width in columns))
    for key, label in LABELS.items():
        res = results.get(key)
        if res is None:
            continue
        if "skipped" in res:
            print(f"{label:24s} not run: {res['skipped']}")
            continue
        j: Judgement = res["judged"]
        counts = list(j.per_category_valid.values())
        f = j.flags
        cells = [
            f"{label:24s}",
            f"{res['seconds']:8.2f}",
            f"{base / res['seconds']:6.1f}x" if base else f"{'n/a':>7s}",
            f"{res['cpu'] + res['server_cpu']:6.1f}",
            f"{res['requests']:9,d}",
            f"{1000 * (res['cpu'] + res['server_cpu']) / max(1, res['requests']):10.2f}",
            f"{min(counts)}/{statistics.median(counts):g}/{max(counts)}".rjust(10),
            f"{sum(c >= PER_CATEGORY for c in counts)}/{len(counts)}".rjust(8),
            f"{j.kept:5d}",
            f"{f['placeholder']:7d}",
            f"{f['duplicate']:5d}",
            f"{f['broken']:6d}",
            f"{f['non_jpeg']:8d}",
            f"{f['other']:5d}",
        ]
        print(" ".join(cells))
        if "judged_all" in res:
            a = res["judged_all"]
            print(
                f"{'':24s} its whole output: {a.kept:,} images, placeholders {a.flags['placeholder']}, "
                f"duplicates {a.flags['duplicate']}, broken {a.flags['broken']}, "
                f"non-JPEG {a.flags['non_jpeg']}, other {a.flags['other']}"
            )
    print(
        "valid/cat: min/median/max valid images per category; at 5: categories with 5; CPU s: contender "
        "(with its child processes) + demo server; CPU ms/req: that CPU per request the server saw"
    )


def print_notes(results: dict[str, dict]) -> None:
    """Per contender: how it ran, its CPU, and what the server answered it."""
    print()
    for key, label in LABELS.items():
        res = results.get(key)
        if res and "skipped" not in res:
            statuses = ", ".join(f"{s}: {n:,}" for s, n in sorted(res["statuses"].items()))
            shared = res["judged"].shared_url_copies
            print(f"{label}: {res['note']}")
            print(
                f"    CPU seconds: contender {res['cpu']:.1f} (with its child processes), "
                f"demo server {res['server_cpu']:.1f}"
            )
            print(f"    server answers {statuses}; same-URL copies in 2 synsets (legitimate): {shared}")
    print(
        f"\nluigi start-up (python -c 'import luigi.cmdline, pipeline'): {luigi_startup_seconds():.2f} s, "
        "included in (c); (b) includes its own start-up too"
    )


REQUESTS_BAR = 1.3  # FetchFives' requests / the loop's, at most (issue 22)
FLEET_REQUESTS = 64  # luigi.cfg's [FetchCategory] fleet_requests
HOST_CAPS = {"c": ("per_host_max", 16), "m": ("per_host", 4)}  # luigi.cfg's, this code and main's


def same_choice(loop: dict[str, list[Kept]], other: dict[str, list[Kept]]) -> tuple[int, int, list[str]]:
    """(categories where ``other`` kept exactly the loop's images, byte for byte; categories where
    the loop ended short and ``other`` kept the loop's images and more; the categories that differ).
    The loop ends short where it dropped both copies of a placeholder met in two categories: it
    does not go back for more."""
    same, loop_short, differ = 0, 0, []
    for wnid in sorted(set(loop) | set(other)):
        mine = [(i, u, hashlib.sha256(b).hexdigest()) for i, u, b in loop.get(wnid, [])]
        theirs = [(i, u, hashlib.sha256(b).hexdigest()) for i, u, b in other.get(wnid, [])]
        if mine == theirs:
            same += 1
        elif len(mine) < PER_CATEGORY and set(mine) <= set(theirs):
            loop_short += 1
        else:
            differ.append(wnid)
    return same, loop_short, differ


def print_cost(results: dict[str, dict], latency: tuple[float, float]) -> None:
    """Requests against the loop's, and the floors that latency and per-host caps set."""
    loop = results.get("a")
    mean = sum(latency) / 2
    print()
    for key in ("m", "c"):
        res = results.get(key)
        if not res or "skipped" in res:
            continue
        ratio = f"{res['requests'] / loop['requests']:.2f}x the loop's {loop['requests']:,}" if loop else ""
        host, n = res["hosts"].most_common(1)[0] if res["hosts"] else ("-", 0)
        cap_name, cap = HOST_CAPS[key]
        fleet = res["requests"] * mean / FLEET_REQUESTS
        print(
            f"{LABELS[key]}: {res['requests']:,} requests at the server ({ratio}); floors: "
            f"{res['requests']:,} x {mean:g} s / {FLEET_REQUESTS} in flight = {fleet:.2f} s, busiest host "
            f"{host} {n:,} x {mean:g} s / {cap_name} {cap} = {n * mean / cap:.2f} s"
        )
        cpu = res["cpu"] + res["server_cpu"]
        cores = os.cpu_count() or 1
        beyond = (
            f"; the loop's {loop['seconds']:.1f} s / that = {loop['seconds'] * cores / cpu:.1f}x"
            if loop
            else ""
        )
        print(
            f"    CPU floor: {cpu:.1f} CPU s (mirror included) / {cores} cores = {cpu / cores:.2f} s{beyond}"
        )
        if loop:
            same, short, differ = same_choice(loop["kept"], res["kept"])
            res["differ"] = differ
            print(
                f"    same images as the loop, byte for byte, in {same} categories; the loop short and "
                f"its images kept too in {short}; different in {len(differ)}"
                + (f" ({', '.join(differ[:8])})" if differ else "")
            )


def judge_bars(results: dict[str, dict], speedup_bar: float) -> bool:
    """Print PASS/FAIL for each of the issue's bars that can be judged; True if all pass."""
    c = results["c"]
    base = results.get("a", {}).get("seconds")
    bars = []
    loop = results.get("a")
    if loop:
        ratio = c["requests"] / loop["requests"]
        counts = f"({c['requests']:,} / {loop['requests']:,})"
        text = f"FetchFives' requests <= {REQUESTS_BAR:g}x the loop's: {ratio:.2f}x {counts}"
        bars.append((text, ratio <= REQUESTS_BAR))
        differ = c.get("differ", [])
        bars.append(
            (f"FetchFives kept the loop's choice in every category: {len(differ)} differ", not differ)
        )
    if base:
        speedup = base / c["seconds"]
        text = f"FetchFives >= {speedup_bar:g}x faster than one-at-a-time: {speedup:.1f}x"
        bars.append((text, speedup >= speedup_bar))
    b = results.get("b")
    if b and "skipped" not in b:
        bars.append(
            (
                f"FetchFives faster than img2dataset: {c['seconds']:.2f} s vs {b['seconds']:.2f} s",
                c["seconds"] < b["seconds"],
            )
        )
    else:
        print("img2dataset bar not judged: " + (b["skipped"] if b else "not run"))
    f = c["judged"].flags
    clean = f["placeholder"] == f["duplicate"] == f["broken"] == 0
    bars.append(
        (
            f"no placeholder, duplicate or broken image in FetchFives' output: {f['placeholder']} / "
            f"{f['duplicate']} / {f['broken']} (non-JPEG {f['non_jpeg']}, other {f['other']})",
            clean and f["non_jpeg"] == 0,
        )
    )
    for text, passed in bars:
        print(f"{'PASS' if passed else 'FAIL'}  {text}")
    return all(passed for _, passed in bars)


def main(argv: list[str] | None = None) -> int:
    args, luigi_args = parse_args(argv)
    wanted = set(args.contenders.split(","))
    latency = args.latency
    workdir = fresh_workdir(args.workdir)
    if args.world == "2017":
        from demo.world2017 import build_2017_world

        world_dir = build_2017_world(workdir / "world", n_categories=args.categories)
    else:
        world_dir = dw.build_demo_world(
            workdir / "world",
            n_categories=args.categories,
            dead_web=args.world in ("dead", "worst", "flickr"),
            all_worst=args.world == "worst",
            flickr_mix=args.world == "flickr",
        )
    world = dw.load_world(world_dir)
    truth = Truth(world)
    server = ServerProcess(world_dir, free_port(), latency)

    # Upstream once: the same sample for every contender.
    server.start()
    try:
        config = write_config(workdir, world_dir, server, args.fetch_slots)
        upstream, _ = run_luigi("SampleUrls", config, server, [], workdir / "upstream.log")
    finally:
        server.stop()
    # SampleUrls names its output after the category list's digest too.
    (sample_path,) = (workdir / "data" / "sample").glob(f"seed{SEED}-n{SAMPLE_SIZE}-*.csv")
    sample = read_sample_csv(sample_path)
    wnids = [c["wnid"] for c in world["categories"]]
    groups: dict[str, list[tuple[str, str]]] = {w: [] for w in wnids}
    for image_id, url in sample:
        groups[wnid_of(image_id)].append((image_id, url))
    reachable = sum(
        sum(truth.jpeg(u) is not None for _, u in rows) >= PER_CATEGORY for rows in groups.values()
    )
    print(
        f"{args.world} world: {args.categories} categories, {len(world['urls']):,} URLs; latency "
        f"{latency[0]:g}-{latency[1]:g} s per request; {os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"sample: {len(sample):,} URLs (upstream stages took {upstream:.1f} s, not timed below); "
        f"{reachable} of {len(wnids)} categories have >= {PER_CATEGORY} valid JPEGs among their sampled URLs"
    )

    results: dict[str, dict] = {}
    for key in ("a", "b", "m", "c"):
        if key not in wanted:
            continue
        res = run_contender(key, args, luigi_args, server, groups, config, workdir)
        results[key] = res
        if "skipped" in res:
            continue
        res["judged"] = judge(res["kept"], truth, wnids)
        if "everything" in res:
            res["judged_all"] = judge(res["everything"], truth, wnids)
        print(
            f"  ran {LABELS[key]}: {res['seconds']:.1f} s (load average {os.getloadavg()[0]:.2f})", flush=True
        )

    print_table(results)
    print_notes(results)
    print_cost(results, latency)
    base = results.get("a", {}).get("seconds")
    c = results.get("c")
    if c is not None and "skipped" not in c:
        floor, floor_cpu = luigi_floor(config, server, workdir, c["tasks"], args.workers)
        ceiling = f"; one-at-a-time / floor = {base / floor:.1f}x" if base else ""
        print(
            f"luigi floor: {c['tasks']} empty tasks scheduled like FetchFives' category tasks "
            f"({workers_text(args.workers)}) take {floor:.2f} s wall, {floor_cpu:.1f} CPU s{ceiling}: "
            "no FetchFives of this shape can beat that ratio on this machine, downloads or not"
        )

    print()
    if c is None or "skipped" in c:
        print("FetchFives not run: no bars judged")
        return 1
    return 0 if judge_bars(results, args.speedup_bar) else 1


if __name__ == "__main__":
    sys.exit(main())
