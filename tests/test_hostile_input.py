"""Hostile and broken input, everywhere: a clear error or a recorded skip, never a crash, never a bad
file kept, nothing written outside data_dir.

Every test runs the pipeline as a user does (``luigi --module pipeline ... --local-scheduler``)
on inputs built here: tarballs, URL lists, words.txt and category lists of our own, and the
demo server's fault URLs (``http://faults.test/<behaviour>/...``) reached through it as a proxy.
Runs that are expected to fail use a short scheduler retry delay ([scheduler] retry_delay,
[worker] wait_jitter): luigi still retries a failed task as configured, only sooner.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from demo import world as dw
from sampler.store import ImageStore
from tests.conftest import REPO, optional_shared_file, pipeline_env, write_demo_config
from tests.servers import send_body, trickle_body

FAST_RETRIES = {"scheduler": {"retry_delay": "0.1"}, "worker": {"wait_jitter": "0.1"}}
A, B = "n02672831", "n02691156"  # accordion, airplane
WORDS = f"{A}\taccordion, piano accordion, squeeze box\n{B}\tairplane, aeroplane, plane".encode()


# --------------------------------------------------------------------------- helpers


def tgz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(raw.getvalue(), mtime=0)


def member(name: str, data: bytes | None = None, **fields: object) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def url_tgz(lines: bytes) -> bytes:
    return tgz([member("fall11_urls.txt", lines)])


def write_inputs(folder: Path, tarball: bytes, categories: str, words: bytes = WORDS) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "tarball": folder / "urls.tgz",
        "categories": folder / "categories.csv",
        "words": folder / "words.txt",
    }
    paths["tarball"].write_bytes(tarball)
    paths["categories"].write_text(categories, encoding="utf-8")
    paths["words"].write_bytes(words)
    return paths


def config_for(folder: Path, server, inputs: dict[str, Path], **sections: dict) -> Path:
    sections.setdefault("DownloadUrlTarball", {}).setdefault("mirrors", f'["{inputs["tarball"]}"]')
    parse = sections.setdefault("ParseSynsets", {})
    parse.setdefault("words_url", str(inputs["words"]))
    parse.setdefault("categories", str(inputs["categories"]))
    return write_demo_config(folder, inputs["categories"].parent, server, **sections)


def start(config: Path, server, *args: str, task: str = "FetchFives") -> subprocess.Popen:
    """``luigi --module pipeline <task>``; --no-lock so that another identical command line on
    this machine (another test suite) cannot make it exit early as "already running"."""
    command = [sys.executable, "-m", "luigi", "--module", "pipeline", task, "--local-scheduler", "--no-lock"]
    return subprocess.Popen(
        [*command, *args],
        cwd=REPO,
        env=pipeline_env(config, server),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=240)
    return process.returncode, output


def run(config: Path, server, *args: str, task: str = "FetchFives") -> tuple[int, str]:
    return finish(start(config, server, *args, task=task))


def snapshot(folder: Path, skip: str = "data") -> dict[str, tuple]:
    """Every entry under ``folder`` except ``skip``/: type, mode, size, content digest."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if relative.parts[0] == skip:
            continue
        stat = path.lstat()
        digest = (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else ""
        )
        entries[str(relative)] = (stat.st_mode, stat.st_size, digest)
    return entries


