"""Atomic outputs: a failure leaves neither a partial output nor a temporary behind."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from sampler.atomic import (
    atomic_path,
    atomic_write_bytes,
    remove_stale_temporaries,
    sweep_dead_temporaries,
    temporary_sibling,
)
from tasks.progress import task_progress


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk on fire")
    assert os.listdir(tmp_path) == []


def test_directory_output_appears_whole_and_replaces_old(tmp_path):
    target = tmp_path / "urls"
    for content in ("first", "second"):
        with atomic_path(target, directory=True) as tmp:
            (tmp / "a.txt").write_text(content)
            assert not target.exists() or (target / "a.txt").read_text() == "first"
    assert (target / "a.txt").read_text() == "second"
    assert sorted(os.listdir(tmp_path)) == ["urls"]


def test_leftovers_of_a_killed_writer_are_removed_on_the_next_write(tmp_path):
    target = tmp_path / "image.jpg"
    (tmp_path / "image.jpg.tmp-12345").write_bytes(b"half")
    (tmp_path / "urls.tmp-999").mkdir()
    atomic_write_bytes(target, b"whole")
    assert sorted(os.listdir(tmp_path)) == ["image.jpg", "urls.tmp-999"]
    assert remove_stale_temporaries(tmp_path / "urls") == [tmp_path / "urls.tmp-999"]
    assert os.listdir(tmp_path) == ["image.jpg"]


REPLACE_FOLDER = """
import sys
from pathlib import Path
from sampler.atomic import atomic_path
with atomic_path(Path(sys.argv[1]), directory=True) as tmp:
    (tmp / "new.txt").write_text("new")
    print("written", flush=True)  # the old folder is replaced from here on
"""


def test_a_writer_killed_while_replacing_a_folder_leaves_the_old_or_the_new_one_whole(tmp_path):
    # A report or export made again (newer inputs) replaces its folder.  Deleting the old
    # folder in place let a kill -9 leave it half-deleted under the output's name.
    import signal
    import subprocess
    import sys

    target = tmp_path / "gallery"
    target.mkdir()
    old = {f"old-{i:05d}.html" for i in range(4000)}  # deleting them takes a while
    for name in old:
        (target / name).write_bytes(b"x")
    writer = subprocess.Popen(
        [sys.executable, "-c", REPLACE_FOLDER, str(target)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert writer.stdout is not None and writer.stdout.readline() == "written\n"
    seen: set[str] = old
    while seen == old and writer.poll() is None:  # kill at the first change under the name
        try:
            seen = set(os.listdir(target))
        except FileNotFoundError:
            seen = set()
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    state = set(os.listdir(target)) if target.exists() else set()
    assert state in (set(), old, {"new.txt"}), f"{len(state)} files under the name"

    with atomic_path(target, directory=True) as tmp:  # the rerun
        (tmp / "new.txt").write_text("new")
    assert os.listdir(target) == ["new.txt"]
    assert os.listdir(tmp_path) == ["gallery"]  # the killed writer's leftovers are gone


def test_the_sweep_removes_dead_temporaries_at_any_depth_and_nothing_else(tmp_path):
    exited = subprocess.Popen(["true"])
    exited.wait()
    root, outside = tmp_path / "data", tmp_path / "outside"
    host = socket.gethostname().replace("-", "_")
    mine = temporary_sibling(root / "report" / "summary.txt")  # this live process's
    foreign = root / "report" / f"run_report.json.tmp-otherhost-{exited.pid}-0123abcd"  # a day's grace
    dead = [
        root / "export" / f"gone.tmp-{host}-{exited.pid}-0123abcd",
        root / "fetch" / "b" / "c" / f"x.json.tmp-{exited.pid}",
        root / f"manifest.csv.tmp-{host}-{exited.pid}-0123abcd",
        root / f"gallery.tmp-{host}-{exited.pid}-0123abcd",
    ]
    dead[0].mkdir(parents=True)
    (dead[0] / "inner.jpg").write_bytes(b"x")
    for path in (*dead[1:], mine, foreign, outside / f"y.tmp-{host}-{exited.pid}-0123abcd"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    labelled = root / "images" / "n1_2_my.tmp-file.jpg"  # a name that merely contains the mark
    labelled.parent.mkdir()
    labelled.write_bytes(b"jpeg")
    (root / "link").symlink_to(outside)  # not followed: what it points to is not under data_dir

    assert sorted(sweep_dead_temporaries(root)) == sorted(dead)
    assert not any(path.exists() for path in dead)
    assert mine.exists() and foreign.exists() and labelled.exists()
    assert (outside / f"y.tmp-{host}-{exited.pid}-0123abcd").exists()
    assert sweep_dead_temporaries(tmp_path / "absent") == []


def test_progress_reports_are_best_effort():
    class Task:
        calls = 0

        def set_progress_percentage(self, percent: int) -> None:
            Task.calls += 1
            raise ConnectionError("luigid went away")

        def set_status_message(self, message: str) -> None:
            raise AssertionError("not reached after the first hook failed")

    report = task_progress(Task(), min_interval=0)
    for percent in (10, 50, 100):
        report(percent, "kept 1/5")  # never raises
    assert Task.calls == 1  # after a failure, reports pause instead of waiting on luigid each time


def test_the_sweep_leaves_what_the_pipeline_never_writes_even_when_named_like_a_temporary(tmp_path):
    """data_dir may hold the user's own files beside the pipeline's folders: a folder of notes
    whose name merely ends like a temporary's is not a crashed run's leftover."""
    exited = subprocess.Popen(["true"])
    exited.wait()
    host = socket.gethostname().replace("-", "_")
    root = tmp_path / "data"
    users = [
        root / f"notes.tmp-{exited.pid}",
        root / f"backup.tmp-{host}-{exited.pid}-0123abcd",
        root / "mine" / f"drafts.tmp-{exited.pid}",
    ]
    for folder in users:
        folder.mkdir(parents=True)
        (folder / "precious.txt").write_text("mine")
    assert sweep_dead_temporaries(root) == []
    assert all((folder / "precious.txt").exists() for folder in users)
