"""The tasks' targets (tasks/targets.py): an output appears whole or not at all.

Real files and real processes: a failed write, a successful one, and a writer killed with
SIGKILL in the middle, for a file and for a folder output, and a luigi task writing
through its output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import luigi
import pytest

from tasks.targets import AtomicFolderTarget, AtomicTarget
from tests.conftest import REPO

# A child that starts writing the output, says so, and waits to be killed mid-write.
KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from tasks.targets import AtomicFolderTarget, AtomicTarget
    kind, path = sys.argv[1], sys.argv[2]
    target = AtomicFolderTarget(path) if kind == "folder" else AtomicTarget(path)
    with target.temporary_path() as tmp:
        if kind == "folder":
            (tmp / "half.txt").write_text("half")
        else:
            tmp.write_text("half")
        print("writing", flush=True)
        time.sleep(60)
    """
)


def kill_writer_mid_write(kind: str, path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, kind, str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "writing"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_a_failed_write_leaves_neither_output_nor_temporary(tmp_path):
    target = AtomicTarget(tmp_path / "table.csv")
    with pytest.raises(RuntimeError), target.temporary_path() as tmp:
        tmp.write_text("wnid,label\nn1,half")
        raise RuntimeError("disk on fire")
    assert not target.exists()
    assert os.listdir(tmp_path) == []


def test_a_successful_write_is_renamed_into_place(tmp_path):
    target = AtomicTarget(tmp_path / "sample" / "seed0.csv")
    with target.temporary_path() as tmp:
        assert tmp.parent == target.fs_path.parent and tmp != target.fs_path
        tmp.write_text("image_id,url\n")
        assert not target.exists()  # nothing under the output's name until the block ends
    assert target.read_text() == "image_id,url\n"
    assert os.listdir(tmp_path / "sample") == ["seed0.csv"]


def test_a_writer_killed_mid_write_leaves_nothing_under_the_outputs_name(tmp_path):
    target = AtomicTarget(tmp_path / "manifest.csv")
    kill_writer_mid_write("file", target.fs_path)
    assert not target.exists()
    # The dead writer's temporary is swept by the next write through the target.
    target.write_text("whole\n")
    assert os.listdir(tmp_path) == ["manifest.csv"]
    assert target.read_text() == "whole\n"


def test_open_for_writing_renames_on_close_and_leaves_nothing_on_failure(tmp_path):
    target = AtomicTarget(tmp_path / "summary.txt")
    with pytest.raises(RuntimeError), target.open("w") as out:
        out.write("half")
        raise RuntimeError("interrupted")
    del out  # luigi removes an abandoned temporary when its file object goes
    assert os.listdir(tmp_path) == []
    with target.open("w") as out:
        out.write("whole")
        assert not target.exists()
    assert target.read_text() == "whole"
    assert os.listdir(tmp_path) == ["summary.txt"]


def test_a_failed_folder_write_leaves_the_earlier_folder_and_no_temporary(tmp_path):
    target = AtomicFolderTarget(tmp_path / "urls")
    with target.temporary_path() as tmp:
        (tmp / "counts.csv").write_text("first")
    with pytest.raises(RuntimeError), target.temporary_path() as tmp:
        (tmp / "counts.csv").write_text("second, half")
        raise RuntimeError("malformed tarball")
    assert target.child("counts.csv").read_text() == "first"
    assert os.listdir(tmp_path) == ["urls"]


def test_a_folder_appears_whole_and_replaces_the_earlier_one(tmp_path):
    target = AtomicFolderTarget(tmp_path / "export" / "det200")
    with target.temporary_path() as tmp:
        (tmp / "old.txt").write_text("old")
    with target.temporary_path() as tmp:
        assert tmp.is_dir() and os.listdir(tmp) == []
        (tmp / "train").mkdir()
        (tmp / "train" / "a.jpg").write_bytes(b"\xff\xd8")
        assert target.child("old.txt").exists()  # the earlier folder stays until the end
    assert sorted(p.name for p in target.fs_path.iterdir()) == ["train"]
    assert os.listdir(tmp_path / "export") == ["det200"]
    with pytest.raises(IsADirectoryError):
        target.open("w")


def test_a_folder_writer_killed_mid_write_leaves_nothing_under_the_outputs_name(tmp_path):
    target = AtomicFolderTarget(tmp_path / "gallery")
    kill_writer_mid_write("folder", target.fs_path)
    assert not target.exists()
    with target.temporary_path() as tmp:
        (tmp / "index.html").write_text("<p>whole</p>")
    assert os.listdir(tmp_path) == ["gallery"]
    assert os.listdir(target.fs_path) == ["index.html"]


class WritesThroughItsOutput(luigi.Task):
    """A luigi task as the pipeline's are written: it writes through its output."""

    path = luigi.Parameter()
    fail = luigi.BoolParameter(default=False)
    retry_count = 1  # fail once and be done (the package's luigi.cfg retries for a keep-alive worker)

    def output(self) -> AtomicTarget:
        return AtomicTarget(self.path)

    def run(self) -> None:
        with self.output().temporary_path() as tmp:
            tmp.write_text("row\n")
            if self.fail:
                raise RuntimeError("the task failed half-way")


def test_a_task_that_fails_leaves_no_output_and_a_rerun_makes_it(tmp_path):
    path = str(tmp_path / "out" / "rows.csv")
    assert not luigi.build([WritesThroughItsOutput(path=path, fail=True)], local_scheduler=True)
    assert not Path(path).exists() and os.listdir(tmp_path / "out") == []
    assert luigi.build([WritesThroughItsOutput(path=path)], local_scheduler=True)
    assert Path(path).read_text() == "row\n"
    assert os.listdir(tmp_path / "out") == ["rows.csv"]


def test_a_target_is_a_path_for_the_plain_readers(tmp_path):
    import os

    from sampler.fetch.gather import read_manifest
    from sampler.report.run_files import read_json_object
    from tasks.targets import AtomicTarget

    manifest, summary = AtomicTarget(tmp_path / "manifest.csv"), AtomicTarget(tmp_path / "s.json")
    manifest.write_text("image_id,file\nn1_1,n1_1_cat.jpg\n")
    summary.write_text('{"kept": 1}')
    assert os.fspath(manifest) == str(tmp_path / "manifest.csv")
    assert read_manifest(manifest) == [{"image_id": "n1_1", "file": "n1_1_cat.jpg"}]
    assert read_json_object(summary) == {"kept": 1}
