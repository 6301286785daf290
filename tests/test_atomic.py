"""Atomic outputs: a failure leaves neither a partial output nor a temporary behind."""

from __future__ import annotations

import os

import pytest

from sampler.atomic import atomic_path, atomic_write_bytes, remove_stale_temporaries


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
