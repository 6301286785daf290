"""Faults that would lose or corrupt a user's data (issue 26): symlinked output folders,
stored bodies rotting on disk, and the advice an error gives when it is followed."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sampler.atomic import atomic_path
from sampler.store import ImageStore, make_view
from tests.conftest import run_luigi, write_demo_config

# Every folder the pipeline writes, clears or replaces in data_dir (sampler.atomic.OUTPUT_FOLDERS).
OUTPUT_FOLDERS = (
    "download", "urls", "synsets", "sample", "fetch", "store", "images", "export",
    "report", "gallery", "contact_sheet", "request-slots", ".locks", ".leases", "runs", "exports",
)  # fmt: skip


def copy_run(finished: Path, tmp_path: Path, world: Path, server, data: Path | None = None) -> Path:
    """A copy of the finished demo run's data_dir (at ``data``, default tmp_path/data) and a
    config pointing at tmp_path/data."""
    subprocess.run(["cp", "-a", str(finished / "data"), str(data or tmp_path / "data")], check=True)
    return write_demo_config(tmp_path, world, server)


def manifest_rows(data: Path) -> list[dict[str, str]]:
    with (data / "manifest.csv").open(encoding="utf-8", newline="") as src:
        return list(csv.DictReader(src))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def flip_keeping_mtime(path: Path) -> bytes:
    """One byte flipped in the middle of ``path``, its mtime kept (bit rot, ``rsync -t``)."""
    stat = path.stat()
    body = bytearray(path.read_bytes())
    body[len(body) // 2] ^= 0x01
    with path.open("r+b") as out:  # in place: a hard link to it sees the change too
        out.write(body)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return bytes(body)


def output(run: subprocess.CompletedProcess) -> str:
    return run.stdout + run.stderr


# --------------------------------------------------------------------------- 1. symlinked outputs


def test_symlinked_output_folders_are_refused_and_nothing_outside_data_dir_is_touched(
    finished_demo_run, tmp_path, demo_world, demo_server
):
    """Every output folder moved to "another disk" and linked back, a precious file of the
    user's beside the pipeline's files there: the run refuses with one message naming the
    link and what to do, and nothing on the other disk changes."""
    config = copy_run(finished_demo_run, tmp_path, demo_world, demo_server)
    data, other = tmp_path / "data", tmp_path / "other-disk"
    other.mkdir()
    first = manifest_rows(data)[0]
    (data / "images" / first["file"]).unlink()  # images/ needs rebuilding: the view is made again
    for name in OUTPUT_FOLDERS:
        moved = other / name
        if (data / name).exists():
            shutil.move(data / name, moved)
        else:
            moved.mkdir()
        (moved / "precious.txt").write_text(f"the user's own file in {name}\n")
        (data / name).symlink_to(moved, target_is_directory=True)
    before = snapshot(other)
    for task in ("All", "ExportDataset"):
        run = run_luigi(config, demo_server, "--local-scheduler", task=task)
        assert snapshot(other) == before  # nothing written, replaced or deleted out there
        assert run.returncode != 0, output(run)[-3000:]
        assert "is a symbolic link" in output(run) and "--paths-data-dir" in output(run), output(run)[-3000:]
    assert all((other / name / "precious.txt").is_file() for name in OUTPUT_FOLDERS)


def test_the_images_folder_linked_elsewhere_keeps_the_users_file(
    finished_demo_run, tmp_path, demo_world, demo_server
):
    """The issue's case alone: images/ a link to a folder holding a file of the user's."""
    config = copy_run(finished_demo_run, tmp_path, demo_world, demo_server)
    data, elsewhere = tmp_path / "data", tmp_path / "pictures"
    shutil.move(data / "images", elsewhere)
    (elsewhere / "holiday.jpg").write_bytes(b"precious")
    (elsewhere / manifest_rows(data)[0]["file"]).unlink()
    (data / "images").symlink_to(elsewhere, target_is_directory=True)
    run = run_luigi(config, demo_server, "--local-scheduler")
    assert (elsewhere / "holiday.jpg").read_bytes() == b"precious"
    assert run.returncode != 0
    assert f"{data / 'images'} is a symbolic link" in output(run), output(run)[-3000:]


def test_a_symlinked_data_dir_itself_works(finished_demo_run, tmp_path, demo_world, demo_server):
    """data_dir may be a link (/data -> /mnt/big): only what lies under it must be real folders."""
    real = tmp_path / "big-disk"
    config = copy_run(finished_demo_run, tmp_path, demo_world, demo_server, data=real)
    (tmp_path / "data").symlink_to(real, target_is_directory=True)
    (real / "images" / manifest_rows(real)[0]["file"]).unlink()
    run = run_luigi(config, demo_server, "--local-scheduler", task="ExportDataset")
    assert run.returncode == 0, output(run)[-3000:]
    assert (real / "export").is_dir() and len(list((real / "images").iterdir())) == len(manifest_rows(real))


@pytest.mark.parametrize(
    "linked",
    [
        "store/<xx>",
        "store/quarantine",
        "store/urls",
        "fetch/<config>",
        "export/x",
        "runs/<run>",
        "runs/<run>/report",
    ],
)
def test_a_linked_folder_inside_an_output_folder_is_refused_too(
    linked, finished_demo_run, tmp_path, demo_world, demo_server
):
    """store/<xx>/, store/quarantine/, store/urls/, fetch/<configuration>/ and export/<name>/
    are written into (an image fetched again, a damaged entry moved aside, a URL line
    appended, a category's result, an export): linked to another disk, the run refuses
    before writing or deleting anything there."""
    config = copy_run(finished_demo_run, tmp_path, demo_world, demo_server)
    data, other = tmp_path / "data", tmp_path / "other-disk"
    rows = manifest_rows(data)
    store = ImageStore(data / "store")
    (data / "images" / rows[0]["file"]).unlink()
    flip_keeping_mtime(store.path(rows[1]["sha256"]))  # to be quarantined
    (data / "images" / rows[1]["file"]).unlink()  # and fetched again
    (data / "export").mkdir(exist_ok=True)
    (run_folder,) = (p for p in (data / "runs").iterdir() if p.is_dir())
    folder = {
        "store/<xx>": store.path(rows[0]["sha256"]).parent,
        "store/quarantine": data / "store" / "quarantine",
        "store/urls": data / "store" / "urls",
        "fetch/<config>": next((data / "fetch").iterdir()),
        "export/x": data / "export" / "x",
        "runs/<run>": run_folder,
        "runs/<run>/report": run_folder / "report",  # RunReport writes it
    }[linked]
    if linked == "runs/<run>":  # FetchFives puts it back into the run folder, through the link
        (folder / "images" / rows[0]["file"]).unlink()
    if folder.exists():
        shutil.move(folder, other)
    else:
        other.mkdir()
    (other / "precious.jpg.tmp-old").write_text("the user's own file\n")
    folder.symlink_to(other, target_is_directory=True)
    before = snapshot(other)
    tasks = [("FetchFives", ()), ("VerifyStore", ()), ("PruneStore", ()), ("RunReport", ())]
    tasks = tasks if linked != "export/x" else []
    for task, args in [*tasks, ("ExportDataset", ("--ExportDataset-name", "x"))]:
        run = run_luigi(config, demo_server, "--local-scheduler", *args, task=task)
        assert snapshot(other) == before, task  # nothing written, replaced or deleted out there
        assert run.returncode != 0, output(run)[-3000:]
        assert f"{folder} is a symbolic link" in output(run), output(run)[-3000:]


def test_a_link_of_the_users_in_export_to_another_export_is_left_alone(
    finished_demo_run, tmp_path, demo_world, demo_server
):
    """export/latest -> <an export>: a convenience of the user's that the pipeline never writes
    through; it does not stop the commands."""
    config = copy_run(finished_demo_run, tmp_path, demo_world, demo_server)
    data = tmp_path / "data"
    (data / "export").mkdir(exist_ok=True)
    (data / "export" / "latest").symlink_to("categories", target_is_directory=True)
    run = run_luigi(config, demo_server, "--local-scheduler", task="ExportDataset")
    assert run.returncode == 0, output(run)[-3000:]
    assert (data / "export" / "latest" / "files.csv").is_file()


def test_the_store_itself_writes_through_no_link(tmp_path):
    """ImageStore is used without luigi too: a linked store/<xx>/ or store/quarantine/ is
    refused, and a temporary sweep does not enter a link."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.jpg.tmp-old").write_text("mine")
    store = ImageStore(tmp_path / "data" / "store")
    body = b"\xff\xd8 not really a jpeg"
    digest = sha(body)
    store.root.mkdir(parents=True)
    store.path(digest).parent.symlink_to(elsewhere)
    (store.root / "quarantine").symlink_to(elsewhere)
    with pytest.raises(OSError, match="symbolic link"):
        store.put(body)
    with pytest.raises(OSError, match="symbolic link"):
        store.quarantine(store.root / "whatever.jpg", "a test")
    assert store.sweep_temporaries() == 0
    assert [p.name for p in elsewhere.iterdir()] == ["notes.jpg.tmp-old"]


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_a_data_dir_link_that_leads_nowhere_says_so(kind, tmp_path, demo_world, demo_server):
    """data_dir may be a link, but one to a folder since removed (an unmounted disk) or a loop
    gave a traceback ("File exists" from mkdir, or "Too many levels of symbolic links")."""
    config = write_demo_config(tmp_path, demo_world, demo_server)
    (tmp_path / "data").symlink_to(tmp_path / ("unmounted" if kind == "dangling" else "data"))
    run = run_luigi(config, demo_server, "--local-scheduler")
    assert run.returncode != 0
    assert f"data_dir {tmp_path / 'data'} is a symbolic link" in output(run), output(run)[-3000:]
    assert "Traceback" not in output(run), output(run)[-3000:]
    assert not (tmp_path / "unmounted").exists()