def leftovers(data: Path) -> list[str]:
    marks = (".tmp-", "-luigi-tmp-")
    return sorted(
        str(p.relative_to(data))
        for p in data.rglob("*")
        if any(m in p.name for m in marks) or p.name.endswith((".part", ".journal.csv"))
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as src:
        return list(csv.DictReader(src))


def ok_lines(wnid: str, names: list[str], first: int = 1) -> bytes:
    return b"".join(f"{wnid}_{first + i}\thttp://faults.test/ok/{n}\n".encode() for i, n in enumerate(names))


# --------------------------------------------------------------------------- tarballs


@dataclasses.dataclass
class TarballCase:
    build: Callable[[Path, str], bytes]  # (case folder, unique escape name) -> tarball bytes
    message: str  # must appear in the run's output
    placed_by_hand: bool = False  # put at data/download/ instead of naming it as a mirror


GOOD_LINES = ok_lines(A, ["g1", "g2"]) + ok_lines(B, ["g3"])


def _whole() -> bytes:
    return url_tgz(GOOD_LINES * 400)


TARBALL_CASES = {
    "truncated-gzip": TarballCase(
        lambda f, e: _whole()[: len(_whole()) * 2 // 3], "not a complete gzip'd tar"
    ),
    "not-gzip": TarballCase(
        lambda f, e: dw.html_page("404 Not Found", "No such file"),
        "not a complete gzip'd tar: Not a gzipped file",
    ),
    "gzip-not-tar": TarballCase(lambda f, e: gzip.compress(GOOD_LINES), "not a complete gzip'd tar"),
    "empty-gzip": TarballCase(lambda f, e: gzip.compress(b""), "not a complete gzip'd tar"),
    "no-url-list": TarballCase(
        lambda f, e: tgz([member("winter11_urls.txt", GOOD_LINES), member("README", b"hi")]),
        "has no regular file fall11_urls.txt (members: winter11_urls.txt, README)",
    ),
    "dot-dot-member": TarballCase(
        lambda f, e: tgz([member("fall11_urls.txt", GOOD_LINES), member(f"../../{e}", b"escaped")]),
        "points outside the archive",
    ),
    "absolute-member": TarballCase(
        lambda f, e: tgz([member("fall11_urls.txt", GOOD_LINES), member(str(f / e), b"escaped")]),
        "points outside the archive",
    ),
    "url-list-outside": TarballCase(
        lambda f, e: tgz([member("../fall11_urls.txt", GOOD_LINES)]), "'../fall11_urls.txt' points outside"
    ),
    "symlink-url-list": TarballCase(
        lambda f, e: tgz([member("fall11_urls.txt", None, type=tarfile.SYMTYPE, linkname="/etc/passwd")]),
        "'fall11_urls.txt' is a link to '/etc/passwd'",
    ),
    "symlink-then-write-through-it": TarballCase(
        lambda f, e: tgz(
            [
                member("fall11_urls.txt", GOOD_LINES),
                member("out", None, type=tarfile.SYMTYPE, linkname=str(f)),
                member(f"out/{e}", b"escaped"),
            ]
        ),
        "'out' is a link to '{folder}'",
    ),
    "devices-and-hardlink": TarballCase(
        lambda f, e: tgz(
            [
                member("fall11_urls.txt", GOOD_LINES),
                member("null", None, type=tarfile.CHRTYPE, devmajor=1, devminor=3),
                member("pipe", None, type=tarfile.FIFOTYPE),
                member("again", None, type=tarfile.LNKTYPE, linkname="fall11_urls.txt"),
            ]
        ),
        "'null' is a device or FIFO; 'pipe' is a device or FIFO; 'again' is a link to 'fall11_urls.txt'",
    ),
    "two-url-lists": TarballCase(
        lambda f, e: tgz([member("fall11_urls.txt", GOOD_LINES), member("old/fall11_urls.txt", b"junk\n")]),
        "holds 2 members named fall11_urls.txt",
    ),
    "truncated-placed-by-hand": TarballCase(
        lambda f, e: _whole()[: len(_whole()) * 2 // 3],
        "ends early (truncated download?)",
        placed_by_hand=True,
    ),
}


@pytest.fixture(scope="module")
def tarball_runs(tmp_path_factory, demo_server) -> dict[str, tuple]:
    """Every tarball case run at once (they are independent), for the tests below to inspect."""
    base = tmp_path_factory.mktemp("tarballs")
    started = {}
    for name, case in TARBALL_CASES.items():
        folder = base / name
        escape = f"escaped-{uuid.uuid4().hex}.txt"
        paths = write_inputs(folder, case.build(folder, escape), f"wnid,label\n{A},accordion\n")
        if case.placed_by_hand:
            download = folder / "data" / "download"
            download.mkdir(parents=True)
            paths["tarball"].rename(download / "imagenet_fall11_urls.tgz")
            paths["tarball"].write_bytes(b"")  # keep the mirror named, though the output is there
        config = config_for(folder, demo_server, paths, **FAST_RETRIES)
        before = snapshot(folder)
        mirrors = json.dumps([str(paths["tarball"])])
        started[name] = (
            folder,
            escape,
            before,
            start(config, demo_server, "--DownloadUrlTarball-mirrors", mirrors),
        )
    return {
        name: (folder, escape, before, *finish(proc))
        for name, (folder, escape, before, proc) in started.items()
    }


@pytest.mark.parametrize("case", list(TARBALL_CASES))
def test_a_broken_or_hostile_tarball_is_refused_and_nothing_escapes(tarball_runs, case):
    folder, escape, before, code, output = tarball_runs[case]
    message = TARBALL_CASES[case].message.replace("{folder}", str(folder))
    assert code != 0, output[-3000:]
    assert message in output, output[-3000:]
    data = folder / "data"
    download = data / "download" / "imagenet_fall11_urls.tgz"
    if TARBALL_CASES[case].placed_by_hand:
        assert "ExtractUrls" in output and "failed" in output
    else:
        assert not download.exists()  # never the DownloadUrlTarball output
    assert not (data / "urls").exists()  # never the ExtractUrls output
    assert not (data / "images").exists()
    assert leftovers(data) == []
    # Nothing written outside data_dir: its parent folder is as it was, no escaped file anywhere.
    assert snapshot(folder) == before
    for place in (folder, folder.parent, data, data / "download", REPO, REPO.parent, Path("/tmp")):
        assert not (place / escape).exists()


# --------------------------------------------------------------------------- the URL list


def test_malformed_and_hostile_url_list_lines_are_counted_and_never_fetched(tmp_path, demo_server):
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(secret, "JPEG")  # a real JPEG behind a file: URL
    long_url = "http://faults.test/ok/hostile-long-" + "x" * 100_000
    lines = b"".join(
        [
            ok_lines(A, ["a1", "a2"]),
            b"\n",  # empty line
            f"{A}_3 http://faults.test/ok/hostile-no-tab\n".encode(),
            f"{A}_4\thttp://faults.test/ok/hostile-extra-field\t42\n".encode(),
            f"{A}_5\thttp://faults.test/ok/hostile-latin1-".encode() + b"\xe9t\xe9.jpg\n",
            f"{A}_6\t{long_url}\n".encode(),
            f"{A}_7 ".encode() + b"y" * 100_000 + b"\n",  # 100 KB without a tab
            b"n0267283_8\thttp://faults.test/ok/hostile-seven-digits\n",
            b"accordion_9\thttp://faults.test/ok/hostile-label-as-id\n",
            f"{A}_1O\thttp://faults.test/ok/hostile-letter-o\n".encode(),
            f"{A}_\u0663\thttp://faults.test/ok/hostile-arabic-digit\n".encode(),
            b"\thttp://faults.test/ok/hostile-empty-id\n",
            f"{A}_10\t\n".encode(),  # empty URL
            f"{A}_11\t{secret.as_uri()}\n".encode(),
            f"{A}_12\tftp://faults.test/ok/hostile-ftp\n".encode(),
            f"{A}_13\tjavascript:fetch('http://faults.test/ok/hostile-js')\n".encode(),
            ok_lines(A, ["a3"], first=14),
            ok_lines(B, ["b1", "b2"]),
            f"{B}_3\thttp://faults.test/ok/b3".encode(),  # the last line has no newline
        ]
    )
    paths = write_inputs(tmp_path, url_tgz(lines), f"wnid,label\n{A},accordion\n{B},airplane\n")
    config = config_for(tmp_path, demo_server, paths)
    demo_server.clear_log()
    code, output = run(config, demo_server, "--FetchFives-per-category", "10")  # more than there are
    assert code == 0, output[-3000:]
    data = tmp_path / "data"

    report = json.loads((data / "urls" / "report.json").read_text())
    assert report["malformed"] == {
        "empty_line": 1,
        "no_tab": 2,
        "empty_id": 1,
        "bad_id": 4,
        "empty_url": 1,
        "not_utf8": 1,
    }
    assert report["info"] == {"extra_tabs": 1, "non_http_url": 3}
    assert report["lines"] == lines.count(b"\n") + 1
    assert (data / "urls" / "counts.csv").read_text() == f"wnid,urls\n{A},8\n{B},3\n"

    # What entered the index was tried once and classified; what did not was never tried.
    outcomes = {row["url"]: row["outcome"] for row in read_csv(data / "attempts.csv")}
    assert outcomes == {
        "http://faults.test/ok/a1": "ok",
        "http://faults.test/ok/a2": "ok",
        "http://faults.test/ok/a3": "ok",
        "http://faults.test/ok/hostile-extra-field\t42": "bad_url",
        long_url: "bad_url",
        secret.as_uri(): "bad_scheme",
        "ftp://faults.test/ok/hostile-ftp": "bad_scheme",
        "javascript:fetch('http://faults.test/ok/hostile-js')": "bad_scheme",
        "http://faults.test/ok/b1": "ok",
        "http://faults.test/ok/b2": "ok",
        "http://faults.test/ok/b3": "ok",
    }
    requested = sorted(url for _method, url, _status in demo_server.requests)
    assert requested == sorted(f"http://faults.test/ok/{n}" for n in ("a1", "a2", "a3", "b1", "b2", "b3"))
    manifest = read_csv(data / "manifest.csv")
    assert sorted(row["url"] for row in manifest) == requested
    kept = {p.read_bytes() for p in (data / "images").iterdir()}
    assert secret.read_bytes() not in kept and len(kept) == 6


# --------------------------------------------------------------------------- words.txt and category lists


CATEGORY_CASES = {
    "duplicate-wnid": (f"wnid,label\n{A},accordion\n{B},airplane\n{A},squeezebox\n", "is listed twice"),
    "unknown-wnid": (f"wnid,label\n{A},accordion\nn09999999,unicorn\n", "unknown to words.txt: n09999999"),
    "not-a-wnid": (f"wnid,label\n{A},accordion\nn0269115,airplane\n", "'n0269115' is not a WordNet id"),
    "nul-in-label": (
        f"wnid,label\n{A},accor\0dion\n",
        "holds a control character (U+0000): 'accor\\x00dion'",
    ),
    "newline-in-label": (
        f'wnid,label\n{A},"accor\ndion"\n',
        "holds a control character (U+000A): 'accor\\ndion'",
    ),
    "empty-list": ("wnid,label\n", "lists no categories"),
    "not-utf8": ("", "is not UTF-8"),
}


@pytest.fixture(scope="module")
def category_runs(tmp_path_factory, demo_server) -> dict[str, tuple]:
    base = tmp_path_factory.mktemp("categories")
    started = {}
    tarball = url_tgz(GOOD_LINES)
    for name, (text, _message) in CATEGORY_CASES.items():
        folder = base / name
        paths = write_inputs(folder, tarball, text)
        if name == "not-utf8":
            paths["categories"].write_bytes(b"wnid,label\n" + A.encode() + b",accord\xe9on\n")
        config = config_for(folder, demo_server, paths, **FAST_RETRIES)
        started[name] = (folder, start(config, demo_server))
    # words.txt answered by an HTML page (a login, error or parking page) with status 200.
    folder = base / "words-html"
    paths = write_inputs(folder, tarball, f"wnid,label\n{A},accordion\n")
    html = "http://faults.test/html/words.txt"
    config = config_for(folder, demo_server, paths, ParseSynsets={"words_url": html}, **FAST_RETRIES)
    started["words-html"] = (folder, start(config, demo_server))
    return {name: (folder, *finish(proc)) for name, (folder, proc) in started.items()}


@pytest.mark.parametrize("case", [*CATEGORY_CASES, "words-html"])
def test_bad_category_list_or_words_txt_stops_the_run_with_a_clear_message(category_runs, case):
    folder, code, output = category_runs[case]
    message = CATEGORY_CASES[case][1] if case in CATEGORY_CASES else "is an HTML page, not words.txt"
    assert code != 0, output[-3000:]
    assert message in output, output[-3000:]
    assert not (folder / "data" / "synsets").is_dir() or not any((folder / "data" / "synsets").iterdir())
    assert not (folder / "data" / "images").exists()  # nothing downloaded
    if (folder / "data").exists():
        assert leftovers(folder / "data") == []


def test_labels_with_slashes_and_dots_name_files_inside_images(tmp_path, demo_server):
    labels = {A: "../../outside", B: "a/b\\c .. d/"}
    categories = "wnid,label\n" + "".join(f'{w},"{label}"\n' for w, label in labels.items())
    paths = write_inputs(tmp_path, url_tgz(ok_lines(A, ["s1", "s2"]) + ok_lines(B, ["s3"])), categories)
    config = config_for(tmp_path, demo_server, paths)
    before = snapshot(tmp_path)
    code, output = run(config, demo_server, "--FetchFives-per-category", "2")
    assert code == 0, output[-3000:]
    images = tmp_path / "data" / "images"
    names = sorted(p.name for p in images.iterdir())
    assert names == [f"{A}_1_____outside.jpg", f"{A}_2_____outside.jpg", f"{B}_1_a_b_c___d_.jpg"]
    assert all(p.is_file() and p.parent == images for p in images.iterdir())
    manifest = read_csv(tmp_path / "data" / "manifest.csv")
    assert [(row["label"], row["file"]) for row in manifest] == [
        (labels[A], names[0]),
        (labels[A], names[1]),
        (labels[B], names[2]),
    ]
    assert snapshot(tmp_path) == before  # nothing new beside data/
    assert not (tmp_path.parent / "outside").exists()


# --------------------------------------------------------------------------- hostile servers


# Behaviour path under http://faults.test/ (reached through the demo server as a proxy; "direct/"
# ones at the server itself, http://127.0.0.1:PORT/faults/...) -> the outcome attempts.csv must show.
SERVER_CASES = {
    "ok/1": "ok",
    "ok/2": "ok",
    "transient_503/3": "ok",  # after one retry
    "redirect_ok/4": "ok",
    "hang/5": "timeout",
    "trickle/6": "timeout",  # a byte a second
    "slow/7?seconds=30": "timeout",
    "endless/8": "too_large",
    "huge_length/9": "too_large",  # Content-Length: 2 GB
    "redirect_loop/10": "redirect_loop",
    "redirect_file/11": "bad_redirect",  # 302 to file:///etc/passwd
    "bomb/12": "decompression_bomb",
    "pixel/13": "too_small",
    "truncated_nolength/14": "truncated_jpeg",  # the body ends at the close: judged
    "truncated_jpeg/15": "truncated_jpeg",
    "empty/16": "empty",
    "direct/reset/17": "dead_host",  # TCP reset by the image host
    "direct/close/18": "dead_host",  # closed without an answer
    "reset/26": "proxy_error",  # the same through the proxy: the proxy is what hung up
    "close/27": "proxy_error",
    "html/19": "not_jpeg",
    "png_as_jpeg/20": "not_jpeg",
    "status/404/21": "http_404",
    "status/503/22": "http_503",
    "flickr_placeholder_redirect/23": "placeholder_redirect",
    "jpeg_banner/24": "evicted_duplicate or duplicate",  # one banner is kept, then evicted when the same
    "jpeg_banner/25": "evicted_duplicate or duplicate",  # bytes come back for the other (in sample order)
}
DEADLINE = 3


def test_every_server_failure_is_classified_none_is_kept_and_none_outlives_the_deadline(
    tmp_path, demo_server
):
    def url(path: str) -> str:
        if path.startswith("direct/"):
            return f"{demo_server.url}/faults/{path.removeprefix('direct/')}"
        return f"http://faults.test/{path}"

    lines = b"".join(f"{A}_{i}\t{url(path)}\n".encode() for i, path in enumerate(SERVER_CASES, 1))
    paths = write_inputs(tmp_path, url_tgz(lines), f"wnid,label\n{A},accordion\n")
    config = config_for(
        tmp_path,
        demo_server,
        paths,
        FetchCategory={
            "deadline": str(DEADLINE),
            "read_timeout": "1",
            "connect_timeout": "1",
            "max_bytes": "1000000",
            # Every URL in flight at once: no wait for a connection slot counts against the deadline.
            "max_connections": "32",
            "per_host": "32",
            # "direct/" cases talk to the demo server on loopback itself.
            "allow_private_addresses": "true",
        },
    )
    demo_server.clear_log()
    code, output = run(config, demo_server, "--FetchFives-per-category", "10")  # more than will work
    assert code == 0, output[-3000:]
    data = tmp_path / "data"
    attempts = read_csv(data / "attempts.csv")
    path_of = {url(path): path for path in SERVER_CASES}
    outcomes = {path_of[row["url"]]: row["outcome"] for row in attempts}
    assert sorted(outcomes.pop(f"jpeg_banner/{n}") for n in (24, 25)) == ["duplicate", "evicted_duplicate"]
    assert outcomes == {
        path: want for path, want in SERVER_CASES.items() if not path.startswith("jpeg_banner")
    }
    for row in attempts:  # the pipeline's own record of each download's duration
        assert int(row["ms"]) <= DEADLINE * 1000 + 3000, row  # a generous margin for a loaded machine
    good = sorted(url(path) for path, outcome in SERVER_CASES.items() if outcome == "ok")
    manifest = read_csv(data / "manifest.csv")
    assert sorted(row["url"] for row in manifest) == good
    assert sorted(p.name for p in (data / "images").iterdir()) == sorted(row["file"] for row in manifest)
    for row in manifest:
        body = (data / "images" / row["file"]).read_bytes()
        assert hashlib.sha256(body).hexdigest() == row["sha256"]
        with Image.open(io.BytesIO(body)) as image:
            image.load()
    summary = json.loads((data / "fetch_summary.json").read_text())
    assert summary["shortfalls"] == {A: 10 - len(good)}


# --------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KB tmpfs mounted at tmp_path/disk; ``resize(size)`` grows it.  Skips where mounting
    is not permitted (not root, or no CAP_SYS_ADMIN in this container)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip() or result.returncode})")

    def resize(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount_point)], check=True)

    try:
        yield mount_point, resize
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """Fill the filesystem of ``folder`` until about ``leave`` bytes are free."""
    filler = folder / "filler"
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    with filler.open("wb") as out:
        out.write(b"\0" * max(0, free - leave))
    return filler


