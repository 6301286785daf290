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
