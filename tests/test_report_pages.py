"""The contact sheet and the gallery at 1000 categories: numbered sheets, an index and pages.

A fabricated finished run of 1000 categories, each with 1 to 5 tiny real JPEGs
(made with Pillow, each its own colour), is drawn and paged as ContactSheet and
Gallery do it; a user must reach every category from the index and find every
image exactly once, on pages of bounded size.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

from sampler.categories.words import Category
from sampler.report.contact_sheet import (
    CATEGORIES_PER_SHEET,
    contact_sheet_output,
    group_by_category,
    sheet_layout,
    sheet_name,
    write_contact_sheet,
)
from sampler.report.gallery import CATEGORIES_PER_PAGE, build_gallery, page_name
from tests.test_report import PageParser, close_to, parse_page

CATEGORY_COUNT = 1000
PER_CATEGORY = 5
# Today's single page held ~1 kB per image: 1000 x 5 would be over 4 MB. A page holds at most
# 500 image boxes, and the index one short line per category.
PAGE_BYTES = 600_000
INDEX_BYTES = 600_000


def kept_of(c: int) -> int:
    """1 to 5 images a category; every seventh category is short."""
    return PER_CATEGORY if c % 7 else 1 + c % 4


def colour_of(n: int) -> tuple[int, int, int]:
    return (40 + (n * 37) % 180, 40 + (n * 91) % 180, 40 + (n * 53) % 180)


class BigRun:
    def __init__(self, root: Path) -> None:
        self.data = root / "data"
        self.images = self.data / "images"
        self.images.mkdir(parents=True)
        self.categories = [Category(f"n{10_000_000 + c:08d}", f"category {c}") for c in range(CATEGORY_COUNT)]
        self.rows: list[dict[str, str]] = []
        self.colours: dict[str, tuple[int, int, int]] = {}
        for c, category in enumerate(self.categories):
            for i in range(kept_of(c)):
                name = f"{category.wnid}_{i}_{category.label.replace(' ', '_')}.jpg"
                colour = colour_of(len(self.rows))
                Image.new("RGB", (40, 30), colour).save(self.images / name, "JPEG", quality=90)
                self.colours[name] = colour
                self.rows.append(
                    {
                        "image_id": f"{category.wnid}_{i}",
                        "wnid": category.wnid,
                        "label": category.label,
                        "url": f"http://farm1.static.flickr.com/{c}/{category.wnid}_{i}.jpg",
                        "file": name,
                        "width": "40",
                        "height": "30",
                        "bytes": str((self.images / name).stat().st_size),
                    }
                )
        groups = group_by_category(self.categories, self.rows, PER_CATEGORY)
        self.short = {g.wnid for g in groups if g.missing}


@pytest.fixture(scope="module")
def big_run(tmp_path_factory: pytest.TempPathFactory) -> BigRun:
    return BigRun(tmp_path_factory.mktemp("big"))


def test_a_thousand_categories_make_numbered_sheets_of_at_most_200_rows(big_run):
    out = contact_sheet_output(big_run.data, CATEGORY_COUNT)
    assert out == big_run.data / "contact_sheet"
    assert contact_sheet_output(big_run.data, 200) == big_run.data / "contact_sheet.jpg"  # DET-200: as before

    counts = write_contact_sheet(out, big_run.categories, big_run.rows, big_run.images, PER_CATEGORY)
    sheets = sorted(out.iterdir())
    expected = math.ceil(CATEGORY_COUNT / CATEGORIES_PER_SHEET)
    assert [p.name for p in sheets] == [sheet_name(n) for n in range(1, expected + 1)]
    assert counts["sheets"] == expected and counts["thumbnails"] == len(big_run.rows)
    assert counts["missing"] == CATEGORY_COUNT * PER_CATEGORY - len(big_run.rows)
    assert counts["unreadable"] == 0

    groups = group_by_category(big_run.categories, big_run.rows, PER_CATEGORY)
    layout = sheet_layout(CATEGORIES_PER_SHEET, PER_CATEGORY)
    for number, path in enumerate(sheets):
        with Image.open(path) as sheet:
            assert sheet.format == "JPEG" and sheet.size == layout.size  # 200 rows, not 1000
            sheet = sheet.convert("RGB")
            # First and last category of the sheet: each image in its slot, in order.
            for row in (0, CATEGORIES_PER_SHEET - 1):
                group = groups[number * CATEGORIES_PER_SHEET + row]
                for slot, image in enumerate(group.images):
                    x0, y0, x1, y1 = layout.slot_box(row, slot)
                    pixel = sheet.getpixel(((x0 + x1) // 2, (y0 + y1) // 2))
                    assert close_to(pixel, big_run.colours[image["file"]]), (path.name, row, slot)
    assert not list(big_run.data.glob("contact_sheet.tmp-*"))  # the folder appeared at once


def links_of(page: PageParser) -> list[str]:
    return [a["href"] for tag, a in page.tags if tag == "a" and "href" in a]


def test_a_thousand_category_gallery_is_an_index_and_bounded_pages_reaching_everything(big_run, tmp_path):
    gallery = big_run.data / "gallery"
    counts = build_gallery(gallery, big_run.categories, big_run.rows, big_run.images, PER_CATEGORY)
    pages = sorted(gallery.glob("page-*.html"))
    assert counts["pages"] == len(pages) == CATEGORY_COUNT // CATEGORIES_PER_PAGE
    assert [p.name for p in pages] == [page_name(n) for n in range(1, len(pages) + 1)]
    assert counts["thumbnails"] == len(big_run.rows)

    index = parse_page(gallery / "index.html")
    assert (gallery / "index.html").stat().st_size < INDEX_BYTES
    assert not any(tag == "img" for tag, _ in index.tags)  # the index lists, the pages show
    rows = [a for tag, a in index.tags if tag == "tr" and "data-wnid" in a]
    assert [r["data-wnid"] for r in rows] == [c.wnid for c in big_run.categories]
    assert {r["data-wnid"] for r in rows if r["data-missing"] != "0"} == big_run.short
    # Short categories are listed again at the top, each linked.
    short_links = [a["href"] for tag, a in index.tags if tag == "a" and a.get("class") == "short"]
    assert len(short_links) == len(big_run.short)

    # Every category is reachable from the index: its link leads to its section on its page.
    parsed = {p.name: parse_page(p) for p in pages}
    sections = {
        name: {a["id"]: a for tag, a in page.tags if tag == "section"} for name, page in parsed.items()
    }
    reached = set()
    for href in links_of(index):
        if "#" not in href:
            continue
        name, _, anchor = href.partition("#")
        section = sections[name][anchor]
        reached.add(section["data-wnid"])
    assert reached == {c.wnid for c in big_run.categories}

    # Every image is shown exactly once in all the pages, linking to its full image.
    thumbs, full = [], []
    for name, page in parsed.items():
        assert (gallery / name).stat().st_size < PAGE_BYTES, name
        thumbs += [a["src"] for tag, a in page.tags if tag == "img" and "thumb" in a.get("class", "")]
        full += [a["href"] for tag, a in page.tags if tag == "a" and "frame" in a.get("class", "")]
        # Each page leads back to the index.
        assert "index.html" in links_of(page)
    assert len(thumbs) == len(set(thumbs)) == len(big_run.rows)
    assert all((gallery / unquote(src)).is_file() for src in thumbs)
    assert sorted((gallery / unquote(h)).resolve() for h in full) == sorted(
        (big_run.images / row["file"]).resolve() for row in big_run.rows
    )
    assert sorted(p.name for p in (gallery / "thumbs").iterdir()) == sorted(Path(s).name for s in thumbs)

    # Deterministic: made again, the same bytes.
    again = big_run.data / "gallery-again"
    build_gallery(again, big_run.categories, big_run.rows, big_run.images, PER_CATEGORY)

    def digests(folder: Path) -> dict[str, str]:
        return {
            str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }

    assert digests(again) == digests(gallery)


def test_pages_hold_whole_categories_and_fewer_of_them_when_each_has_many_images(tmp_path):
    from sampler.report.contact_sheet import CategoryImages
    from sampler.report.gallery import SLOTS_PER_PAGE, paginate

    groups = [CategoryImages(f"n{c:08d}", f"c{c}", [{}] * 50) for c in range(95)]
    pages = paginate(groups, 50)
    assert [len(p) for p in pages] == [SLOTS_PER_PAGE // 50] * 9 + [5]
    assert [i for p in pages for i in p] == list(range(95))
    assert paginate(groups[:3], 5000) == [[0], [1], [2]]  # a category bigger than a page gets its own


def test_a_page_and_the_index_in_a_real_browser_from_disk(big_run, tmp_path):
    from tests.test_gallery_browser import attrs_of, open_in_chromium

    gallery = big_run.data / "gallery-browser"
    categories = big_run.categories[:250]
    rows = [r for r in big_run.rows if r["wnid"] <= categories[-1].wnid]
    counts = build_gallery(gallery, categories, rows, big_run.images, PER_CATEGORY)
    assert counts["pages"] == 3
    index = open_in_chromium(gallery / "index.html", tmp_path, tmp_path / "index.png")
    assert [a["data-wnid"] for a in attrs_of(index, "tr") if "data-wnid" in a] == [c.wnid for c in categories]
    assert [a["href"] for a in attrs_of(index, "a") if a["href"].startswith("page-")][:3] == [
        page_name(n) for n in (1, 2, 3)
    ]
    # page 2 holds categories 101-200: every thumbnail on it loads from disk.
    page = open_in_chromium(gallery / page_name(2), tmp_path, tmp_path / "page.png")
    on_page = [r for r in rows if 100 <= int(r["wnid"][1:]) - 10_000_000 < 200]
    (status,) = attrs_of(page, "p", id="load-status")
    assert (status.get("data-total"), status.get("data-broken")) == (str(len(on_page)), "0"), status
    sections = [a["data-wnid"] for a in attrs_of(page, "section")]
    assert sections == [c.wnid for c in big_run.categories[100:200]]
    for shot in ("index.png", "page.png"):
        with Image.open(tmp_path / shot) as image:
            assert image.size == (1280, 1400)


def test_the_tasks_declare_the_sheet_folder_past_200_categories_and_the_whole_gallery_folder(tmp_path):
    import csv

    from tasks.report import ContactSheet, Gallery
    from tests.test_report import luigi_settings

    for count, sheet in ((200, "contact_sheet.jpg"), (201, "contact_sheet")):
        listed = tmp_path / f"categories{count}.csv"
        with listed.open("w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(["wnid", "label"])
            writer.writerows([(f"n{10_000_000 + c:08d}", f"category {c}") for c in range(count)])
        data = str(tmp_path / "data")
        with luigi_settings({("paths", "data_dir"): data, ("ParseSynsets", "categories"): str(listed)}):
            run_folder = ContactSheet().run_folder()  # runs/<configuration>/ (published at the top)
            assert run_folder.parent == tmp_path / "data" / "runs"
            assert Path(ContactSheet().output().path) == run_folder / sheet
            outputs = Gallery().output()
            assert Path(outputs["folder"].path) == run_folder / "gallery"
            assert Path(outputs["index"].path) == run_folder / "gallery" / "index.html"