def test_the_low_level_writers_refuse_a_link_too(tmp_path):
    """make_view and a folder replacement are called without luigi too: they check themselves."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("mine")
    data = tmp_path / "data"
    data.mkdir()
    (data / "images").symlink_to(elsewhere)
    with pytest.raises(OSError, match="--paths-data-dir"):
        make_view(ImageStore(data / "store"), data / "images", {})
    (data / "export").symlink_to(elsewhere)
    with pytest.raises(OSError, match="symbolic link"), atomic_path(data / "export", directory=True) as tmp:
        (tmp / "x").write_text("new")
    assert [p.name for p in elsewhere.iterdir()] == ["precious.txt"]


# --------------------------------------------------------------------------- 2. rotting store


def test_a_corrupted_store_entry_is_quarantined_and_restored_before_it_is_published(
    finished_demo_run, tmp_path, demo_world, demo_server
):
    """One byte flipped in a kept image's store entry, mtime kept, images/ deleted: the rebuilt
    images/ and the manifest agree byte for byte, the bad bytes sit in store/quarantine/, and
    the body comes back from the run folder's whole copy, without a request."""
    config = copy_run(finished_demo_run, tmp_path, demo_world, demo_server)
    data = tmp_path / "data"
    rows = manifest_rows(data)
    store = ImageStore(data / "store")
    bad = flip_keeping_mtime(store.path(rows[0]["sha256"]))
    shutil.rmtree(data / "images")
    demo_server.clear_log()
    run = run_luigi(config, demo_server, "--local-scheduler")
    assert run.returncode == 0, output(run)[-3000:]
    rows = manifest_rows(data)
    for row in rows:
        assert sha((data / "images" / row["file"]).read_bytes()) == row["sha256"], row["file"]
        assert (data / "images" / row["file"]).stat().st_nlink == 1  # a copy: an edit stays out of the store
    assert [p.read_bytes() for p in (data / "store" / "quarantine").iterdir()] == [bad]
    assert sha(store.path(rows[0]["sha256"]).read_bytes()) == rows[0]["sha256"]
    assert demo_server.requests == []


