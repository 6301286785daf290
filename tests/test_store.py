"""The image store: every good image is fetched once, and images/ is a view of the store.

Unit tests call sampler.store directly; the rest run the pipeline as a user runs it
(``luigi --module pipeline FetchFives``) against the demo world on loopback and count
what the server was asked.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
import threading
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from demo import world as dw
from demo.server import DemoServer
from sampler.atomic import TMP_MARK, temporary_sibling
from sampler.store import ImageStore, MissingFromStore, make_view
from tests.conftest import run_luigi, write_demo_config


def jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (seed * 53 % 256, seed * 97 % 256, seed * 29 % 256)).save(out, "JPEG")
    return out.getvalue()


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


def image_requests(server: DemoServer) -> list[tuple[str, str, int]]:
    """Requests for anything but the world's files (the tarball, words.txt)."""
    return [r for r in server.requests if "/files/" not in r[1]]


def good_keys(world: dict) -> set[str]:
    """url_key of every URL that answers 200 with a good image (a redirect: its target)."""
    return {
        dw.url_key(entry.get("target") or url)
        for url, entry in world["urls"].items()
        if entry["valid"] and len(entry["ids"]) == 1  # a URL of two synsets is fetched by both
    }


def fetched_twice(requests: list[tuple[str, str, int]], good: set[str]) -> dict[str, int]:
    served = Counter(dw.url_key(url) for method, url, status in requests if method == "GET" and status == 200)
    return {key: n for key, n in served.items() if key in good and n > 1}


# --------------------------------------------------------------------------- the store itself


def test_a_body_is_stored_once_under_its_sha256_and_read_back_checked(tmp_path):
    store = ImageStore(tmp_path / "store")
    body = jpeg(1)
    digest = store.put(body)
    assert digest == sha(body)
    assert store.path(digest) == tmp_path / "store" / digest[:2] / f"{digest}.jpg"
    assert store.get(digest) == body and store.has(digest)
    assert store.put(body) == digest  # again: nothing changes
    assert [p.name for p in store.entries()] == [f"{digest}.jpg"]
    # Damaged (a power cut, an edit in place): not served, quarantined (not lost), fetched again.
    store.path(digest).write_bytes(body[:-10])
    assert store.get(digest) is None and not store.has(digest)
    assert [p.read_bytes() for p in (tmp_path / "store" / "quarantine").iterdir()] == [body[:-10]]
    assert list(store.entries()) == []