def test_full_disk_fails_extraction_cleanly_and_a_rerun_after_freeing_space_completes(
    tmp_path, demo_world, demo_server, small_disk
):
    disk, resize = small_disk
    paths = write_inputs(tmp_path / "inputs", (demo_world / dw.URLS_TGZ).read_bytes(), "")
    config = config_for(
        tmp_path,
        demo_server,
        paths,
        paths={"data_dir": str(disk / "data")},
        ParseSynsets={
            "categories": str(demo_world / dw.CATEGORIES_CSV),
            "words_url": str(demo_world / dw.WORDS_TXT),
        },
        **FAST_RETRIES,
    )
    code, output = run(config, demo_server, task="DownloadUrlTarball")
    assert code == 0, output[-3000:]
    fill(disk, leave=16 * 1024)
    code, output = run(config, demo_server, task="ExtractUrls")
    assert code != 0
    assert "No space left on device" in output, output[-3000:]
    assert not (disk / "data" / "urls").exists()
    assert leftovers(disk / "data") == []
    (disk / "filler").unlink()
    resize("4m")
    code, output = run(config, demo_server, task="ExtractUrls")
    assert code == 0, output[-3000:]
    report = json.loads((disk / "data" / "urls" / "report.json").read_text())
    assert report["lines"] == dw.load_world(demo_world)["files"][dw.URLS_TGZ]["member_lines"]


