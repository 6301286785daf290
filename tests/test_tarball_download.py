"""DownloadUrlTarball's work against a real loopback server: mirrors, resume, verification."""

from __future__ import annotations

import gzip
import io
import os
import tarfile

import pytest

from sampler.download import TarballError, download_url_tarball, partial_path, verify_url_tarball


def test_dead_mirror_is_skipped_and_the_next_one_used(tmp_path, demo_world, demo_server):
    dest = tmp_path / "data" / "download" / "imagenet_fall11_urls.tgz"
    dead = f"{demo_server.url}/files/no-such.tgz"
    good = demo_server.file_url("imagenet_fall11_urls.tgz")
    assert download_url_tarball([dead, good], dest, retry_pause=0) == good
    assert dest.read_bytes() == (demo_world / "imagenet_fall11_urls.tgz").read_bytes()
    assert os.listdir(dest.parent) == [dest.name]


def test_interrupted_download_resumes_with_range(tmp_path, demo_world, demo_server):
    dest = tmp_path / "imagenet_fall11_urls.tgz"
    cut_once = demo_server.file_url("imagenet_fall11_urls.tgz", mode="files-cut-once")
    demo_server.clear_log()
    download_url_tarball([cut_once], dest, retry_pause=0)
    assert dest.read_bytes() == (demo_world / "imagenet_fall11_urls.tgz").read_bytes()
    # Two requests: the one that was cut, and one resuming where it stopped.
    assert demo_server.hits(cut_once) == 2
    assert not partial_path(dest).exists()


def test_partial_file_from_a_killed_run_is_resumed(tmp_path, demo_world, demo_server):
    dest = tmp_path / "imagenet_fall11_urls.tgz"
    whole = (demo_world / "imagenet_fall11_urls.tgz").read_bytes()
    partial_path(dest).write_bytes(whole[: len(whole) // 3])
    demo_server.clear_log()
    download_url_tarball([demo_server.file_url("imagenet_fall11_urls.tgz")], dest)
    assert dest.read_bytes() == whole
    ranges = [url for method, url, status in demo_server.requests if status == 206]
    assert len(ranges) == 1


def test_server_ignoring_range_starts_over(tmp_path, demo_world, demo_server):
    dest = tmp_path / "imagenet_fall11_urls.tgz"
    whole = (demo_world / "imagenet_fall11_urls.tgz").read_bytes()
    partial_path(dest).write_bytes(b"garbage that must not stay in front")
    download_url_tarball([demo_server.file_url("imagenet_fall11_urls.tgz", mode="files-norange")], dest)
    assert dest.read_bytes() == whole


def test_local_path_and_file_url_mirrors(tmp_path, demo_world):
    source = demo_world / "imagenet_fall11_urls.tgz"
    for mirror in (str(source), source.as_uri()):
        dest = tmp_path / mirror.replace("/", "_") / "out.tgz"
        download_url_tarball([mirror], dest)
        assert dest.read_bytes() == source.read_bytes()


def _tgz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"<html>not found</html>", "not a complete gzip'd tar"),
        (_tgz({"fall11_urls.txt": b"n1_1\thttp://x\n" * 1000})[:-200], "not a complete gzip'd tar"),
        (_tgz({"other.txt": b"hello"}), "no regular file fall11_urls.txt .*other.txt"),
        (gzip.compress(b"n00000001_1\thttp://x\n"), "not a complete gzip'd tar"),
    ],
    ids=["html", "truncated-gzip", "wrong-member", "gzip-not-tar"],
)
def test_broken_tarballs_never_become_the_output(tmp_path, content, message):
    source = tmp_path / "bad.tgz"
    source.write_bytes(content)
    with pytest.raises(TarballError, match=message):
        verify_url_tarball(source)
    dest = tmp_path / "out" / "imagenet_fall11_urls.tgz"
    with pytest.raises(TarballError, match="no mirror gave a valid URL tarball"):
        download_url_tarball([str(source)], dest)
    assert list(dest.parent.iterdir()) == []


def test_damaged_partial_file_is_replaced_by_a_whole_download(tmp_path, demo_world, demo_server):
    dest = tmp_path / "imagenet_fall11_urls.tgz"
    whole = (demo_world / "imagenet_fall11_urls.tgz").read_bytes()
    partial_path(dest).write_bytes(b"\0" * 1000)  # not the tarball's first bytes
    download_url_tarball([demo_server.file_url("imagenet_fall11_urls.tgz")], dest, retry_pause=0)
    assert dest.read_bytes() == whole