def test_verify_store_finds_rot_restores_what_it_can_and_says_what_the_next_run_fetches(
    finished_demo_run, tmp_path, demo_world, demo_server
):
    config = copy_run(finished_demo_run, tmp_path, demo_world, demo_server)
    data = tmp_path / "data"
    rows = manifest_rows(data)
    store = ImageStore(data / "store")
    good = {row["sha256"]: store.path(row["sha256"]).read_bytes() for row in rows[:2]}
    flip_keeping_mtime(store.path(rows[0]["sha256"]))  # images/ holds a whole copy: restored
    flip_keeping_mtime(store.path(rows[1]["sha256"]))
    for copy in [data / "images" / rows[1]["file"], *data.glob(f"runs/*/images/{rows[1]['file']}")]:
        copy.unlink()  # no whole copy anywhere (the run folder's included): fetched again
    run = run_luigi(config, demo_server, "--local-scheduler", task="VerifyStore")
    assert run.returncode == 0, output(run)[-3000:]
    assert "2 damaged" in run.stdout and "1 restored from images/" in run.stdout, run.stdout
    assert "the next FetchFives run" in run.stdout and rows[1]["url"] in run.stdout, run.stdout
    assert store.get(rows[0]["sha256"]) == good[rows[0]["sha256"]]
    assert not store.has(rows[1]["sha256"])
    assert len(list((data / "store" / "quarantine").iterdir())) == 2
    # The next run does what it said.
    run = run_luigi(config, demo_server, "--local-scheduler")
    assert run.returncode == 0, output(run)[-3000:]
    assert store.get(rows[1]["sha256"]) == good[rows[1]["sha256"]]
    assert (data / "images" / rows[1]["file"]).read_bytes() == good[rows[1]["sha256"]]