def test_full_disk_during_image_downloads_keeps_no_partial_image_and_a_rerun_completes(
    tmp_path, demo_world, demo_server, small_disk
):
    disk, resize = small_disk
    resize("8m")
    five = "".join((demo_world / dw.CATEGORIES_CSV).read_text().splitlines(keepends=True)[:6])
    paths = write_inputs(tmp_path / "inputs", (demo_world / dw.URLS_TGZ).read_bytes(), five)
    config = config_for(
        tmp_path,
        demo_server,
        paths,
        paths={"data_dir": str(disk / "data")},
        ParseSynsets={"words_url": str(demo_world / dw.WORDS_TXT)},
        **FAST_RETRIES,
    )
    code, output = run(config, demo_server, task="SampleUrls")
    assert code == 0, output[-3000:]
    filler = fill(disk, leave=96 * 1024)  # room for a few images, not for 25
    code, output = run(config, demo_server)
    assert code != 0
    assert "No space left on device" in output, output[-3000:]
    data = disk / "data"
    assert not (data / "manifest.csv").exists()
    assert [p for p in data.rglob("*") if ".tmp-" in p.name or "-luigi-tmp-" in p.name] == []
    world = dw.load_world(demo_world)
    results = list((data / "fetch").glob("*/round0/*.json"))
    assert len(results) < 5  # the disk filled up before the stage was done
    # Images stored so far are whole, as served (the banner too: it is evicted once every category is in).
    served = {dw.expected_jpeg(world, url) for url in world["urls"]} - {None} | {dw.banner_jpeg()}
    saved = list(ImageStore(data / "store").entries())
    assert saved
    for image in saved:
        assert image.read_bytes() in served, f"{image.name} is not a whole image as served"
    filler.unlink()
    code, output = run(config, demo_server)
    assert code == 0, output[-3000:]
    assert leftovers(data) == []
    manifest = read_csv(data / "manifest.csv")
    assert len(manifest) >= 20
    for row in manifest:
        assert hashlib.sha256((data / "images" / row["file"]).read_bytes()).hexdigest() == row["sha256"]


