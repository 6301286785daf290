"""The whole pipeline on the demo world, run as a user runs it: `luigi --module pipeline FetchFives`."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from demo.world import expected_jpeg, load_world
from sampler.index.read import UrlIndex
from sampler.naming import image_filename
from sampler.sampling import iter_candidates, read_sample_csv
from tests.conftest import run_luigi, write_demo_config

PER_CATEGORY = 5


def read_manifest(data: Path) -> list[dict[str, str]]:
    with (data / "manifest.csv").open(encoding="utf-8", newline="") as src:
        return list(csv.DictReader(src))


def all_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def sample_file(data: Path, seed: int = 0, sample_size: int = 100) -> Path:
    """SampleUrls' output: ``sample/seed<S>-n<N>-<digest of the category list>.csv``."""
    (found,) = (data / "sample").glob(f"seed{seed}-n{sample_size}-*.csv")
    return found


def expected_kept(world: dict, data: Path, seed: int = 0, sample_size: int = 100) -> dict[str, list[str]]:
    """The first PER_CATEGORY URLs in sample order that the world serves a real, unique JPEG for.

    Order comes from the sample file and the index; validity only from the world's own
    description of each URL, so the test does not trust the downloader's judgement.
    """
    sample = read_sample_csv(sample_file(data, seed, sample_size))
    index = UrlIndex.open(data / "urls")
    taken: set[bytes] = set()
    kept: dict[str, list[str]] = {}
    for category in world["categories"]:
        wnid = category["wnid"]
        rows = [row for row in sample if row[0].startswith(wnid + "_")]
        order = rows + list(iter_candidates(index, wnid, seed, len(rows)))
        kept[wnid] = []
        for _image_id, url in order:
            body = expected_jpeg(world, url)
            if body is None or body in taken:
                continue
            taken.add(body)
            kept[wnid].append(url)
            if len(kept[wnid]) == PER_CATEGORY:
                break
    return kept


@pytest.fixture(scope="module")
def central_run(tmp_path_factory, demo_world, demo_server, luigid):
    """One full run through a real luigid with two worker processes' worth of parallelism."""
    folder = tmp_path_factory.mktemp("central")
    config = write_demo_config(folder, demo_world, demo_server)
    demo_server.clear_log()
    result = run_luigi(config, demo_server, "--workers", "2", scheduler=luigid)
    return folder, config, result


def test_fetchfives_keeps_the_first_working_jpegs_in_sample_order(central_run, demo_world):
    folder, _config, result = central_run
    assert result.returncode == 0, result.stderr[-3000:]
    data = folder / "data"
    world = load_world(demo_world)
    manifest = read_manifest(data)
    by_wnid: dict[str, list[dict[str, str]]] = {}
    for row in manifest:
        by_wnid.setdefault(row["wnid"], []).append(row)
    expected = expected_kept(world, data)
    for category in world["categories"]:
        got = [row["url"] for row in by_wnid.get(category["wnid"], [])]
        assert got == expected[category["wnid"]], category["label"]
    shortfall = next(c for c in world["categories"] if c["role"] == "shortfall")
    assert 0 < len(by_wnid[shortfall["wnid"]]) < PER_CATEGORY
    for row in manifest:
        body = (data / "images" / row["file"]).read_bytes()
        assert row["file"] == image_filename(row["image_id"], row["label"])
        assert body == expected_jpeg(world, row["url"])  # saved exactly as served
        assert hashlib.sha256(body).hexdigest() == row["sha256"] and int(row["bytes"]) == len(body)
        with Image.open(io.BytesIO(body)) as image:
            image.load()
            assert (image.width, image.height) == (int(row["width"]), int(row["height"]))
    assert len({row["sha256"] for row in manifest}) == len(manifest)
    assert sorted(os.listdir(data / "images")) == sorted(row["file"] for row in manifest)


def test_no_temporary_or_partial_file_is_left(central_run):
    folder, _config, _result = central_run
    leftovers = [p for p in (folder / "data").rglob("*") if ".tmp-" in p.name or p.name.endswith(".part")]
    assert leftovers == []
    assert not list((folder / "data").rglob("*.journal.csv"))


def test_rerun_of_a_finished_pipeline_does_nothing_and_exits_0(central_run, demo_server, luigid):
    folder, config, _result = central_run
    before = all_files(folder / "data")
    mtimes = {p: p.stat().st_mtime_ns for p in (folder / "data").rglob("*")}
    demo_server.clear_log()
    again = run_luigi(config, demo_server, scheduler=luigid)
    assert again.returncode == 0, again.stderr[-3000:]
    assert demo_server.requests == []  # not even the tarball or words.txt
    assert all_files(folder / "data") == before
    assert {p: p.stat().st_mtime_ns for p in (folder / "data").rglob("*")} == mtimes


def test_one_worker_and_a_local_scheduler_give_the_same_bytes(central_run, tmp_path, demo_world, demo_server):
    folder, _config, result = central_run
    assert result.returncode == 0
    config = write_demo_config(tmp_path, demo_world, demo_server)
    single = run_luigi(config, demo_server, "--workers", "1")
    assert single.returncode == 0, single.stderr[-3000:]
    sample = sample_file(folder / "data").relative_to(folder / "data")
    for name in ("manifest.csv", sample, "urls/counts.csv"):
        assert (tmp_path / "data" / name).read_bytes() == (folder / "data" / name).read_bytes(), name
    assert all_files(tmp_path / "data" / "images") == all_files(folder / "data" / "images")


def test_unknown_category_fails_before_any_image_is_downloaded(tmp_path, demo_world, demo_server):
    categories = tmp_path / "cats.csv"
    categories.write_text("wnid,label\nn02672831,accordion\nn09999999,unicorn\n")
    config = write_demo_config(
        tmp_path, demo_world, demo_server, ParseSynsets={"categories": str(categories)}
    )
    demo_server.clear_log()
    result = run_luigi(config, demo_server)
    assert result.returncode != 0
    assert "unknown to words.txt: n09999999" in result.stdout + result.stderr
    assert not (tmp_path / "data" / "images").exists()
    fetched = [url for _method, url, _status in demo_server.requests if "/files/" not in url]
    assert fetched == []


def test_changed_settings_on_an_existing_data_dir_are_honoured(
    central_run, tmp_path, demo_world, demo_server
):
    """A new per_category, back to the old one, then a category list with an unknown wnid."""
    folder, _config, result = central_run
    assert result.returncode == 0
    shutil.copytree(folder / "data", tmp_path / "data")
    config = write_demo_config(tmp_path, demo_world, demo_server)
    for per_category in (3, PER_CATEGORY):
        run = run_luigi(config, demo_server, "--FetchFives-per-category", str(per_category))
        assert run.returncode == 0, run.stderr[-3000:]
        manifest = read_manifest(tmp_path / "data")
        counts = {row["wnid"]: 0 for row in manifest}
        for row in manifest:
            counts[row["wnid"]] += 1
        assert max(counts.values()) == per_category
        assert sorted(os.listdir(tmp_path / "data" / "images")) == sorted(row["file"] for row in manifest)
    assert (tmp_path / "data" / "manifest.csv").read_bytes() == (
        folder / "data" / "manifest.csv"
    ).read_bytes()
    edited = tmp_path / "edited.csv"
    edited.write_text((demo_world / "categories.csv").read_text() + "n09999999,unicorn\n")
    config = write_demo_config(tmp_path, demo_world, demo_server, ParseSynsets={"categories": str(edited)})
    bad = run_luigi(config, demo_server)
    assert bad.returncode != 0
    assert "unknown to words.txt: n09999999" in bad.stdout + bad.stderr
