"""Contact sheet, gallery and run report, on a fabricated finished run (no pipeline, no network).

``fabricate_run`` writes what FetchFives leaves behind: real JPEGs made with
Pillow, manifest.csv, attempts.csv, fetch_summary.json, urls/report.json, the
URL sample and a category list, with a category that is short, one that kept
nothing, and hostile labels and URLs (markup, quotes, unicode, #?% in file names).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import html.parser
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import luigi
import pytest
from luigi.execution_summary import LuigiStatusCode
from PIL import Image

from sampler.categories.words import Category
from sampler.fetch.gather import MANIFEST_FIELDS, read_manifest
from sampler.naming import image_filename
from sampler.outcomes import CLASSES, MEANINGS, OutcomeClass
from sampler.report.charts import stacked_bar_svg
from sampler.report.contact_sheet import MISSING_FILL, group_by_category, sheet_layout, write_contact_sheet
from sampler.report.gallery import THUMB_BOX, build_gallery
from sampler.report.model import DEFINITIONS, class_of, collect_run_report
from sampler.report.run_files import append_timing, read_timings
from sampler.report.run_report import write_run_report
from sampler.report.text import format_summary
from sampler.store import ImageStore

SCRIPT_LABEL = "<script>alert(\"x\")</script> & 'quoted'"
PWN_LABEL = "\"><img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">"
UNICODE_LABEL = "crème brûlée ☕ 猫"
HOSTILE_URL = 'http://example.com/a"b<c>d.jpg?x=1&y=<script>alert(1)</script>'
HOSTILE_HOST_URL = "http://<svg onload=alert(1)>/x.jpg"

# (wnid, label, images kept); lemon is 2 short, the hostile last one kept nothing.
CATEGORIES = [
    ("n01443537", "goldfish", 5),
    ("n02000001", SCRIPT_LABEL, 5),
    ("n02000002", UNICODE_LABEL, 5),
    ("n02000003", "lemon #1 ?50%", 3),
    ("n02000004", PWN_LABEL, 0),
]
PER_CATEGORY = 5


@dataclass
class FabricatedRun:
    data: Path
    categories: list[Category]
    categories_csv: Path
    colours: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # image file -> colour

    @property
    def manifest(self) -> list[dict[str, str]]:
        return read_manifest(self.data / "manifest.csv")


def make_jpeg(path: Path, size: tuple[int, int], colour: tuple[int, int, int], mode: str = "RGB") -> None:
    """A real JPEG: flat colour (so a thumbnail's centre has it) with a marker in one corner."""
    image = Image.new("RGB", size, colour)
    image.paste((255, 255, 255), (0, 0, max(4, size[0] // 8), max(4, size[1] // 8)))
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, "JPEG", quality=90)


def _colour(n: int) -> tuple[int, int, int]:
    # Well-separated, saturated colours, none close to the sheet's white/grey/pink boxes.
    palette = [(200, 30, 30), (30, 150, 40), (30, 60, 200), (220, 160, 0), (120, 40, 160), (0, 150, 160)]
    r, g, b = palette[n % len(palette)]
    shift = 12 * (n // len(palette))
    return (max(0, r - shift), max(0, g - shift), max(0, b - shift))


def fabricate_run(root: Path) -> FabricatedRun:
    """A data_dir as a finished FetchFives leaves it (plus its category list beside it)."""
    data = root / "data"
    (data / "images").mkdir(parents=True)
    (data / "urls").mkdir()
    (data / "sample").mkdir()
    (data / "synsets").mkdir()
    categories_csv = root / "categories.csv"
    with categories_csv.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["wnid", "label"])
        writer.writerows([(w, label) for w, label, _ in CATEGORIES])
    (data / "synsets" / "categories.csv").write_text(
        categories_csv.read_text(encoding="utf-8"), encoding="utf-8"
    )
    run = FabricatedRun(data, [Category(w, label) for w, label, _ in CATEGORIES], categories_csv)
    sizes = [(320, 240), (240, 320), (500, 200), (64, 64), (400, 300)]
    modes = ["RGB", "RGB", "L", "CMYK", "RGB"]
    manifest, attempts, sample = [], [], []
    number = 0
    for wnid, label, kept in CATEGORIES:
        for i in range(kept):
            number += 1
            image_id = f"{wnid}_{100 + i}"
            url = f"http://farm{1 + i % 2}.static.flickr.com/{number}/{image_id}.jpg"
            final_url = url
            if wnid == "n02000002" and i == 0:
                url = HOSTILE_URL
            if wnid == "n02000002" and i == 1:
                url, final_url = "http://bücher.example/ü.jpg", "javascript:alert(document.domain)"
            name = image_filename(image_id, label)
            colour = _colour(number) if modes[i] == "RGB" else (128, 128, 128)
            make_jpeg(data / "images" / name, sizes[i], colour, modes[i])
            run.colours[name] = colour
            body = (data / "images" / name).read_bytes()
            manifest.append(
                {
                    "image_id": image_id,
                    "wnid": wnid,
                    "label": label,
                    "url": url,
                    "final_url": final_url,
                    "file": name,
                    "sha256": hashlib.sha256(body).hexdigest(),  # FetchFives checks the store by it
                    "md5": f"{number:032x}",
                    "bytes": len(body),
                    "width": sizes[i][0],
                    "height": sizes[i][1],
                }
            )
            attempts.append(attempt(wnid, 0, image_id, url, "ok", ms=120 + i))
            sample.append((image_id, url))
        # Every category also met dead links, on known hosts.
        for j in range(2 + (wnid == "n02000003") * 4):
            image_id = f"{wnid}_{900 + j}"
            url = f"http://dead{j % 2}.example.org/{image_id}.jpg"
            outcome = ["http_404", "dead_host", "timeout", "placeholder", "not_jpeg", "http_410"][j]
            attempts.append(attempt(wnid, 0, image_id, url, outcome, ms=0 if outcome == "dead_host" else 900))
            sample.append((image_id, url))
    # A top-up round replays a round-0 failure (same URL): counted once, with round 1's outcome.
    attempts.append(
        attempt("n01443537", 1, "n01443537_900", "http://dead0.example.org/n01443537_900.jpg", "http_404")
    )
    attempts.append(
        attempt("n01443537", 0, "n01443537_950", "http://farm1.static.flickr.com/1/x.jpg", "duplicate_url")
    )
    attempts.append(attempt("n02000003", 0, "n02000003_960", HOSTILE_HOST_URL, "dead_host", ms=15))
    attempts.append(attempt("n02000003", 0, "n02000003_961", "http://proxy.test/x.jpg", "proxy_error", ms=5))
    with (data / "manifest.csv").open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, MANIFEST_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(manifest)
    fields = ["wnid", "round", "image_id", "url", "final_url", "status", "outcome", "bytes", "ms", "md5"]
    fields += ["sha256", "error", "judged"]
    with (data / "attempts.csv").open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(attempts)
    by_category: dict[str, dict[str, int]] = {}
    by_host: dict[str, dict[str, int]] = {}
    for row in attempts:
        cat = by_category.setdefault(row["wnid"], {})
        cat[row["outcome"]] = cat.get(row["outcome"], 0) + 1
        host = by_host.setdefault(urlsplit(row["url"]).hostname or "(none)", {})
        host[row["outcome"]] = host.get(row["outcome"], 0) + 1
    summary = {
        "categories": len(CATEGORIES),
        "kept": len(manifest),
        "shortfalls": {w: PER_CATEGORY - k for w, _, k in CATEGORIES if k < PER_CATEGORY},
        "outcomes": {},
        "by_category": by_category,
        "by_host": by_host,
        "requests": {"made": 40, "per_kept_image": 2.22, "look_ahead_not_needed": 3},
    }
    (data / "fetch_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    url_report = {
        "lines": 1234,
        "bytes": 99_999,
        "synsets": 17,
        "urls": 1230,
        "malformed": {"no_tab": 3, "bad_id": 1, "examples": {"no_tab": ["garbage"]}},
        "seconds": 1.5,
    }
    (data / "urls" / "report.json").write_text(json.dumps(url_report), encoding="utf-8")
    with (data / "sample" / "seed0-n100.csv").open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["image_id", "url"])
        writer.writerows(sample)
    return run


def attempt(wnid: str, round_: int, image_id: str, url: str, outcome: str, ms: int = 0) -> dict[str, object]:
    return {
        "wnid": wnid,
        "round": round_,
        "image_id": image_id,
        "url": url,
        "final_url": url,
        "status": 200 if outcome == "ok" else "",
        "outcome": outcome,
        "bytes": 1000 if outcome == "ok" else 0,
        "ms": ms,
        "md5": "",
        "sha256": "",
        "error": "",
        "judged": "True",
    }


@pytest.fixture
def run(tmp_path: Path) -> FabricatedRun:
    return fabricate_run(tmp_path)


def run_report_of(run: FabricatedRun) -> dict:
    return collect_run_report(
        categories=run.categories,
        per_category=PER_CATEGORY,
        manifest=run.data / "manifest.csv",
        fetch_summary=run.data / "fetch_summary.json",
        attempts=run.data / "attempts.csv",
        url_report=run.data / "urls" / "report.json",
        sample=run.data / "sample" / "seed0-n100.csv",
        timings=run.data / "report" / "timings.csv",
    )


def close_to(pixel: tuple[int, ...], colour: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


# --- contact sheet -------------------------------------------------------------------------


def test_contact_sheet_has_a_row_per_category_every_image_and_marked_gaps(run):
    out = run.data / "contact_sheet.jpg"
    counts = write_contact_sheet(out, run.categories, run.manifest, run.data / "images", PER_CATEGORY)
    assert counts["thumbnails"] == 18 and counts["missing"] == 7 and counts["unreadable"] == 0
    groups = group_by_category(run.categories, run.manifest, PER_CATEGORY)
    layout = sheet_layout(len(groups), PER_CATEGORY)
    with Image.open(out) as sheet:
        assert sheet.format == "JPEG" and sheet.size == layout.size
        sheet = sheet.convert("RGB")
        for row, group in enumerate(groups):
            for slot in range(PER_CATEGORY):
                x0, y0, x1, y1 = layout.slot_box(row, slot)
                if slot < len(group.images):
                    # The thumbnail's centre has its image's colour: the right image, in the right slot.
                    expected = run.colours[group.images[slot]["file"]]
                    assert close_to(sheet.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)), expected)
                else:
                    # Off the cross and the word: the "missing" box's fill.
                    assert close_to(sheet.getpixel(((x0 + x1) // 2, y0 + 7)), MISSING_FILL)


def test_contact_sheet_of_200_categories_by_5_stays_a_sane_size_and_survives_a_bad_file(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        make_jpeg(images / f"src{i}.jpg", (500, 375), _colour(i))
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    categories = [Category(f"n{10_000_000 + c:08d}", f"category number {c}") for c in range(200)]
    rows = []
    for c, category in enumerate(categories):
        for i in range(5 if c != 7 else 2):
            name = f"{category.wnid}_{i}.jpg"
            # Hard links: 1,000 image files without writing 1,000 JPEGs.
            os.link(images / ("broken.jpg" if (c, i) == (3, 1) else f"src{i}.jpg"), images / name)
            rows.append({"image_id": f"{category.wnid}_{i}", "wnid": category.wnid, "file": name})
    counts = write_contact_sheet(tmp_path / "sheet.jpg", categories, rows, images, 5)
    assert counts["thumbnails"] == 996 and counts["unreadable"] == 1 and counts["missing"] == 3
    assert counts["thumb_height"] == 96
    assert counts["width"] < 1200 and counts["height"] < 30_000
    assert (tmp_path / "sheet.jpg").stat().st_size < 15_000_000


def test_contact_sheet_shrinks_thumbnails_rather_than_grow_without_bound():
    layout = sheet_layout(rows=200, per_category=100)  # 20,000 images: 96 px thumbnails would need 340 MP
    width, height = layout.size
    assert width * height <= 80_000_000 and layout.thumb_height < 96
    layout = sheet_layout(rows=600, per_category=5)  # past JPEG's 65,535 px: rows wrap into two blocks
    assert layout.blocks == 2 and layout.size[1] <= 65_500 and layout.thumb_height == 96


# --- gallery -------------------------------------------------------------------------------


class PageParser(html.parser.HTMLParser):
    """Tags with their attributes, and the page's text (entities decoded, as a browser shows it)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def build_run_gallery(run: FabricatedRun, with_report: bool = True) -> Path:
    report = run_report_of(run) if with_report else None
    gallery = run.data / "gallery"
    build_gallery(
        gallery,
        run.categories,
        run.manifest,
        run.data / "images",
        PER_CATEGORY,
        report=report,
        extra_links=[(run.data / "manifest.csv", "manifest.csv")],
    )
    return gallery


def test_gallery_shows_every_category_thumbnail_and_source_with_relative_links_only(run):
    gallery = build_run_gallery(run)
    page = parse_page(gallery / "index.html")
    sections = [a for tag, a in page.tags if tag == "section" and "category" in a.get("class", "")]
    assert [s["data-wnid"] for s in sections] == [w for w, _, _ in CATEGORIES]
    assert [int(s["data-missing"]) for s in sections] == [0, 0, 0, 2, 5]
    text = "".join(page.text)
    assert "2 missing" in text and "5 missing" in text
    for label in (SCRIPT_LABEL, PWN_LABEL, UNICODE_LABEL, "lemon #1 ?50%"):
        assert label in text  # shown as text, literally

    thumbs = [a["src"] for tag, a in page.tags if tag == "img"]
    assert len(thumbs) == 18 and len(set(thumbs)) == 18
    for src in thumbs:
        assert src.startswith("thumbs/") and src.endswith(".jpg")
        with Image.open(gallery / unquote(src)) as thumb:
            assert thumb.format == "JPEG"
            assert thumb.width <= THUMB_BOX[0] and thumb.height <= THUMB_BOX[1]
    full = [a["href"] for tag, a in page.tags if tag == "a" and "frame" in a.get("class", "")]
    names = [row["file"] for row in run.manifest]
    # Every thumbnail links to its full image, percent-encoded (#, ?, %, quotes) and relative.
    assert [(gallery / unquote(href)).resolve() for href in full] == [
        (run.data / "images" / n).resolve() for n in names
    ]
    assert all(href.startswith("../images/") for href in full)

    sources = {a["href"] for tag, a in page.tags if tag == "a" and a.get("class") == "source"}
    redirect = "http://farm1.static.flickr.com/11/n02000002_100.jpg"  # the hostile URL's final URL
    assert sources == {row["url"] for row in run.manifest} | {redirect}
    # The javascript: final URL is shown, never linked.
    assert "javascript:alert(document.domain)" in text
    for _, attrs in page.tags:
        for name in ("href", "src"):
            value = attrs.get(name)
            if value is None or value in sources:
                continue
            assert not urlsplit(value).scheme and not value.startswith("/"), value  # relative only
    extra = [a["href"] for tag, a in page.tags if tag == "a" and a.get("href", "").endswith(".csv")]
    assert (
        extra == ["../manifest.csv"]
        and (gallery / extra[0]).resolve() == (run.data / "manifest.csv").resolve()
    )


def test_gallery_page_carries_no_markup_from_labels_or_urls(run):
    gallery = build_run_gallery(run)
    page = parse_page(gallery / "index.html")
    assert [tag for tag, _ in page.tags].count("script") == 1
    assert not any(name.startswith("on") for _, attrs in page.tags for name in attrs)
    assert not any(attrs.get("src") == "x" for tag, attrs in page.tags if tag == "img")
    raw = (gallery / "index.html").read_text(encoding="utf-8")
    assert "<script>alert" not in raw and "<svg onload" not in raw
    csp = next(
        a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"
    )
    assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp.split("script-src")[1]


# --- run report ----------------------------------------------------------------------------


def test_outcome_classes_come_from_the_vocabulary_and_old_names_keep_their_class():
    assert class_of("ok") == OutcomeClass.WORKING == "ok"
    dead = ("http_404", "http_503", "dead_host", "placeholder_redirect", "evicted_duplicate", "duplicate")
    assert {class_of(o) for o in dead} == {"dead_link"}
    bad = ("not_jpeg", "truncated_download", "truncated_jpeg", "too_small", "decompression_bomb")
    assert {class_of(o) for o in bad} == {"bad_image"}
    # Names written before the renames: each of their two meanings has the same class.
    assert class_of("placeholder") == "dead_link" and class_of("truncated") == "bad_image"
    assert class_of("refused_address") == "refused"
    assert class_of("duplicate_url") == "skipped" and class_of("proxy_error") == "other"
    assert class_of("something_new") == "other"
    # Every class is defined in the report, with every name the vocabulary files under it.
    for outcome, cls in CLASSES.items():
        assert outcome.value in DEFINITIONS[cls.value].split(", ")
        assert DEFINITIONS["outcomes"][outcome.value] == MEANINGS[outcome]


def goldfish_report(tmp_path: Path, per_category: int, attempts: Path) -> dict:
    """The report of a one-category run of which only ``attempts`` may exist."""
    return collect_run_report(
        categories=[Category("n01443537", "goldfish")],
        per_category=per_category,
        manifest=tmp_path / "none.csv",
        fetch_summary=tmp_path / "none.json",
        attempts=attempts,
        url_report=tmp_path / "none.json",
        sample=None,
        timings=tmp_path / "none.csv",
    )


def test_old_attempts_rows_are_read_in_todays_names_and_refused_urls_are_not_dead_links(tmp_path):
    # Only a judged body has a digest: that, not the byte count (a cut download records the
    # bytes it got), tells an old name's two meanings apart.
    fields = ["wnid", "round", "image_id", "url", "outcome", "bytes", "ms", "sha256"]
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    rows = [
        ("n01443537", 0, "n01443537_1", "http://a.test/1.jpg", "ok", 900, 100, a),
        ("n01443537", 0, "n01443537_2", "http://a.test/2.jpg", "placeholder", 0, 80, ""),  # a redirect
        ("n01443537", 1, "n01443537_3", "http://b.test/3.jpg", "placeholder", 2051, 90, b),  # evicted
        ("n01443537", 0, "n01443537_4", "http://b.test/4.jpg", "truncated", 500, 70, ""),  # a cut download
        ("n01443537", 0, "n01443537_5", "http://b.test/5.jpg", "truncated", 700, 60, c),  # a cut JPEG
        ("n01443537", 0, "n01443537_6", "http://10.0.0.1/6.jpg", "refused_address", 0, 0, ""),
    ]
    with (tmp_path / "attempts.csv").open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(fields)
        writer.writerows(rows)
    report = goldfish_report(tmp_path, per_category=1, attempts=tmp_path / "attempts.csv")
    assert report["outcomes"] == {
        "evicted_duplicate": 1,
        "ok": 1,
        "placeholder_redirect": 1,
        "refused_address": 1,
        "truncated_download": 1,
        "truncated_jpeg": 1,
    }
    # The rows as recorded, as fetch_summary.json of that run counted them.
    assert report["attempts"]["outcomes"] == {"placeholder": 2, "truncated": 2, "ok": 1, "refused_address": 1}
    classes = report["outcome_classes"]
    assert (classes["dead_link"], classes["bad_image"], classes["refused"]) == (2, 2, 1)
    assert report["stages"]["urls_tried"] == 6 and report["dead_link_rate"] == round(2 / 6, 4)
    assert "1 internal address refused" in format_summary(report)
    assert report["timings"]["fetch_ms"]["bad_image"] == {
        "requests": 2,
        "total_seconds": 0.13,
        "median_ms": 65.0,
        "p90_ms": 70.0,
    }


def test_run_report_counts_every_stage_and_dead_links_per_host_and_category(run):
    timings = run.data / "report" / "timings.csv"
    append_timing(timings, "FetchCategory", "FetchCategory_a", 2.0)
    append_timing(timings, "FetchCategory", "FetchCategory_b", 3.5)
    append_timing(timings, "FetchCategory", "FetchCategory_a", 1.0)  # a rerun: the latest counts
    append_timing(timings, "FetchFives", "FetchFives_x", 0.25)
    with timings.open("a") as out:
        out.write("ExtractUrls,ExtractUrls_y,12")  # torn: the writer died mid-line
    report = run_report_of(run)
    stages = report["stages"]
    assert stages["url_list"] == {
        "lines": 1234,
        "bytes": 99_999,
        "synsets": 17,
        "urls": 1230,
        "malformed": {"no_tab": 3, "bad_id": 1},
        "malformed_total": 4,
        "seconds": 1.5,
    }
    assert stages["categories"] == 5 and stages["sampled_urls"] == 18 + 2 * 5 + 4
    # 18 ok + 14 failures in round 0 + a hostile host + a proxy error; the replay and skipped URL add none.
    assert stages["urls_tried"] == 18 + 14 + 2
    assert stages["kept"] == 18 and stages["wanted"] == 25
    assert stages["shortfall_categories"] == 2 and stages["missing_images"] == 7
    assert report["shortfalls"] == [
        {"wnid": "n02000003", "label": "lemon #1 ?50%", "kept": 3, "missing": 2},
        {"wnid": "n02000004", "label": PWN_LABEL, "kept": 0, "missing": 5},
    ]
    assert report["outcome_classes"] == {
        "ok": 18,
        "dead_link": 14,
        "bad_image": 1,
        "refused": 0,
        "skipped": 1,
        "other": 1,
    }
    hosts = {h["host"]: h for h in report["by_host"]}
    # dead0: http_404 x5, timeout and not_jpeg (lemon); dead1: dead_host x5, placeholder, http_410 (lemon).
    assert (hosts["dead0.example.org"]["tried"], hosts["dead0.example.org"]["dead_link"]) == (7, 6)
    assert hosts["dead1.example.org"]["dead_link_rate"] == 1.0
    assert hosts["farm1.static.flickr.com"]["dead_link_rate"] == 0.0
    assert hosts["farm1.static.flickr.com"]["skipped"] == 1
    assert hosts["<svg onload=alert(1)>"]["dead_link"] == 1
    categories = {c["wnid"]: c for c in report["by_category"]}
    assert categories["n01443537"]["tried"] == 7 and categories["n01443537"]["dead_link_rate"] == round(
        2 / 7, 4
    )
    assert categories["n02000004"]["tried"] == 2 and categories["n02000004"]["dead_link_rate"] == 1.0
    assert categories["n02000004"]["kept"] == 0
    families = {t["family"]: t for t in report["timings"]["tasks"]}
    assert set(families) == {"FetchCategory", "FetchFives"}  # the torn ExtractUrls line is left out
    assert families["FetchCategory"]["seconds"] == 4.5 and families["FetchCategory"]["tasks"] == 2
    assert report["timings"]["fetch_ms"]["ok"]["requests"] == 18
    assert report["timings"]["url_extraction_seconds"] == 1.5

    written = write_run_report(report, run.data / "report")
    assert json.loads((run.data / "report" / "run_report.json").read_text(encoding="utf-8")) == report
    summary = (run.data / "report" / "summary.txt").read_text(encoding="utf-8")
    assert summary == format_summary(report)
    for expected in (
        "1,234 lines",
        "4 malformed",
        "Sampled URLs: 32",
        "18 of 25",
        "2 categories short",
        "FetchCategory",
        "Requests:     40 to the web (2.22 per kept image, 3 look-ahead requests not needed)",
    ):
        assert expected in summary
    assert report["requests"] == {"made": 40, "per_kept_image": 2.22, "look_ahead_not_needed": 3}
    assert len(summary.splitlines()) <= 12
    for name in ("outcomes_by_host.svg", "outcomes.svg"):
        svg = ET.fromstring(
            written[name].read_text(encoding="utf-8")
        )  # well-formed: the hostile host is escaped
        assert svg.tag.endswith("svg") and not any(e.tag.endswith("svg") for e in list(svg.iter())[1:])
        assert any(e.tag.endswith("rect") for e in svg.iter())


def test_a_chart_shows_hostile_names_as_text_and_adds_no_element_or_handler():
    svg = stacked_bar_svg(
        SCRIPT_LABEL, [(PWN_LABEL, {"ok": 2, "dead_link": 1}), (HOSTILE_HOST_URL, {"refused": 1})]
    )
    root = ET.fromstring(svg)  # well-formed
    ns = "{http://www.w3.org/2000/svg}"
    assert {e.tag for e in root.iter()} == {f"{ns}svg", f"{ns}title", f"{ns}text", f"{ns}rect"}
    assert not any(name.startswith("on") for e in root.iter() for name in e.attrib)
    texts = [e.text for e in root.iter() if e.tag in (f"{ns}text", f"{ns}title")]
    assert texts[:2] == [SCRIPT_LABEL, SCRIPT_LABEL]  # the chart's title, literally
    assert f"{PWN_LABEL}: 2 working" in texts and f"{PWN_LABEL}: 1 dead link" in texts
    assert f"{HOSTILE_HOST_URL}: 1 refused" in texts
    assert HOSTILE_HOST_URL in texts  # short enough to be the bar's label as it is


def test_run_report_of_a_run_with_files_missing_says_unknown_instead_of_failing(tmp_path):
    report = goldfish_report(tmp_path, per_category=5, attempts=tmp_path / "none.csv")
    assert report["stages"]["url_list"]["lines"] is None and report["stages"]["urls_tried"] is None
    assert report["shortfalls"] == [{"wnid": "n01443537", "label": "goldfish", "kept": 0, "missing": 5}]
    summary = format_summary(report)
    assert "? lines" in summary and "0 of 5 images" in summary
    write_run_report(report, tmp_path / "report")
    assert (tmp_path / "report" / "run_report.json").exists()


def test_report_json_with_unexpected_keys_and_fetch_summary_fallback(run):
    (run.data / "attempts.csv").unlink()
    (run.data / "urls" / "report.json").write_text('{"lines": "lots", "malformed": [1, 2]}', encoding="utf-8")
    report = run_report_of(run)
    assert (
        report["stages"]["url_list"]["lines"] is None
        and report["stages"]["url_list"]["malformed_total"] is None
    )
    assert report["outcomes_source"] == "fetch_summary.json"
    assert report["outcome_classes"]["ok"] == 18


def readme_pandas_example() -> str:
    """The README's pandas example, as a user copies it."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    (example,) = [
        block
        for block in re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
        if 'pd.read_csv("data/manifest.csv"' in block
    ]
    return example


def test_the_readmes_pandas_example_runs_on_a_runs_files_and_counts_as_the_report_does(run, monkeypatch):
    report = run_report_of(run)
    write_run_report(report, run.data / "report")
    monkeypatch.chdir(run.data.parent)  # the README's paths start at data/
    found: dict[str, object] = {}
    exec(compile(readme_pandas_example(), "README.md", "exec"), found)

    assert found["kept"].to_dict() == {wnid: n for wnid, _, n in CATEGORIES if n}
    assert found["rows_per_class"].sum() == report["attempts"]["rows"]
    # Each URL once, with its last outcome: the report's classes, old names ("placeholder") included.
    assert found["per_class"].to_dict() == {c: n for c, n in report["outcome_classes"].items() if n}
    per_host = found["per_host"]
    for host in report["by_host"]:
        for cls in ("ok", "dead_link", "bad_image"):
            assert per_host.loc[host["host"]].get(cls, 0) == host[cls], (host["host"], cls)
    request_ms = found["request_ms"]
    for cls, stats in report["timings"]["fetch_ms"].items():
        assert request_ms.loc[cls, "count"] == stats["requests"]
        assert request_ms.loc[cls, "50%"] == stats["median_ms"]
    worst = found["worst"]
    assert worst.index[0] == "n02000004" and worst.loc["n02000004", "label"] == PWN_LABEL
    assert worst["dead_link_rate"].tolist() == sorted(
        (c["dead_link_rate"] for c in report["by_category"]), reverse=True
    )


def test_timings_file_keeps_complete_lines_only(tmp_path):
    path = tmp_path / "report" / "timings.csv"
    append_timing(path, "A", "A_1", 1.5)
    append_timing(path, "B", "B_1", 2)
    assert path.read_text().startswith("family,task_id,seconds,finished\n")
    with path.open("a") as out:
        out.write(
            "family,task_id,seconds,finished\nC,C_1,nan\nD,D_1,-1\nE,E_1,3"
        )  # races, damage, a torn line
    assert [(t.family, t.seconds) for t in read_timings(path)] == [("A", 1.5), ("B", 2.0)]
    assert read_timings(tmp_path / "absent.csv") == []


# --- the tasks, through luigi -------------------------------------------------------------


BUILD = {"local_scheduler": True, "workers": 1, "detailed_summary": True}  # in-process


@contextlib.contextmanager
def luigi_settings(settings: dict[tuple[str, str], str]) -> Iterator[None]:
    """Set luigi config options for the block and put the previous values back."""
    config = luigi.configuration.get_config()
    saved = {}
    for (section, option), value in settings.items():
        saved[(section, option)] = config.get(section, option, None)
        if not config.has_section(section):
            config.add_section(section)
        config.set(section, option, value)
    try:
        yield
    finally:
        for (section, option), value in saved.items():
            if value is None:
                config.remove_option(section, option)
            else:
                config.set(section, option, value)


def test_all_runs_contact_sheet_run_report_and_gallery_through_luigi(run, capsys):
    from tasks.report import All, ContactSheet, Gallery, RunReport

    settings = {
        ("paths", "data_dir"): str(run.data),
        ("ParseSynsets", "categories"): str(run.categories_csv),
        ("core", "no_configure_logging"): "true",  # leave pytest's logging alone
    }
    with luigi_settings(settings):
        from tasks.fetch_fives import FetchFives

        # The fabricated manifest stands for a finished FetchFives of this configuration,
        # in its run folder.
        folder = FetchFives().run_folder()
        folder.mkdir(parents=True)
        rows = run.manifest
        for name in ("manifest.csv", "attempts.csv", "fetch_summary.json", "images"):
            (run.data / name).rename(folder / name)
        store = ImageStore(run.data / "store")  # where a finished FetchFives' images live
        for row in rows:
            store.put((folder / "images" / row["file"]).read_bytes(), row["sha256"])
        # ... and the fabricated sample for SampleUrls' output, named by the list's digest.
        sample = Path(FetchFives().sample_task().output().path)
        (run.data / "sample" / "seed0-n100.csv").rename(sample)
        result = luigi.build([All()], **BUILD)
        assert result.status == LuigiStatusCode.SUCCESS, result.summary_text
        for task in (ContactSheet(), RunReport(), Gallery()):
            assert task.complete()
        timings = read_timings(run.data / "runs" / "timings.csv")
        assert {"ContactSheet", "RunReport", "Gallery"} <= {t.family for t in timings}
        assert "FetchFives" not in {t.family for t in timings}  # complete already: not rerun
        out = capsys.readouterr().out
        assert "ImageNet sample: run report" in out and "18 of 25 images" in out
        report = json.loads((folder / "report" / "run_report.json").read_text(encoding="utf-8"))
        assert report["stages"]["sampled_urls"] == 32  # found SampleUrls' output by its configured name
        page = (folder / "gallery" / "index.html").read_text(encoding="utf-8")
        assert 'href="../contact_sheet.jpg"' in page and "ImageNet sample: run report" in page

        again = luigi.build([All()], **BUILD)
        assert again.status == LuigiStatusCode.SUCCESS
        assert len(read_timings(run.data / "runs" / "timings.csv")) == len(timings)  # nothing reran


def test_one_malformed_line_in_attempts_costs_that_line_not_the_file(tmp_path):
    # An edited attempts.csv with an unterminated quote: pandas' C parser refuses the whole
    # file, and the report would silently fall back to fetch_summary.json (here: nothing).
    text = (
        "wnid,round,image_id,url,outcome,ms,sha256\n"
        "n01443537,0,n01443537_1,http://a.test/1.jpg,ok,100,aa\n"
        "n01443537,0,n01443537_2,http://a.test/2.jpg,http_404,80,\n"
        "n01443537,0,n01443537_3,http://a.test/3.jpg,ok,90,bb,EXTRA\n"  # one cell too many
        '"n01443537,0,n01443537_4,http://a.test/4.jpg,ok,70,cc\n'  # unterminated quote to EOF
    )
    (tmp_path / "attempts.csv").write_text(text, encoding="utf-8")
    report = goldfish_report(tmp_path, per_category=1, attempts=tmp_path / "attempts.csv")
    assert report["outcomes_source"] == "attempts.csv"
    assert report["outcomes"] == {"ok": 1, "http_404": 1}