# --------------------------------------------------------------------------- a hostile web, default settings


def _photo(name: str, seed: int, **save: object) -> bytes:
    """A real photo from the shared sample when present (else a synthetic one), re-encoded."""
    folder = optional_shared_file("imagen")
    files = sorted(folder.glob("*.jpg"))[seed * 37 % 1000 :][:1] if folder is not None else []
    if files:
        with Image.open(files[0]) as src:
            img = src.convert("RGB").resize((400, 300))
    else:
        img = Image.effect_mandelbrot((400, 300), (-2.0 + seed / 10, -1.2, 0.8, 1.2), 60).convert("RGB")
    img.putpixel((seed % 400, 0), (seed % 256, 1, 2))
    if save.pop("cmyk", False):
        img = img.convert("CMYK")
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85, **save)
    return out.getvalue()


def _zip(data: bytes) -> bytes:
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("payload.txt", data)
    return out.getvalue()


def _corrupt_scan(body: bytes) -> bytes:
    import random

    rng = random.Random(7)
    out = bytearray(body)
    start = body.index(b"\xff\xda") + 20
    for _ in range(200):
        at = rng.randrange(start, len(out) - 2)
        if out[at] != 0xFF and out[at - 1] != 0xFF:
            out[at] = rng.randrange(0, 0xFF)
    return bytes(out)


