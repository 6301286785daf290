"""The stages after the fetch at thousands of categories (issue 24: all of ImageNet is 21,841).

What a user of a big run would notice: a stage whose memory grows with the whole run's rows
(SampleUrls' 2.2 M sample rows, FetchFives' millions of attempt rows on a dead web) until
the machine swaps, and a gallery whose pages cannot all be reached or grow without bound.
Memory is measured in a subprocess, as the growth of its peak RSS over what it held before
the call, against a generous bound that holding every row would exceed several times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
from PIL import Image

from sampler.categories.words import Category
from sampler.fetch.attempts import write_attempts
from sampler.report.gallery import CATEGORIES_PER_PAGE, build_gallery, page_name
from sampler.report.model import attempt_table, build_run_report, read_attempt_table, read_table
from tests.test_report import parse_page

CHECKOUT = Path(__file__).resolve().parents[1]
ATTEMPT_CATEGORIES = 3_000
ATTEMPTS_EACH = 100  # a dead web: about 65 requests a category in bench_fetch's dead world
# Every row held (a dict of 13 cells, ~1.5 kB) is ~450 MB for these 300,000 rows; the
# streamed write keeps one (image id, URL) key per decided row, ~50 MB.
ATTEMPTS_GROWTH_MB = 200


def measure_growth(script: str) -> dict:
    """Run ``script`` (it sets ``result``) in a fresh interpreter; return ``result`` with
    ``growth_mb``: its peak RSS beyond the RSS it had before the script's work began."""
    wrapper = textwrap.dedent(
        """
        import json, sys
        def status_mb(field):
            # VmHWM, not getrusage's ru_maxrss: Linux carries the forking process's peak across
            # exec into ru_maxrss, so a child of a big pytest process would report pytest's size.
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) / 1024
        PREPARE
        before = status_mb("VmRSS")
        WORK
        peak = status_mb("VmHWM")
        print(json.dumps({**result, "growth_mb": peak - before}))
        """
    )
    prepare, _, work = textwrap.dedent(script).partition("# work\n")
    code = wrapper.replace("PREPARE", prepare).replace("WORK", work)
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_fetchfives_writes_a_dead_webs_millions_of_attempts_without_holding_them(tmp_path):
    folder = tmp_path / "fetch" / "round0"
    folder.mkdir(parents=True)
    files = []
    for c in range(ATTEMPT_CATEGORIES):
        wnid = f"n{10_000_000 + c:08d}"
        rows = [
            {
                "image_id": f"{wnid}_{i}",
                "url": f"http://host{i % 50}.example.com/photos/{wnid}/some/long/path/image_{i}.jpg",
                "final_url": f"http://host{i % 50}.example.com/photos/{wnid}/some/long/path/image_{i}.jpg",
                "status": 404,
                "outcome": "http_404",
                "bytes": 0,
                "ms": 25,
                "md5": "",
                "sha256": "",
                "error": "404 Not Found",
                "requests": 1,
                "judged": i < 90,
            }
            for i in range(ATTEMPTS_EACH)
        ]
        path = folder / f"{wnid}.attempts.csv"
        write_attempts(rows, path, {"round": 0})
        files.append(str(path))
    (tmp_path / "files.json").write_text(json.dumps(files))
    result = measure_growth(
        f"""
        import json
        from pathlib import Path
        from sampler.fetch.gather import write_fetch_report
        files = [Path(p) for p in json.loads(Path({str(tmp_path / "files.json")!r}).read_text())]
        # work
        summary = write_fetch_report({{}}, files, Path({str(tmp_path / "attempts.csv")!r}),
                                     Path({str(tmp_path / "summary.json")!r}))
        result = {{"requests": summary["requests"], "outcomes": summary["outcomes"]}}
        """
    )
    rows = ATTEMPT_CATEGORIES * ATTEMPTS_EACH
    # Every attempt is in attempts.csv and counted, the look-ahead ones not needed too ...
    with (tmp_path / "attempts.csv").open(encoding="utf-8") as written:
        assert sum(1 for _ in written) == rows + 1
    assert result["outcomes"] == {"http_404": rows}
    assert result["requests"]["made"] == rows
    assert result["requests"]["look_ahead_not_needed"] == ATTEMPT_CATEGORIES * 10
    # ... and the memory it took does not grow with them.
    assert result["growth_mb"] < ATTEMPTS_GROWTH_MB, result


