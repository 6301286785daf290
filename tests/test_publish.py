"""The published view, without luigi: data_dir's top level as copies of one run folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sampler.fetch.gather import write_manifest
from sampler.publish import publish_export, publish_run
from sampler.store import ImageStore


def make_run(data: Path, store: ImageStore, name: str, bodies: dict[str, bytes], report: bool) -> Path:
    """runs/<name>/ with a manifest of ``bodies`` (file name -> bytes), stored, and maybe a report."""
    run = data / "runs" / name
    (run / "images").mkdir(parents=True)
    rows = []
    for file, body in bodies.items():
        sha256 = store.put(body)
        (run / "images" / file).write_bytes(body)
        rows.append({"image_id": file[:-4], "file": file, "sha256": sha256, "bytes": len(body)})
    write_manifest(rows, run / "manifest.csv")
    (run / "attempts.csv").write_text(f"attempts of {name}\n")
    (run / "fetch_summary.json").write_text("{}\n")
    if report:
        (run / "report").mkdir()
        (run / "report" / "summary.txt").write_text(f"report of {name}\n")
    return run


def test_publishing_switches_the_whole_view_and_back_with_real_files(tmp_path):
    data = tmp_path / "data"
    store = ImageStore(data / "store")
    a = make_run(
        data, store, "a", {"n1_1_cat.jpg": b"\xff\xd8cat", "n1_2_cat.jpg": b"\xff\xd8cat2"}, report=True
    )
    b = make_run(data, store, "b", {"n2_1_dog.jpg": b"\xff\xd8dog"}, report=False)

    publish_run(store, a, data)
    assert sorted(p.name for p in (data / "images").iterdir()) == ["n1_1_cat.jpg", "n1_2_cat.jpg"]
    assert (data / "report" / "summary.txt").read_text() == "report of a\n"
    publish_run(store, b, data)
    assert [p.name for p in (data / "images").iterdir()] == ["n2_1_dog.jpg"]
    assert (data / "manifest.csv").read_bytes() == (b / "manifest.csv").read_bytes()
    assert (data / "attempts.csv").read_text() == "attempts of b\n"
    assert not (data / "report").exists()  # a's report does not describe b
    assert (a / "report" / "summary.txt").exists()  # ... and stays in a's run folder
    publish_run(store, a, data)  # going back
    assert (data / "manifest.csv").read_bytes() == (a / "manifest.csv").read_bytes()
    for path in [data / "manifest.csv", data / "report", *(data / "images").iterdir()]:
        assert not path.is_symlink()
    for path in (data / "images").iterdir():
        assert (
            hashlib.sha256(path.read_bytes()).hexdigest()
            == hashlib.sha256((a / "images" / path.name).read_bytes()).hexdigest()
        )
        assert path.stat().st_nlink == 1  # a copy: an edit there never reaches the run folder


def test_a_rerun_rewrites_nothing_and_a_damaged_store_entry_comes_back_from_the_run(tmp_path):
    data = tmp_path / "data"
    store = ImageStore(data / "store")
    a = make_run(data, store, "a", {"n1_1_cat.jpg": b"\xff\xd8cat"}, report=True)
    publish_run(store, a, data)
    mtimes = {p: p.stat().st_mtime_ns for p in data.rglob("*") if "runs" not in p.parts}
    publish_run(store, a, data)
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*") if "runs" not in p.parts} == mtimes
    sha256 = hashlib.sha256(b"\xff\xd8cat").hexdigest()
    store.path(sha256).write_bytes(b"rotten")
    (data / "images" / "n1_1_cat.jpg").unlink()
    publish_run(store, a, data)
    assert (data / "images" / "n1_1_cat.jpg").read_bytes() == b"\xff\xd8cat"
    assert store.path(sha256).read_bytes() == b"\xff\xd8cat"
    assert [p.read_bytes() for p in (data / "store" / "quarantine").iterdir()] == [b"rotten"]


def test_a_users_own_files_in_a_published_folder_are_moved_aside_not_deleted(tmp_path):
    # export/<name>/ and report/ are replaced whole at every publish, a rerun of the same
    # configuration included: a checkpoint or a note a user put there was deleted unseen.
    data = tmp_path / "data"
    store = ImageStore(data / "store")
    a = make_run(data, store, "a", {"n1_1_cat.jpg": b"\xff\xd8cat"}, report=True)
    b = make_run(data, store, "b", {"n2_1_dog.jpg": b"\xff\xd8dog"}, report=True)
    (b / "report" / "b-only.txt").write_text("b's chart\n")
    export = data / "exports" / "set-1"
    export.mkdir(parents=True)
    (export / "files.csv").write_text("path\n")
    publish_run(store, b, data)
    publish_run(store, a, data)  # b's own report file is b's: simply gone from the view
    publish_export(export, data / "export" / "set", data)
    (data / "export" / "set" / "model.pt").write_bytes(b"weights")
    (data / "report" / "note.txt").write_text("my note\n")

    publish_export(export, data / "export" / "set", data)  # the same configuration again
    publish_run(store, b, data)

    assert sorted(p.name for p in (data / "export" / "set").iterdir()) == ["files.csv"]
    assert sorted(p.name for p in (data / "report").iterdir()) == ["b-only.txt", "summary.txt"]
    quarantine = data / "store" / "quarantine"
    quarantined = {
        str(p.relative_to(quarantine)).split("-", 1)[1]: p.read_bytes() for p in quarantine.glob("*/*")
    }
    assert quarantined == {"set/model.pt": b"weights", "report/note.txt": b"my note\n"}
    assert not (export / "model.pt").exists() and not (a / "report" / "note.txt").exists()