def _fake_dimensions(body: bytes, width: int, height: int) -> bytes:
    at = body.index(b"\xff\xc0")
    return body[: at + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + body[at + 9 :]


class HostileWeb:
    """A web proxy on loopback that *is* the 2026 web for the pipeline: good photos and every
    hostile case, by host name.  It logs every request it is asked to make; the canary is a
    listener on loopback that no request may reach."""

    TRICKLE_EVERY = 0.5  # seconds per byte: far under the default 10 s read timeout

    def __init__(self) -> None:
        import socket
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.stop = threading.Event()
        self.log: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.canary = socket.socket()
        self.canary.bind(("127.0.0.1", 0))
        self.canary.listen(16)
        self.canary.settimeout(0.2)
        self.canary_hits = 0
        self.canary_port = self.canary.getsockname()[1]
        self.bodies: dict[str, bytes] = {}
        web = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                with web.lock:
                    web.log.append((self.path, dict(self.headers.items())))
                from urllib.parse import urlsplit

                parts = urlsplit(self.path)
                host = (parts.hostname or "").lower()
                try:
                    web.answer(self, host, parts.path)
                except OSError:
                    pass  # the client hung up: what deadlines do

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.threads = [
            threading.Thread(target=self.server.serve_forever, daemon=True),
            threading.Thread(target=self._watch_canary, daemon=True),
        ]
        for thread in self.threads:
            thread.start()
        self.proxy_url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _watch_canary(self) -> None:

        while not self.stop.is_set():
            try:
                conn, _ = self.canary.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.canary_hits += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.canary.close()

    @staticmethod
    def send(handler, body: bytes, status: int = 200, framing: str = "length", **headers: str) -> None:
        headers = {name.replace("_", "-"): value for name, value in headers.items()}
        send_body(handler, body, framing, status=status, headers=headers)

    def answer(self, handler, host: str, path: str) -> None:
        if host in self.bodies:
            framing = host.split(".")[0].removeprefix("good-") if host.startswith("good-") else "length"
            framing = framing if framing in ("chunked", "close", "http10") else "length"
            return self.send(handler, self.bodies[host], framing=framing)
        if host.startswith("trickle-"):  # valid headers, then a byte every TRICKLE_EVERY s, for ever
            framing = host.split(".")[0].removeprefix("trickle-")
            if framing == "headers":
                handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while not self.stop.wait(self.TRICKLE_EVERY):
                    handler.wfile.write(b"a")
                    handler.wfile.flush()
                return None
            trickle_body(
                handler, framing, first=b"\xff", then=b"\xd8", every=self.TRICKLE_EVERY, stop=self.stop
            )
            return None
        if host.startswith("to-internal-"):  # a public-looking URL redirecting inside
            index = int(host.split(".")[0].removeprefix("to-internal-"))
            handler.send_response(302)
            handler.send_header("Location", self.internal_urls()[index])
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return None
        handler.send_response(502)  # what a proxy says for a name it cannot resolve
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        return None

    def internal_urls(self) -> list[str]:
        port = self.canary_port
        return [
            f"http://{host}/latest/meta-data/x.jpg"
            for host in (
                f"127.0.0.1:{port}", f"127.1:{port}", f"0177.0.0.1:{port}", f"0x7f000001:{port}",
                f"2130706433:{port}", f"0.0.0.0:{port}", f"[::1]:{port}", f"[::ffff:127.0.0.1]:{port}",
                f"localhost:{port}", f"LocalHost.:{port}", "169.254.169.254", "10.0.0.1", "192.168.1.1",
                "[fd12:3456::1]", "metadata.google.internal",
            )
        ]  # fmt: skip


def _hostile_web_world(web: HostileWeb) -> tuple[bytes, dict[str, str], set[str]]:
    """The URL list, the outcome each URL must get (or "" for: any, but not kept and never
    requested), and the URLs whose images must be kept, byte for byte."""
    expect: dict[str, str] = {}
    lines: list[str] = []
    good_urls: set[str] = set()

    def add(wnid: str, url: str, outcome: str) -> None:
        lines.append(f"{wnid}_{len(lines) + 1}\t{url}")
        expect[url] = outcome

    good = {
        "good-1.photos.test": _photo("a", 1),
        "good-chunked.photos.test": _photo("b", 2),
        "good-close.photos.test": _photo("c", 3),
        "good-http10.photos.test": _photo("d", 4),
        "good-cmyk.photos.test": _photo("e", 5, cmyk=True),
        "good-progressive.photos.test": _photo("f", 6, progressive=True),
        "good-exif.photos.test": _photo("g", 7, exif=b"Exif\0\0" + b"MM\0*\0\0\0\x08\0\0" + bytes(60_000)),
        "good-icc.photos.test": _photo("h", 8, icc_profile=bytes(range(256)) * 2000),
        "good-crlf.photos.test": _photo("i", 9) + b"\r\n",
        "xn--bcher-kva.test": _photo("j", 10),  # bücher.test (IDNA)
        "userinfo.photos.test": _photo("k", 11),
    }
    base = _photo("l", 12)
    cut = base[: len(base) // 10] + b"\xff\xd9"
    bad = {
        "truncated-eoi.photos.test": (cut, ("truncated_jpeg", "decode_error")),
        "corrupt-scan.photos.test": (_corrupt_scan(_photo("m", 13)), ("decode_error", "truncated_jpeg")),
        "fake-dimensions.photos.test": (_fake_dimensions(_photo("n", 14)[:700] + b"\xff\xd9", 7000, 7000),
                                        ("implausible_size", "truncated_jpeg", "decode_error")),
        "polyglot-zip.photos.test": (_photo("o", 15) + _zip(b"secret"), ("embedded_data",)),
        "polyglot-html.photos.test": (_photo("p", 16) + b"<html><script>x()</script>", ("embedded_data",)),
    }  # fmt: skip
    web.bodies.update(good)
    web.bodies.update({host: body for host, (body, _) in bad.items()})
    for host in good:
        url = f"http://{host}/x.jpg"
        if host == "xn--bcher-kva.test":
            url = "http://bücher.test/x.jpg"
        elif host == "userinfo.photos.test":
            url = f"http://admin:hunter2@{host}/x.jpg"
        add(A if len(lines) % 2 == 0 else B, url, "ok")
        good_urls.add(url)
    for host, (_body, outcomes) in bad.items():
        add(A, f"http://{host}/x.jpg", "|".join(outcomes))
    for framing in ("length", "chunked", "close", "http10", "headers"):
        add(B, f"http://trickle-{framing}.test/x.jpg", "timeout")
    for index, url in enumerate(web.internal_urls()):
        add(A, url, "refused_address")
        add(B, f"http://to-internal-{index}.test/x.jpg", "refused_address")
    ugly = [
        "http://[bad/x.jpg",
        "http://[::1/x.jpg",
        "http://good-1.photos.test:99999/x.jpg",
        "http://good-1.photos.test:abc/x.jpg",
        "http://good-1.photos.test:-1/x.jpg",
        "http://long.test/" + "a" * 10_000,
        "http://ctl.test/a\x01b.jpg",
        "http://ctl.test/a\x7fb.jpg",
        "http://[2001:db8::1]/x.jpg",
        "http://[2001:4860:4860::8888]:8080/x.jpg",  # public: asked of the proxy, which has no such host
        "http://xn--/x.jpg",
        "http://" + "a" * 300 + ".test/x.jpg",
        "http:///x.jpg",
        "http://=cmd|' /C calc'!A0/x.jpg",
    ]
    for url in ugly:
        add(A, url, "")
    return ("\n".join(lines) + "\n").encode(), expect, good_urls


def test_a_hostile_web_under_default_settings_keeps_the_good_images_and_nothing_else(tmp_path):
    """The issue's "done when": default settings, every case at once; exit 0 within a few
    deadlines, only the expected images kept (byte for byte), no request to an internal
    address, no process left behind."""
    web = HostileWeb()
    try:
        url_list, expect, good_urls = _hostile_web_world(web)
        labels = f"wnid,label\n{A},accordion ✓ 'squeeze box'\n{B},\"airplane, jet\"\n"
        paths = write_inputs(tmp_path, url_tgz(url_list), labels)
        config = tmp_path / "hostile-web.cfg"
        config.write_text(  # no [FetchCategory] section: its defaults (30 s deadline, 10 s reads)
            f"[paths]\ndata_dir = {tmp_path / 'data'}\n"
            f'[DownloadUrlTarball]\nmirrors = ["{paths["tarball"]}"]\n'
            "[ExtractUrls]\ncompare_published = false\n"
            f"[ParseSynsets]\nwords_url = {paths['words']}\ncategories = {paths['categories']}\n"
            "[FetchFives]\nper_category = 40\n"  # more than there are: every URL is tried
        )
        command = [sys.executable, "-m", "luigi", "--module", "pipeline", "Gallery", "--local-scheduler"]
        process = subprocess.Popen(
            [*command, "--no-lock"],
            cwd=REPO,
            env=pipeline_env(config, web),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: what is left of it can be found
        )
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-4000:]
        with pytest.raises(ProcessLookupError):  # no worker, fetch thread or child left behind
            os.killpg(process.pid, 0)
    finally:
        web.close()

    data = tmp_path / "data"
    attempts = read_csv(data / "attempts.csv")
    outcomes = {row["url"].removeprefix("'"): row["outcome"] for row in attempts}
    for url, want in expect.items():
        if want == "":
            assert outcomes.get(url, "not in the index") != "ok", url
        else:
            assert outcomes.get(url) in want.split("|"), (url[:100], outcomes.get(url), want)
    manifest = read_csv(data / "manifest.csv")
    assert sorted(row["url"] for row in manifest) == sorted(good_urls)
    assert sorted(p.name for p in (data / "images").iterdir()) == sorted(row["file"] for row in manifest)
    served = set(web.bodies.values())
    for row in manifest:
        assert (data / "images" / row["file"]).read_bytes() in served  # byte-exact as served

    # No request reached an internal address: the canary saw no connection, and the proxy was
    # asked for none of them (nor for the redirect targets).
    assert web.canary_hits == 0
    internal_hosts = [url.split("/")[2] for url in web.internal_urls()]
    for path, headers in web.log:
        host = path.split("/")[2] if path.startswith("http://") else ""
        assert host not in internal_hosts, path
        assert "authorization" not in {name.lower() for name in headers}, path
        assert "hunter2" not in path
    asked = {path.split("/")[2] for path, _ in web.log if path.startswith("http://")}
    assert {"trickle-length.test", "trickle-close.test", "to-internal-0.test"} <= asked

    # The report and gallery were made from all of it.
    report = json.loads((data / "report" / "run_report.json").read_text())
    assert "refused_address" in json.dumps(report)
    assert (data / "gallery" / "index.html").is_file()
    attempts_text = (data / "attempts.csv").read_text(encoding="utf-8")
    assert "\n=" not in attempts_text and ",=" not in attempts_text  # no formula cell


# --------------------------------------------------------------------------- inputs that trickle or never end


@pytest.fixture(scope="module")
def loopback_web():
    import threading

    from tests.test_http_fetch import LoopbackServer

    server = LoopbackServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.stop.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def no_proxy(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def _in_thread(function: Callable[[], object]) -> object:
    """Run ``function`` on a thread that must end (a hang fails here, not in CI's timeout)."""
    import threading

    box: list[object] = []

    def target() -> None:
        try:
            box.append(function())
        except BaseException as error:  # handed to the test
            box.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the download outlived its deadline"
    return box[0]


@pytest.mark.parametrize("framing", ["length", "chunked", "close", "http10"])
def test_a_trickling_words_txt_ends_at_its_deadline(loopback_web, no_proxy, framing):
    from sampler.sources import SourceError, read_source_bytes

    url = f"{loopback_web.url}/framed-trickle?framing={framing}"
    # The per-read timeout (30 s) never trips on a byte every 0.2 s: only the deadline can end it.
    error = _in_thread(lambda: read_source_bytes(url, deadline=1.5))
    assert isinstance(error, SourceError), error
    assert "not downloaded within 1.5 s" in str(error)


@pytest.mark.parametrize("framing", ["length", "chunked", "close", "http10"])
def test_a_trickling_tarball_mirror_ends_at_its_deadline(tmp_path, loopback_web, no_proxy, framing):
    from sampler.download import TarballError, download_url_tarball

    url = f"{loopback_web.url}/framed-trickle?framing={framing}"
    dest = tmp_path / "urls.tgz"
    error = _in_thread(
        lambda: download_url_tarball([url], dest, deadline=1.5, attempts_per_mirror=1, retry_pause=0)
    )
    assert isinstance(error, TarballError), error
    assert "not downloaded within 1.5 s" in str(error)
    assert not dest.exists()


@pytest.mark.parametrize("chunked", [False, True], ids=["close-delimited", "chunked"])
def test_an_endless_tarball_mirror_stops_at_the_size_cap_and_leaves_nothing(
    tmp_path, loopback_web, no_proxy, chunked
):
    from sampler.download import TarballError, download_url_tarball, partial_path

    url = f"{loopback_web.url}/endless" + ("?chunked=1" if chunked else "")
    dest = tmp_path / "urls.tgz"
    seen: list[str] = []
    error = _in_thread(
        lambda: download_url_tarball(
            [url], dest, max_bytes=3_000_000, retry_pause=0, progress=lambda pct, text: seen.append(text)
        )
    )
    assert isinstance(error, TarballError), error
    assert "3,000,000-byte cap" in str(error)
    assert not dest.exists() and not partial_path(dest).exists()
    assert any("cap" in text for text in seen)  # progress shows the size against the cap
    assert loopback_web.hits["/endless" + ("?chunked=1" if chunked else "")] == 1  # never retried


def test_a_tarball_announcing_more_than_the_cap_is_refused_before_reading(tmp_path, loopback_web, no_proxy):
    from sampler.download import TarballError, download_url_tarball, partial_path

    dest = tmp_path / "urls.tgz"
    with pytest.raises(TarballError, match="announces 2,000,000,000 bytes"):
        download_url_tarball([f"{loopback_web.url}/huge-length"], dest, retry_pause=0)
    assert not partial_path(dest).exists()


# --------------------------------------------------------------------------- words.txt and labels


def test_a_bom_does_not_hide_the_first_wnid_of_a_large_words_txt():
    from sampler.categories.words import parse_words

    lines = [f"n{index:08d}\tthing {index}" for index in range(1, 5000)]
    words = parse_words(b"\xef\xbb\xbf" + "\n".join(lines).encode())
    assert words["n00000001"] == "thing 1"
    assert len(words) == 4999


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("para\u2029graph", "U+2029 PARAGRAPH SEPARATOR"),
        ("next\x85line", "U+0085"),
        ("line\u2028sep", "U+2028 LINE SEPARATOR"),
        ("\u202egnp.exe", "U+202E RIGHT-TO-LEFT OVERRIDE"),
        ("zero\u200bwidth", "U+200B ZERO WIDTH SPACE"),
        ('=HYPERLINK("http://evil.test")', "starts with '='"),
        ("+1 cmd", "starts with '+'"),
        ("@SUM(A1)", "starts with '@'"),
        ("-2+3", "starts with '-'"),
    ],
)
def test_a_label_that_would_break_a_name_a_sheet_or_a_spreadsheet_is_refused_naming_the_row(label, message):
    from sampler.categories.words import SynsetError, parse_categories

    text = f'wnid,label\n{B},airplane\n{A},"{label.replace(chr(34), chr(34) * 2)}"\n'
    with pytest.raises(SynsetError) as raised:
        parse_categories(text, "my-categories.csv")
    assert f"my-categories.csv: row 3: the label of {A}" in str(raised.value)
    assert message in str(raised.value)