def test_threads_storing_the_same_body_at_once_leave_one_whole_entry(tmp_path):
    store = ImageStore(tmp_path / "store")
    body = jpeg(2)
    threads = [threading.Thread(target=store.put, args=(body,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [p.name for p in store.path(sha(body)).parent.iterdir()] == [f"{sha(body)}.jpg"]
    assert store.get(sha(body)) == body


def test_a_temporary_left_by_a_dead_writer_is_swept_and_a_live_ones_is_not(tmp_path):
    store = ImageStore(tmp_path / "store")
    digest = store.put(jpeg(3))
    live = temporary_sibling(store.path(digest))  # <name>.tmp-<host>-<this pid>-<random>
    host = live.name.rpartition(TMP_MARK)[2].split("-")[0]
    dead = live.with_name(f"{digest}.jpg{TMP_MARK}{host}-999999999-0000")  # no such pid
    dead.write_bytes(b"half")
    live.write_bytes(b"half")
    assert store.sweep_temporaries() == 1
    assert not dead.exists() and live.exists()


def test_a_folder_under_an_entrys_name_is_quarantined_and_the_body_stored_again(tmp_path):
    """A restore or a slip of the hand leaves a folder where an entry was: reading it says
    "absent" (and moves it aside), storing the body again works, instead of failing the
    category for ever (IsADirectoryError from the rename)."""
    store = ImageStore(tmp_path / "store")
    body = jpeg(5)
    digest = store.put(body)
    store.path(digest).unlink()
    store.path(digest).mkdir()
    (store.path(digest) / "inner").write_text("x")
    assert store.get(digest) is None
    assert [p.is_dir() for p in (store.root / "quarantine").iterdir()] == [True]
    store.path(digest).mkdir()  # again, and straight to put this time
    assert store.put(body) == digest
    assert store.get(digest) == body
    assert len(list((store.root / "quarantine").iterdir())) == 2


def test_a_folder_under_an_images_name_is_moved_aside_and_the_image_published(tmp_path):
    """images/<name>.jpg a folder (a slip of the hand, an unpacked archive): the view failed
    for ever (IsADirectoryError renaming onto it); now the folder is kept in store/quarantine/."""
    store = ImageStore(tmp_path / "store")
    body = jpeg(6)
    digest = store.put(body)
    images = tmp_path / "images"
    (images / "a.jpg").mkdir(parents=True)
    (images / "a.jpg" / "notes.txt").write_text("mine")
    make_view(store, images, {"a.jpg": digest})
    assert (images / "a.jpg").read_bytes() == body
    (kept,) = (store.root / "quarantine").iterdir()
    assert (kept / "notes.txt").read_text() == "mine"


def test_verify_store_restores_each_damaged_entry_before_checking_the_next(tmp_path, monkeypatch):
    """A kill in the middle of VerifyStore's pass (here: an interrupt at the next entry) must not
    leave a damaged entry quarantined but not restored: a rerun finds it gone, not damaged,
    and would say nothing of it.  Restored from images/ at once, the store stays whole."""
    from sampler.verify_store import verify_store

    store = ImageStore(tmp_path / "store")
    images = tmp_path / "images"
    images.mkdir()
    bodies = {store.put(jpeg(n)): jpeg(n) for n in range(10, 14)}
    first, *others = sorted(bodies)
    (images / "first.jpg").write_bytes(bodies[first])
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"file,sha256\nfirst.jpg,{first}\n")
    damaged = bytearray(bodies[first])
    damaged[len(damaged) // 2] ^= 0xFF
    store.path(first).write_bytes(bytes(damaged))
    checked = ImageStore.verify

    def killed_at_the_next_entry(self: ImageStore, digest: str) -> bool:
        if digest == others[0]:
            raise KeyboardInterrupt
        return checked(self, digest)

    monkeypatch.setattr(ImageStore, "verify", killed_at_the_next_entry)
    with pytest.raises(KeyboardInterrupt):
        verify_store(store, tmp_path / "fetch", manifest, images)
    assert store.get(first) == bodies[first]


def test_verify_store_restores_from_the_run_folder_of_a_configuration_not_published(tmp_path):
    """The top-level images/ is the view of one configuration; another's whole copies are in
    its run folder (runs/<run>/images/).  Restored from there, going back to that configuration
    needs no request; before, VerifyStore called it "not restorable here" and the next run
    fetched it again."""
    from sampler.verify_store import verify_store

    store = ImageStore(tmp_path / "store")
    body = jpeg(21)
    digest = store.put(body)
    run = tmp_path / "runs" / "other-1"
    (run / "images").mkdir(parents=True)
    (run / "images" / "n1_1_cat.jpg").write_bytes(body)
    (run / "manifest.csv").write_text(f"file,sha256\nn1_1_cat.jpg,{digest}\n")
    (tmp_path / "images").mkdir()
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("file,sha256\n")  # the published configuration has other images
    damaged = bytearray(body)
    damaged[len(damaged) // 2] ^= 0xFF
    store.path(digest).write_bytes(bytes(damaged))
    report = verify_store(store, tmp_path / "fetch", manifest, tmp_path / "images", tmp_path / "runs")
    assert report.damaged == report.restored == [digest]
    assert store.get(digest) == body


def test_url_lines_torn_by_a_kill_are_ignored(tmp_path):
    store = ImageStore(tmp_path / "store")
    digest = store.put(jpeg(4))
    store.remember_url("n01", "http://a.test/1.jpg", "http://a.test/1.jpg", digest)
    path = tmp_path / "store" / "urls" / "n01.csv"
    whole = path.read_bytes()
    # A kill mid-line, then the next writer's line glued to the torn one.
    path.write_bytes(whole + whole[:25])
    store.remember_url("n01", "http://b.test/2,x.jpg", "http://b.test/moved.jpg", digest)
    found = store.stored_urls("n01")
    assert sorted(found) == ["http://a.test/1.jpg"]
    assert found["http://a.test/1.jpg"].sha256 == digest


def test_the_view_copies_from_the_store_and_removes_what_is_not_listed(tmp_path):
    store = ImageStore(tmp_path / "store")
    bodies = {f"n1_{i}_cat.jpg": jpeg(10 + i) for i in range(3)}
    wanted = {name: store.put(body) for name, body in bodies.items()}
    images = tmp_path / "images"
    images.mkdir()
    (images / "n9_9_evicted.jpg").write_bytes(b"old")
    done = make_view(store, images, wanted)
    assert sorted(done["placed"]) == sorted(bodies) and done["removed"] == ["n9_9_evicted.jpg"]
    assert files_under(images) == bodies
    for name, digest in wanted.items():
        # A copy of its own: an edit in images/ leaves the store alone, and the other way round.
        assert not os.path.samefile(images / name, store.path(digest))
        assert (images / name).stat().st_nlink == 1
    # Again: nothing to do.
    assert make_view(store, images, wanted) == {"placed": [], "removed": []}


def test_the_view_copies_where_links_are_impossible_and_rescues_what_the_store_lost(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs a second filesystem (/dev/shm) to refuse hard links")
    store = ImageStore(tmp_path / "store")
    body = jpeg(20)
    wanted = {"n1_1_cat.jpg": store.put(body)}
    images = Path(tempfile.mkdtemp(dir=shm))
    try:
        make_view(store, images, wanted)
        assert (images / "n1_1_cat.jpg").read_bytes() == body
        assert not os.path.samefile(images / "n1_1_cat.jpg", store.path(wanted["n1_1_cat.jpg"]))
        # The store loses the entry; the view still holds the bytes: they go back into the store.
        store.path(wanted["n1_1_cat.jpg"]).unlink()
        make_view(store, images, wanted)
        assert store.get(wanted["n1_1_cat.jpg"]) == body
        # Gone from both: a clear error that says what to do.
        store.path(wanted["n1_1_cat.jpg"]).unlink()
        (images / "n1_1_cat.jpg").unlink()
        with pytest.raises(MissingFromStore, match="rerun"):
            make_view(store, images, wanted)
    finally:
        shutil.rmtree(images)


def test_prune_keeps_what_is_referenced_and_says_what_it_freed(tmp_path):
    store = ImageStore(tmp_path / "store")
    kept, dropped = jpeg(30), jpeg(31)
    store.put(kept)
    store.put(dropped)
    store.remember_url("n1", "http://a.test/k.jpg", "http://a.test/k.jpg", sha(kept))
    store.remember_url("n1", "http://a.test/d.jpg", "http://a.test/d.jpg", sha(dropped))
    report = store.prune({sha(kept)})
    assert (report.kept, report.removed) == (1, 1)
    assert report.kept_bytes == len(kept) and report.freed_bytes > len(dropped)  # and its URL line
    assert "1 unreferenced images" in report.message()
    assert store.has(sha(kept)) and not store.has(sha(dropped))
    assert sorted(store.stored_urls("n1")) == ["http://a.test/k.jpg"]


# --------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def world20(tmp_path_factory) -> Path:
    return dw.build_demo_world(tmp_path_factory.mktemp("store-world20"), n_categories=20)


@pytest.fixture(scope="module")
def server20(world20):
    with DemoServer(world20, latency=(0.01, 0.05)) as server:
        yield server


@pytest.mark.parametrize("workers", ["1", "2"])
def test_top_up_rounds_fetch_no_good_image_twice(tmp_path, world20, server20, workers):
    config = write_demo_config(tmp_path, world20, server20)
    server20.clear_log()
    run = run_luigi(config, server20, "--workers", workers, "--local-scheduler")
    assert run.returncode == 0, run.stderr[-3000:]
    data = tmp_path / "data"
    plans = list(data.glob("fetch/*/round1.json"))
    assert plans and json.loads(plans[0].read_text())["rerun"], "no top-up round ran: the test proves nothing"
    twice = fetched_twice(server20.requests, good_keys(dw.load_world(world20)))
    print(f"\n{workers} worker(s): top-up of {json.loads(plans[0].read_text())['rerun']}, twice: {twice}")
    assert twice == {}


def copy_of(finished: Path, tmp_path: Path, world: Path, server: DemoServer) -> Path:
    shutil.copytree(finished / "data", tmp_path / "data", symlinks=True)
    return write_demo_config(tmp_path, world, server)


def test_deleted_images_are_restored_from_the_store_without_a_request(
    finished_demo_run, tmp_path, demo_world, demo_server
):
    config = copy_of(finished_demo_run, tmp_path, demo_world, demo_server)
    data = tmp_path / "data"
    before = files_under(data / "images")
    assert len(before) >= 25
    for path in (data / "images").glob("*.jpg"):
        path.unlink()
    demo_server.clear_log()
    run = run_luigi(config, demo_server, "--local-scheduler")
    assert run.returncode == 0, run.stderr[-3000:]
    assert files_under(data / "images") == before
    assert demo_server.requests == []
    assert (data / "manifest.csv").read_bytes() == (finished_demo_run / "data" / "manifest.csv").read_bytes()


def test_a_store_entry_deleted_by_hand_comes_back_from_images_without_a_request(
    finished_demo_run, tmp_path, demo_world, demo_server
):
    config = copy_of(finished_demo_run, tmp_path, demo_world, demo_server)
    data = tmp_path / "data"
    with (data / "manifest.csv").open(encoding="utf-8", newline="") as src:
        row = next(csv.DictReader(src))
    store = ImageStore(data / "store")
    store.path(row["sha256"]).unlink()  # images/ still holds the bytes (a link to the lost entry)
    demo_server.clear_log()
    run = run_luigi(config, demo_server, "--local-scheduler")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "FetchCategory" in run.stderr  # the category noticed and ran again ...
    assert store.get(row["sha256"]) == (data / "images" / row["file"]).read_bytes()
    # ... and asked the web for nothing it had asked before.  (Rerun, the category may start a
    # speculative request the first run had cancelled before it started: that one is new.)
    asked_before = set()
    for path in (finished_demo_run / "data" / "fetch").glob("*/round*/*.attempts.csv"):
        with path.open(encoding="utf-8", newline="") as src:
            asked_before |= {dw.url_key(r["url"]) for r in csv.DictReader(src)}
    asked_again = {dw.url_key(url) for _method, url, _status in demo_server.requests} & asked_before
    assert asked_again == set()


def test_seed_a_then_b_then_a_again_makes_no_image_request_and_prune_frees_b(
    finished_demo_run, tmp_path, demo_world, demo_server
):
    config = copy_of(finished_demo_run, tmp_path, demo_world, demo_server)
    data = tmp_path / "data"
    manifest_a, images_a = (data / "manifest.csv").read_bytes(), files_under(data / "images")

    run = run_luigi(config, demo_server, "--local-scheduler", "--SampleUrls-seed", "7")
    assert run.returncode == 0, run.stderr[-3000:]
    assert (data / "manifest.csv").read_bytes() != manifest_a
    images_b = files_under(data / "images")

    demo_server.clear_log()
    run = run_luigi(config, demo_server, "--local-scheduler")
    assert run.returncode == 0, run.stderr[-3000:]
    assert image_requests(demo_server) == []
    assert (data / "manifest.csv").read_bytes() == manifest_a
    assert files_under(data / "images") == images_a

    # Prune: both configurations stay; what neither kept (speculative bodies) goes.
    entries = {p.name for p in ImageStore(data / "store").entries()}
    prune = run_luigi(config, demo_server, "--local-scheduler", task="PruneStore")
    assert prune.returncode == 0, prune.stderr[-3000:]
    report = json.loads((data / "store" / "prune_report.json").read_text())
    left = {p.name for p in ImageStore(data / "store").entries()}
    assert report["removed"] == len(entries - left) and report["kept"] == len(left)
    assert f"{report['freed_bytes']:,} bytes freed" in prune.stdout
    wanted = {f"{sha(body)}.jpg" for body in {**images_a, **images_b}.values()}
    assert wanted <= left

    # Drop configuration B (its fetch folder), prune again: B's images go, A's stay.
    shutil.rmtree(next(data.glob("fetch/seed7-*")))
    prune = run_luigi(config, demo_server, "--local-scheduler", task="PruneStore")
    assert prune.returncode == 0, prune.stderr[-3000:]
    left = {p.name for p in ImageStore(data / "store").entries()}
    assert left == {f"{sha(body)}.jpg" for body in images_a.values()}
    demo_server.clear_log()
    run = run_luigi(config, demo_server, "--local-scheduler")
    assert run.returncode == 0, run.stderr[-3000:]
    assert image_requests(demo_server) == [] and files_under(data / "images") == images_a


# --------------------------------------------------------------------------- one category, no luigi


def test_a_category_stores_its_speculative_bodies_and_a_fresh_job_fetches_none_again(
    tmp_path, demo_server, monkeypatch
):
    from sampler.fetch.http_fetch import Fetcher, FetchSettings
    from sampler.fetch.image_check import judge_image
    from sampler.fetch.replay import CategoryJob, run_category_job

    monkeypatch.setenv("HTTP_PROXY", demo_server.proxy_url)
    monkeypatch.setenv("http_proxy", demo_server.proxy_url)
    tag = tmp_path.name
    urls = [demo_server.fault_url("ok" if i % 3 else "http_404", f"{tag}-{i}.jpg") for i in range(20)]
    # The first answers last (a good JPEG after a few seconds): the ones after it are fetched
    # meanwhile, so some good body is always fetched ahead and never needed, whatever the load.
    urls[0] = demo_server.fault_url("slow", f"{tag}-0.jpg")
    store = ImageStore(tmp_path / "store")

    def job() -> CategoryJob:
        sample = [(f"n01234567_{i}", url) for i, url in enumerate(urls)]
        return CategoryJob("n01234567", "cat", 3, sample, lambda: iter(()), store, set(), [], max_in_flight=8)

    demo_server.clear_log()
    with Fetcher(FetchSettings(per_host=8)) as fetcher:
        summary, rows = run_category_job(job(), fetch=fetcher.fetch, judge=judge_image)
    assert len(summary.kept) == 3
    good_rows = [row for row in rows if row["outcome"] == "ok"]
    assert any(not row["judged"] for row in good_rows)  # speculative good bodies ...
    assert all(store.has(row["sha256"]) for row in good_rows)  # ... are stored too
    asked = {url for _method, url, _status in demo_server.requests}
    assert {row["url"] for row in rows} == asked  # every request is recorded, stragglers too

    # A fresh job (no journal, no attempts: another configuration, say) asks for no good body again
    demo_server.clear_log()
    with Fetcher(FetchSettings(per_host=8)) as fetcher:
        again, _rows = run_category_job(job(), fetch=fetcher.fetch, judge=judge_image)
    assert again.kept == summary.kept
    # (It may start a speculative request the first job cancelled before it went out: a new one.)
    assert {url for _method, url, status in demo_server.requests if status == 200} & asked == set()
