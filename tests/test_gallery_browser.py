"""The gallery in a real browser: headless Chromium opens index.html from disk (file://, no server).

The page's own script marks thumbnails that failed to load and sets
``#load-status[data-broken]``; ``--dump-dom`` hands back the DOM after the load
event, so the test reads what the browser saw, not what the HTML says.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from tests.conftest import CHROMIUM_FLAGS, chromium_path
from tests.test_report import CATEGORIES, PageParser, build_run_gallery, fabricate_run


def open_in_chromium(page: Path, tmp: Path, screenshot: Path | None = None) -> PageParser:
    """The page's DOM after load (and a screenshot of its top, if asked), parsed."""
    browser = chromium_path()
    if browser is None:
        pytest.skip("chromium is not installed")
    command = [
        browser,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--hide-scrollbars",
        "--window-size=1280,1400",
        # Lets the load event and the page's script run before the DOM is dumped.
        "--virtual-time-budget=5000",
        "--dump-dom",
    ]
    if screenshot is not None:
        command.append(f"--screenshot={screenshot}")
    done = subprocess.run(
        [*command, page.resolve().as_uri()], capture_output=True, text=True, timeout=60, cwd=tmp
    )
    assert done.returncode == 0, done.stderr[-2000:]
    parser = PageParser()
    parser.feed(done.stdout)
    return parser


def attrs_of(dom: PageParser, tag: str, **match: str) -> list[dict[str, str]]:
    return [a for t, a in dom.tags if t == tag and all(a.get(k) == v for k, v in match.items())]


def test_every_thumbnail_loads_and_every_category_is_shown_from_disk(tmp_path):
    run = fabricate_run(tmp_path)
    gallery = build_run_gallery(run)
    screenshot = tmp_path / "gallery.png"
    dom = open_in_chromium(gallery / "index.html", tmp_path, screenshot)

    (status,) = attrs_of(dom, "p", id="load-status")
    assert (status.get("data-total"), status.get("data-broken")) == ("18", "0"), status
    assert "All 18 thumbnails loaded" in "".join(dom.text)
    thumbs = [a for a in attrs_of(dom, "img") if "thumb" in a.get("class", "")]
    assert len(thumbs) == 18 and not any("data-broken" in a for a in thumbs)
    sections = [a for a in attrs_of(dom, "section") if "category" in a.get("class", "")]
    assert [s["data-wnid"] for s in sections] == [wnid for wnid, _, _ in CATEGORIES]
    # The hostile label's onerror never ran, and its markup stayed text.
    (body,) = attrs_of(dom, "body")
    assert "data-pwned" not in body
    assert not any(a.get("src") == "x" for a in attrs_of(dom, "img"))
    assert "5 missing" in "".join(dom.text)

    with Image.open(screenshot) as shot:
        assert shot.size == (1280, 1400)
        # Not a blank page: thumbnails and chart bars give the top of the page real contrast.
        assert max(ImageStat.Stat(shot.convert("L")).stddev) > 20


def test_a_thumbnail_that_does_not_load_is_reported_on_the_page(tmp_path):
    run = fabricate_run(tmp_path)
    gallery = build_run_gallery(run, with_report=False)
    lost = sorted((gallery / "thumbs").iterdir())[3]
    lost.unlink()
    dom = open_in_chromium(gallery / "index.html", tmp_path)
    (status,) = attrs_of(dom, "p", id="load-status")
    assert (status.get("data-total"), status.get("data-broken")) == ("18", "1")
    assert "1 of 18 images failed to load" in "".join(dom.text)
    broken = [a["src"] for a in attrs_of(dom, "img") if "data-broken" in a]
    assert broken == [f"thumbs/{lost.name}"]
