"""Sampling: deterministic per (seed, wnid), prefix of the continuation, shortfalls, CSV round trip."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from sampler.index.read import UrlIndex
from sampler.index.stream import build_url_index
from sampler.sampling import (
    candidate_order,
    iter_candidates,
    read_sample_csv,
    sample_urls,
    write_sample_csv,
)

SIZES = {"n01440764": 250, "n02084071": 40, "n03000000": 120, "n04000000": 100}
NASTY_URLS = [
    "http://example.com/a,b,c.jpg",
    'http://example.com/say "cheese".jpg',
    "http://example.com/with space.jpg",
    "http://example.com/photos%20of%20cats.jpg",
    "http://www.yueqi.sh.cn/picimage/口琴小品1.jpg",
    "http://example.com/tab\tinside.jpg",
    "http://example.com/cr\r.jpg",
    "http://example.com/'single'.jpg",
    'http://example.com/"",,"',
]


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> UrlIndex:
    root = tmp_path_factory.mktemp("sampling")
    lines = []
    for wnid, n in SIZES.items():
        for i in range(n):
            url = NASTY_URLS[i] if i < len(NASTY_URLS) else f"http://farm1.static.flickr.com/{wnid}/{i}.jpg"
            lines.append(f"{wnid}_{i + 1}\t{url}\n")
    raw = io.BytesIO()
    data = "".join(lines).encode("utf-8")
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("fall11_urls.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (root / "urls.tgz").write_bytes(gzip.compress(raw.getvalue()))
    build_url_index(root / "urls.tgz", root / "index")
    return UrlIndex.open(root / "index")


def test_candidate_order_is_a_deterministic_permutation() -> None:
    order = candidate_order(7, "n01440764", 500)
    assert sorted(order) == list(range(500))
    assert order != list(range(500))
    assert candidate_order(7, "n01440764", 500) == order
    assert candidate_order(8, "n01440764", 500) != order
    assert candidate_order(7, "n02084071", 500) != order
    assert candidate_order(7, "n01440764", 0) == []
    # Pinned: the order must not change between releases, or old samples become irreproducible.
    assert candidate_order(0, "n01440764", 10) == [3, 5, 7, 8, 2, 1, 6, 0, 4, 9]


def test_same_seed_same_rows_different_seed_different_rows(index: UrlIndex) -> None:
    wnids = list(SIZES)
    first, _ = sample_urls(index, wnids, 30, seed=1)
    again, _ = sample_urls(index, wnids, 30, seed=1)
    other, _ = sample_urls(index, wnids, 30, seed=2)
    assert first == again
    assert first != other
    assert len(first) == 30 * len(wnids)
    # In the given order, per_category each, all from the right synset, no repeats.
    for k, wnid in enumerate(wnids):
        block = first[30 * k : 30 * (k + 1)]
        assert all(image_id.startswith(wnid + "_") for image_id, _ in block)
        assert len(set(block)) == 30


def test_sample_does_not_depend_on_the_other_categories(index: UrlIndex) -> None:
    alone, _ = sample_urls(index, ["n03000000"], 25, seed=5)
    among, _ = sample_urls(index, ["n04000000", "n03000000", "n01440764"], 25, seed=5)
    assert among[25:50] == alone
    reordered, _ = sample_urls(index, ["n03000000", "n04000000"], 25, seed=5)
    assert reordered[:25] == alone


def test_sample_is_the_prefix_of_the_candidates(index: UrlIndex) -> None:
    sample, _ = sample_urls(index, ["n01440764"], 100, seed=3)
    candidates = list(iter_candidates(index, "n01440764", seed=3))
    assert len(candidates) == 250
    assert candidates[:100] == sample
    assert sorted(candidates) == sorted(index.rows("n01440764"))
    assert list(iter_candidates(index, "n01440764", seed=3, start=100)) == candidates[100:]
    assert list(iter_candidates(index, "n01440764", seed=3, start=250)) == []
    # A larger sample extends a smaller one: asking for more never reshuffles.
    bigger, _ = sample_urls(index, ["n01440764"], 150, seed=3)
    assert bigger[:100] == sample


def test_shortfall_is_reported(index: UrlIndex) -> None:
    rows, short = sample_urls(index, ["n01440764", "n02084071", "n09999999", "n04000000"], 100, seed=0)
    assert short == {"n02084071": 40, "n09999999": 0}
    assert len(rows) == 100 + 40 + 0 + 100  # exactly 100 is not a shortfall
    assert sorted(r for r in rows if r[0].startswith("n02084071")) == sorted(index.rows("n02084071"))


def test_iter_candidates_is_lazy_and_handles_unknown_wnids(index: UrlIndex) -> None:
    assert list(iter_candidates(index, "n09999999", seed=0)) == []
    stream = iter_candidates(index, "n03000000", seed=0)
    assert next(stream)[0].startswith("n03000000_")


def test_csv_round_trip_with_nasty_urls(index: UrlIndex, tmp_path: Path) -> None:
    rows = index.rows("n04000000")[: len(NASTY_URLS)] + [("n01440764_9", "http://a/\n")]
    assert [url for _, url in rows[: len(NASTY_URLS)]] == NASTY_URLS
    path = tmp_path / "sample.csv"
    write_sample_csv(rows, path)
    assert read_sample_csv(path) == rows
    raw = path.read_bytes()
    assert raw.startswith(b"image_id,url\n")
    assert b"\r\n" not in raw.replace(b'cr\r.jpg"', b"")  # \n line ends; the \r in a URL stays quoted
    assert '"http://example.com/say ""cheese"".jpg"' in raw.decode("utf-8")
    assert "口琴小品1" in raw.decode("utf-8")


def test_csv_sample_end_to_end(index: UrlIndex, tmp_path: Path) -> None:
    rows, _ = sample_urls(index, list(SIZES), 100, seed=11)
    write_sample_csv(rows, tmp_path / "s.csv")
    assert read_sample_csv(tmp_path / "s.csv") == rows


def test_read_sample_csv_refuses_other_files(tmp_path: Path) -> None:
    (tmp_path / "no_header.csv").write_text("n01440764_1,http://a/\n", encoding="utf-8")
    with pytest.raises(ValueError, match="header"):
        read_sample_csv(tmp_path / "no_header.csv")
    (tmp_path / "three.csv").write_text("image_id,url\nn01440764_1,http://a/,extra\n", encoding="utf-8")
    with pytest.raises(ValueError, match="2 fields"):
        read_sample_csv(tmp_path / "three.csv")