def test_the_exports_advice_works_when_followed(finished_demo_run, tmp_path, demo_world, demo_server):
    """An image rotting in images/ is put back from the store by the export itself; one rotting
    in images/ and in the store (an images/ hard-linked into the store by an older version)
    makes the export fail with advice that, followed, gives a good export."""
    config = copy_run(finished_demo_run, tmp_path, demo_world, demo_server)
    data = tmp_path / "data"
    rows = manifest_rows(data)
    store = ImageStore(data / "store")
    flip_keeping_mtime(data / "images" / rows[0]["file"])
    both = data / "images" / rows[1]["file"]
    # images/ as older versions made it: a hard link into the store (mtime kept).
    stat = both.stat()
    both.unlink()
    os.link(store.path(rows[1]["sha256"]), both)
    os.utime(both, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    flip_keeping_mtime(both)
    flip_keeping_mtime(data / "images" / rows[2]["file"])
    flip_keeping_mtime(store.path(rows[2]["sha256"]))
    run = run_luigi(config, demo_server, "--local-scheduler", task="ExportDataset")
    advice = output(run)
    for _ in range(3):  # follow the advice, as a user would, a bounded number of times
        if run.returncode == 0:
            break
        assert "rerun" in advice, advice[-3000:]
        if "rerun FetchFives" in advice:
            fives = run_luigi(config, demo_server, "--local-scheduler")
            assert fives.returncode == 0, output(fives)[-3000:]
        run = run_luigi(config, demo_server, "--local-scheduler", task="ExportDataset")
        advice = output(run)
    assert run.returncode == 0, advice[-3000:]
    export_dir = next((data / "export").iterdir())
    for row in rows:
        assert sha((data / "images" / row["file"]).read_bytes()) == row["sha256"]
    exported = sorted(sha(path.read_bytes()) for path in export_dir.rglob("*.jpg"))
    assert exported == sorted(row["sha256"] for row in rows)


def test_the_test_knows_every_output_folder():
    from sampler.atomic import OUTPUT_FOLDERS as KNOWN

    assert set(OUTPUT_FOLDERS) == set(KNOWN)


def test_a_data_dir_of_the_fixed_path_layout_continues_without_a_request(
    finished_demo_run, tmp_path, demo_world, demo_server
):
    """A data_dir made before outputs were keyed (no runs/, its manifest.csv, images/ and
    reports at the top; the user's own report file beside them): the rerun makes the run
    folder from fetch/ and store/ alone, publishes the same sample, and sends no request."""
    config = copy_run(finished_demo_run, tmp_path, demo_world, demo_server)
    data = tmp_path / "data"
    shutil.rmtree(data / "runs")
    (data / "report").mkdir()
    (data / "report" / "timings.csv").write_text("family,task_id,seconds\n")  # the old place
    before = snapshot(data / "images"), (data / "manifest.csv").read_bytes()
    demo_server.clear_log()
    run = run_luigi(config, demo_server, "--local-scheduler")
    assert run.returncode == 0, output(run)[-3000:]
    assert demo_server.requests == []
    (run_dir,) = (data / "runs").glob("*-seed0-n100-k5-*")
    assert (run_dir / "manifest.csv").read_bytes() == before[1]
    assert (snapshot(data / "images"), (data / "manifest.csv").read_bytes()) == before
    assert not (data / "report").exists()  # an old report: not this configuration's any more