GALLERY_CATEGORIES = 3_000
PER_CATEGORY = 5
PAGE_BYTES = 600_000  # as test_report_pages' bound at 1000 categories
INDEX_BYTES_PER_CATEGORY = 400  # one short line each


def test_a_gallery_of_thousands_of_categories_reaches_every_one_from_bounded_pages(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    categories = [Category(f"n{20_000_000 + c:08d}", f"class {c}") for c in range(GALLERY_CATEGORIES)]
    rows = []
    small = Image.new("RGB", (40, 30), (90, 140, 60))
    for c, category in enumerate(categories):
        for i in range(PER_CATEGORY if c % 11 else 2):
            name = f"{category.wnid}_{i}_class_{c}.jpg"
            small.save(images / name, "JPEG", quality=60)
            rows.append(
                {"wnid": category.wnid, "label": category.label, "file": name, "url": "http://x/y.jpg"}
            )
    report = {"by_category": [{"wnid": c.wnid, "dead_link_rate": 0.5} for c in categories]}
    gallery = tmp_path / "gallery"
    counts = build_gallery(gallery, categories, rows, images, PER_CATEGORY, report=report)

    pages = sorted(gallery.glob("page-*.html"))
    assert counts["pages"] == len(pages) == GALLERY_CATEGORIES // CATEGORIES_PER_PAGE
    assert counts["thumbnails"] == len(rows)
    index = parse_page(gallery / "index.html")
    # The index links every page and every category (to its section on its page) ...
    links = [a["href"] for tag, a in index.tags if tag == "a" and "href" in a]
    assert {page_name(n) for n in range(1, len(pages) + 1)} <= set(links)
    category_links = [unquote(h) for h in links if "#" in h]
    assert len(category_links) >= GALLERY_CATEGORIES
    sections = {}
    for page in pages:
        assert page.stat().st_size < PAGE_BYTES, page.name
        parsed = parse_page(page)
        sections[page.name] = {a["id"] for tag, a in parsed.tags if "id" in a}
    for href in category_links:
        name, _, anchor = href.partition("#")
        assert anchor in sections[name], href
    # ... and stays a line per category.
    assert (gallery / "index.html").stat().st_size < INDEX_BYTES_PER_CATEGORY * GALLERY_CATEGORIES


REPORT_ROWS = 300_000  # a dead web's attempts of ~4,700 categories (all of ImageNet: ~1.4 M)
# Read whole, these rows peaked 268 MB over the interpreter's start; read in blocks, each
# URL kept as two 64-bit keys, 163 MB (at 1.4 M rows: 1,210 MB -> 658 MB in all).
REPORT_GROWTH_MB = 215


def dead_web_attempts(path: Path, rows: int) -> None:
    """attempts.csv as FetchFives writes it, of a dead web: every URL distinct, most on their own host."""
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("wnid,round,image_id,url,final_url,status,outcome,bytes,ms,md5,sha256,error,requests,judged\n")
        for i in range(rows):
            wnid = f"n{10_000_000 + i // 64:08d}"
            url = f"http://host{i % 2_000}.example.com/photos/{wnid}/a/long/path/image_{i}.jpg"
            outcome = ("http_404", "dead_host", "timeout", "http_429")[i % 4]
            ms = 25 + i % 900
            out.write(f"{wnid},{i % 3},{wnid}_{i},{url},,404,{outcome},0,{ms},,,{outcome} here,1,True\n")


def test_the_run_report_of_a_dead_webs_attempts_reads_them_in_blocks(tmp_path):
    attempts = tmp_path / "attempts.csv"
    dead_web_attempts(attempts, REPORT_ROWS)
    result = measure_growth(
        f"""
        from pathlib import Path
        from sampler.categories.words import Category
        from sampler.report.model import collect_run_report
        folder = Path({str(tmp_path)!r})
        wnids = [f"n{{10_000_000 + c:08d}}" for c in range({-(-REPORT_ROWS // 64)})]
        categories = [Category(wnid, "a class") for wnid in wnids]
        # work
        none = folder / "none"
        report = collect_run_report(categories=categories, per_category=5, manifest=none,
            fetch_summary=none, attempts=folder / "attempts.csv", url_report=none,
            sample=None, timings=none)
        result = {{"rows": report["attempts"]["rows"], "tried": report["stages"]["urls_tried"],
                   "outcomes": report["outcomes"], "hosts": len(report["by_host"]),
                   "tried_by_category": sum(c["tried"] for c in report["by_category"])}}
        """
    )
    assert result["rows"] == result["tried"] == REPORT_ROWS
    outcomes = ("http_404", "dead_host", "timeout", "http_429")
    assert result["outcomes"] == {name: REPORT_ROWS // 4 for name in outcomes}
    assert result["hosts"] == 2_000
    assert result["tried_by_category"] == REPORT_ROWS
    assert result["growth_mb"] < REPORT_GROWTH_MB, result


def test_the_run_report_counts_a_sample_of_millions_of_urls_without_holding_them(tmp_path):
    sample = tmp_path / "sample.csv"
    rows = 1_000_000
    with sample.open("w", encoding="utf-8") as out:
        out.write("image_id,url\n")
        for i in range(rows):
            out.write(f"n{i % 21841:08d}_{i},http://farm{i % 9}.example.com/{i:012d}/photo_{i}.jpg\n")
    result = measure_growth(
        f"""
        from pathlib import Path
        from sampler.report.run_files import count_sample_urls
        # work
        result = {{"rows": count_sample_urls(Path({str(sample)!r}))}}
        """
    )
    assert result["rows"] == rows
    assert result["growth_mb"] < 50, result  # every row held as a list: ~300 MB


def test_the_run_report_read_in_blocks_is_the_report_read_whole(tmp_path):
    """A URL tried again in a later round (a 429, then its image) lies in another block;
    rows written before the renames, short rows, odd times and a file without a wnid column
    count as they did when the file was read whole."""
    header = "round,image_id,url,status,outcome,ms,sha256,error,judged"
    lines = [
        "0,n00000001_1,http://a.example/1.jpg,429,http_429,5,,,True",
        "0,n00000001_2,http://a.example/2.jpg,200,placeholder,7,ab12,,True",
        "0,n00000002_1,http://b.example/1.jpg,200,truncated,x,,image file is truncated,True",
        "0,n00000002_2,http://b.example/1.jpg,404,http_404,,,,False",
        "0,n00000002_3,http://c.example/3.jpg",
        "1,n00000003_1,http://\u202eb.example/\u2028é.jpg,200,ok,inf,cd34,,True",
        "1,n00000001_1,http://a.example/1.jpg,200,ok,12,ef56,,True",
        "1,n00000003_2,http://a.example/1.jpg,,,3.5,,,True",
    ]
    attempts = tmp_path / "attempts.csv"
    attempts.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    whole = attempt_table(read_table(attempts))
    categories = [Category(f"n0000000{i}", f"class {i}") for i in (1, 2, 3)]

    def report(table: pd.DataFrame) -> dict:
        return {
            **build_run_report(
                categories=categories,
                manifest=pd.DataFrame(),
                per_category=2,
                fetch_summary={},
                attempts=table,
                url_report={},
                sampled_urls=None,
                timings=[],
            ),
            "generated": "",
        }

    expected = report(whole)
    assert expected["stages"]["urls_tried"] == 6  # a URL once per category: the 429 gave way to its image
    assert expected["outcomes"]["ok"] == 2
    for block_rows in (1, 2, 3, 100):
        assert report(read_attempt_table(attempts, block_rows)) == expected, block_rows