def test_file_names_are_nfc_without_invisible_characters_or_separators():
    from sampler.naming import image_filename

    name = image_filename("n02672831_1", "cafe\u0301 \u202eevil\u200b\u2215slash\uff0fwide\u2029x")
    assert name == "n02672831_1_café_evil_slash_wide_x.jpg"


def test_the_contact_sheet_draws_any_label_and_fits_long_ones_in_linear_time(tmp_path):
    from sampler.report.contact_sheet import CategoryImages, draw_contact_sheet, fit_text, load_font

    labels = ["para\u2029graph", "next\x85line", "\u202eevil", "zero\u200bwidth", "=1+1", "x" * 30_000]
    groups = [CategoryImages(f"n{index:08d}", label, [], 2) for index, label in enumerate(labels)]
    sheet, _layout, counts = draw_contact_sheet(groups, tmp_path, 2)
    assert counts["missing"] == 2 * len(labels) and sheet.width > 0

    class CountingFont:  # what fit_text asks of the font: characters measured, in total
        def __init__(self) -> None:
            self.font, self.measured = load_font(14, bold=True), 0

        def getlength(self, text: str) -> float:
            self.measured += len(text)
            return self.font.getlength(text)

    for length in (3_000, 30_000, 300_000):
        font = CountingFont()
        fitted = fit_text("ab" * (length // 2), font, 200)  # type: ignore[arg-type]
        assert fitted.endswith("…") and font.font.getlength(fitted) <= 200
        # Bounded by the box, not the label: a 300,000-character label costs what a 3,000 one does.
        assert font.measured < 20 * 400, (length, font.measured)
