"""The URL index: exact round trip of every well-formed line, malformed lines counted, clear errors."""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import re
import tarfile
import threading
from pathlib import Path

import pytest

from sampler.index import stream
from sampler.index.layout import UrlListError
from sampler.index.parse import MALFORMED_KINDS
from sampler.index.read import UrlIndex
from sampler.index.stream import build_url_index
from tests.conftest import shared_file

ID_RE = re.compile(rb"n[0-9]{8}_[0-9]+")


def make_tgz(path: Path, members: dict[str, bytes]) -> Path:
    """A gzip-compressed tar with the given members, written with the standard library."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(raw.getvalue()))
    return path


def reference(data: bytes) -> tuple[dict[str, list[tuple[str, str]]], dict[str, int], int]:
    """A deliberately simple line-by-line reading of the rules: (rows by wnid, malformed counts, lines)."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the text ended with a newline: no line after it
    by_wnid: dict[str, list[tuple[str, str]]] = {}
    bad = dict.fromkeys(MALFORMED_KINDS, 0)
    for line in lines:
        if line == b"":
            bad["empty_line"] += 1
            continue
        if b"\t" not in line:
            bad["no_tab"] += 1
            continue
        image_id, url = line.split(b"\t", 1)
        if not image_id:
            bad["empty_id"] += 1
        elif not ID_RE.fullmatch(image_id):
            bad["bad_id"] += 1
        elif not url:
            bad["empty_url"] += 1
        else:
            try:
                text = url.decode("utf-8")
            except UnicodeDecodeError:
                bad["not_utf8"] += 1
                continue
            wnid = image_id[:9].decode()
            by_wnid.setdefault(wnid, []).append((image_id.decode(), text))
    return by_wnid, bad, len(lines)


def index_contents(index: UrlIndex) -> dict[str, list[tuple[str, str]]]:
    return {wnid: index.rows(wnid) for wnid in index.counts}


GOOD_LINES = [
    b"n01440764_1\thttp://farm1.static.flickr.com/1/1_abcdef0123.jpg",
    b"n01440764_2\thttp://example.com/a photo with spaces.jpg",
    b'n01440764_3\thttp://example.com/x,y,"quoted".jpg',
    b"n01440764_4\thttp://example.com/photos%20of%20cats%2C%25.jpg",
    "n01440764_5\thttp://www.yueqi.sh.cn/picimage/口琴小品1.jpg".encode(),
    "n01440764_6\thttp://lh4.ggpht.com/267+-+Gabriela+más+discreta.JPG".encode(),
    b"n01440764_7\thttp://example.com/extra\ttab\tfields.jpg",  # URL keeps its tabs
    b"n01440764_8\thttp://example.com/crlf.jpg\r",  # a stray CR stays part of the URL
    b"n01440764_1234567\thttp://example.com/seven-trailing-digits.jpg",
    b"n01440764_123456789012345678901234\thttp://example.com/very-long-id.jpg",
    b"n01443537_1\tftp://example.com/not-http.jpg",  # kept, counted as non_http_url
    b"n01443537_2\tHTTPS://EXAMPLE.COM/UPPER.JPG",
    b"n01443537_3\thttps://example.com/\x00nul-and-\x0bvt.jpg",
    b"n01440764_9\thttp://example.com/second-run.jpg",  # the synset again: not grouped
]
MALFORMED = {
    "empty_line": [b""],
    "no_tab": [b"n01440764_20 http://example.com/space-not-tab.jpg", b"n01440764_21"],
    "empty_id": [b"\thttp://example.com/no-id.jpg"],
    "bad_id": [
        b"n0144076_1\thttp://example.com/seven-digit-wnid.jpg",
        b"N01440764_1\thttp://example.com/capital.jpg",
        b"n01440764_\thttp://example.com/no-number.jpg",
        b"n01440764-1\thttp://example.com/dash.jpg",
        b"n01440764_1a\thttp://example.com/letter.jpg",
        "n01440764_١\thttp://example.com/arabic-digit.jpg".encode(),
        b"n01440764_12345678901234567890123x\thttp://example.com/long-bad.jpg",
        b" n01440764_1\thttp://example.com/leading-space.jpg",
    ],
    "empty_url": [b"n01440764_22\t"],
    "not_utf8": [b"n01440764_23\thttp://example.com/caf\xe9.jpg", b"n01440764_24\thttp://x/\xff\xfe"],
}


def mixed_text(final_newline: bool = False) -> bytes:
    """Good and malformed lines interleaved (a bad line between every two good ones)."""
    bad = [line for lines in MALFORMED.values() for line in lines]
    out = []
    for i, good in enumerate(GOOD_LINES):
        out.append(good)
        if i < len(bad):
            out.append(bad[i])
    out.extend(bad[len(GOOD_LINES) :])
    out.append(b"n01443537_4\thttp://example.com/last-line-without-newline.jpg")
    return b"\n".join(out) + (b"\n" if final_newline else b"")


def test_round_trip_counts_and_report(tmp_path: Path) -> None:
    data = mixed_text()
    tarball = make_tgz(tmp_path / "urls.tgz", {"fall11_urls.txt": data})
    report = build_url_index(tarball, tmp_path / "index")
    expected, bad, lines = reference(data)

    index = UrlIndex.open(tmp_path / "index")
    assert index_contents(index) == expected
    assert index.counts == {w: len(rows) for w, rows in sorted(expected.items())}
    assert index.rows("n01440764")[5] == (
        "n01440764_6",
        "http://lh4.ggpht.com/267+-+Gabriela+más+discreta.JPG",
    )

    assert report["lines"] == lines
    assert report["bytes"] == len(data)
    assert report["final_newline"] is False
    assert report["urls"] == sum(len(rows) for rows in expected.values())
    assert report["synsets"] == 2
    assert report["malformed"] == bad
    assert report["malformed"] == {kind: len(lines) for kind, lines in MALFORMED.items()}
    assert report["malformed_total"] == sum(bad.values())
    assert report["info"] == {"extra_tabs": 1, "non_http_url": 1}
    assert "ftp://example.com/not-http.jpg" in report["info_examples"]["non_http_url"][0]
    for kind, examples in report["malformed_examples"].items():
        assert 1 <= len(examples) <= 5
        assert examples[0] == repr(MALFORMED[kind][0])
    assert report["grouped"] is False  # n01440764 comes back after n01443537
    assert "matches_published" not in report

    on_disk = json.loads((tmp_path / "index" / "report.json").read_text(encoding="utf-8"))
    assert on_disk == report
    with open(tmp_path / "index" / "counts.csv", newline="", encoding="utf-8") as f:
        assert list(csv.reader(f)) == [["wnid", "urls"], ["n01440764", "11"], ["n01443537", "4"]]
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == [
        "counts.csv",
        "report.json",
        "runs.arrow",
        "urls.arrow",
    ]


def test_non_utf8_byte_does_not_disturb_neighbours(tmp_path: Path) -> None:
    data = (
        b"n02084071_1\thttp://example.com/before.jpg\n"
        b"n02084071_2\thttp://example.com/\xc3(\x80bad.jpg\n"
        b"n02084071_3\thttp://example.com/after-\xc3\xa9.jpg\n"
    )
    tarball = make_tgz(tmp_path / "urls.tgz", {"fall11_urls.txt": data})
    report = build_url_index(tarball, tmp_path / "index")
    rows = UrlIndex.open(tmp_path / "index").rows("n02084071")
    assert rows == [
        ("n02084071_1", "http://example.com/before.jpg"),
        ("n02084071_3", "http://example.com/after-é.jpg"),
    ]
    assert report["malformed"]["not_utf8"] == 1
    assert report["lines"] == 3 and report["final_newline"] is True


@pytest.mark.parametrize("block_bytes", [1, 7, 64, 200])
def test_small_blocks_give_the_same_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block_bytes: int
) -> None:
    # Lines straddle block ends, some are longer than a block, runs continue across blocks.
    monkeypatch.setattr(stream, "BLOCK_BYTES", block_bytes)
    data = mixed_text(final_newline=True)
    tarball = make_tgz(tmp_path / "urls.tgz", {"fall11_urls.txt": data})
    report = build_url_index(tarball, tmp_path / "index")
    expected, bad, lines = reference(data)
    assert index_contents(UrlIndex.open(tmp_path / "index")) == expected
    assert report["malformed"] == bad
    assert report["lines"] == lines
    assert report["grouped"] is False


@pytest.mark.parametrize("block_bytes", [5, 100, 1 << 20])
def test_grouped_input_has_one_run_per_synset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block_bytes: int
) -> None:
    monkeypatch.setattr(stream, "BLOCK_BYTES", block_bytes)
    lines = [f"n0{w}000000_{i}\thttp://example.com/{w}/{i}.jpg" for w in range(1, 5) for i in range(30)]
    lines.insert(45, "garbage")  # a malformed line inside a synset splits its run, not the grouping
    data = ("\n".join(lines) + "\n").encode()
    tarball = make_tgz(tmp_path / "urls.tgz", {"fall11_urls.txt": data})
    report = build_url_index(tarball, tmp_path / "index")
    assert report["grouped"] is True
    assert report["runs"] == 5 and report["synsets"] == 4
    index = UrlIndex.open(tmp_path / "index")
    assert index.counts == {f"n0{w}000000": 30 for w in range(1, 5)}
    assert [u for _, u in index.rows("n02000000")] == [f"http://example.com/2/{i}.jpg" for i in range(30)]


def random_text(rng: random.Random, lines: int) -> bytes:
    alphabet = [b"a", b"/", b".", b" ", b",", b'"', b"%", b"\t", b"\r", b"\x00", b"\xff"]
    alphabet += ["é".encode(), "口".encode()]
    wnids = [f"n{rng.randrange(10**8):08d}" for _ in range(4)]
    out = []
    for _ in range(lines):
        roll = rng.random()
        if roll < 0.03:
            out.append(b"")
            continue
        image_id = f"{rng.choice(wnids)}_{rng.randrange(10 ** rng.randint(1, 30))}".encode()
        if roll < 0.08:
            image_id = image_id[: rng.randrange(len(image_id) + 1)] + rng.choice(alphabet)
        url = b"http://h/" + b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        if roll > 0.97:
            url = b""
        sep = b"\t" if roll < 0.95 else b" "
        out.append(image_id + sep + url)
    return b"\n".join(out) + (b"\n" if rng.random() < 0.5 else b"")


@pytest.mark.parametrize("seed", range(6))
def test_random_lines_match_the_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    rng = random.Random(seed)
    monkeypatch.setattr(stream, "BLOCK_BYTES", rng.choice([50, 333, 4096, 1 << 20]))
    data = random_text(rng, 600)
    tarball = make_tgz(tmp_path / "urls.tgz", {"fall11_urls.txt": data})
    report = build_url_index(tarball, tmp_path / "index")
    expected, bad, lines = reference(data)
    assert index_contents(UrlIndex.open(tmp_path / "index")) == expected
    assert report["malformed"] == bad
    assert report["lines"] == lines
    assert report["bytes"] == len(data)
    assert report["urls"] + report["malformed_total"] == lines


def test_rows_by_position_and_unknown_wnid(tmp_path: Path) -> None:
    data = b"".join(f"n03000000_{i}\thttp://example.com/{i}.jpg\n".encode() for i in range(10))
    tarball = make_tgz(tmp_path / "urls.tgz", {"fall11_urls.txt": data})
    build_url_index(tarball, tmp_path / "index")
    index = UrlIndex.open(tmp_path / "index")
    assert index.rows("n03000000", [7, 0, 7]) == [
        ("n03000000_7", "http://example.com/7.jpg"),
        ("n03000000_0", "http://example.com/0.jpg"),
        ("n03000000_7", "http://example.com/7.jpg"),
    ]
    assert index.rows("n03000000", []) == []
    with pytest.raises(IndexError):
        index.rows("n03000000", [10])
    with pytest.raises(IndexError):
        index.rows("n03000000", [-1])
    assert index.count("n09999999") == 0
    assert index.rows("n09999999") == []
    assert index.count("n03000000") == 10


def test_published_figures_compared(tmp_path: Path) -> None:
    data = b"n01440764_1\thttp://a/\nn01440764_2\thttp://b/\n"
    tarball = make_tgz(tmp_path / "urls.tgz", {"fall11_urls.txt": data})
    same = build_url_index(tarball, tmp_path / "a", expected_lines=2, expected_bytes=len(data))
    assert same["matches_published"] is True and same["warning"] is None
    other = build_url_index(tarball, tmp_path / "b", expected_lines=14_197_122, expected_bytes=1_134_662_781)
    assert other["matches_published"] is False
    assert "2 lines where 14,197,122 were published" in other["warning"]
    assert "1,134,662,781" in other["warning"]


def test_member_may_sit_under_dot_slash_and_among_others(tmp_path: Path) -> None:
    data = b"n01440764_1\thttp://a/\n"
    tarball = make_tgz(tmp_path / "urls.tgz", {"README": b"hello" * 1000, "./fall11_urls.txt": data})
    report = build_url_index(tarball, tmp_path / "index")
    assert report["member"] == "./fall11_urls.txt"
    assert UrlIndex.open(tmp_path / "index").rows("n01440764") == [("n01440764_1", "http://a/")]


def test_empty_member(tmp_path: Path) -> None:
    tarball = make_tgz(tmp_path / "urls.tgz", {"fall11_urls.txt": b""})
    report = build_url_index(tarball, tmp_path / "index")
    assert (report["lines"], report["urls"], report["synsets"]) == (0, 0, 0)
    assert UrlIndex.open(tmp_path / "index").counts == {}


def test_progress_reports_compressed_share_and_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "BLOCK_BYTES", 4096)
    data = b"".join(f"n03000000_{i}\thttp://example.com/{i}.jpg\n".encode() for i in range(3000))
    tarball = make_tgz(tmp_path / "urls.tgz", {"fall11_urls.txt": data})
    calls: list[tuple[float, str]] = []
    build_url_index(tarball, tmp_path / "index", progress=lambda p, m: calls.append((p, m)))
    percents = [p for p, _ in calls]
    assert percents == sorted(percents)
    assert percents[-1] == 100.0 and 0 < percents[-2] < 100
    assert any(re.fullmatch(r"[\d,]+ lines, [\d,.]+ KB of [\d,.]+ KB", m) for _, m in calls)


def test_truncated_gzip_is_a_clear_error(tmp_path: Path) -> None:
    rng = random.Random(1)
    data = b"".join(f"n03000000_{i}\thttp://example.com/{rng.random()}.jpg\n".encode() for i in range(5000))
    whole = make_tgz(tmp_path / "whole.tgz", {"fall11_urls.txt": data}).read_bytes()
    for cut in (len(whole) // 2, len(whole) - 4):  # mid-member, and only the gzip trailer missing
        (tmp_path / "cut.tgz").write_bytes(whole[:cut])
        with pytest.raises(UrlListError, match="ends early"):
            build_url_index(tmp_path / "cut.tgz", tmp_path / f"index{cut}")


def test_not_a_gzip_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "urls.tgz").write_bytes(b"<html>404 Not Found</html>\n")
    with pytest.raises(UrlListError, match="not a valid gzip"):
        build_url_index(tmp_path / "urls.tgz", tmp_path / "index")


def test_gzip_that_is_not_a_tar_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "urls.tgz").write_bytes(gzip.compress(b"n01440764_1\thttp://a/\n" * 100))
    with pytest.raises(UrlListError, match="urls.tgz"):
        build_url_index(tmp_path / "urls.tgz", tmp_path / "index")


def test_missing_member_names_what_was_found(tmp_path: Path) -> None:
    tarball = make_tgz(tmp_path / "urls.tgz", {"winter11_urls.txt": b"x\n", "notes/README": b"y"})
    with pytest.raises(UrlListError, match="fall11_urls.txt") as caught:
        build_url_index(tarball, tmp_path / "index")
    assert "'winter11_urls.txt'" in str(caught.value) and "'notes/README'" in str(caught.value)


def test_missing_file_and_non_index_directory(tmp_path: Path) -> None:
    with pytest.raises(UrlListError, match="cannot open"):
        build_url_index(tmp_path / "absent.tgz", tmp_path / "index")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UrlListError):
        UrlIndex.open(tmp_path / "empty")


def test_real_sample_round_trip(tmp_path: Path) -> None:
    # The 20,000 real URLs of the reference data's 200words100urls.csv.
    with open(shared_file("imagenet", "200words100urls.csv"), encoding="utf-8", newline="") as f:
        records = [(image_id, url) for image_id, url in csv.reader(f)]
    assert len(records) == 20_000
    data = "".join(f"{image_id}\t{url}\n" for image_id, url in records).encode("utf-8")
    tarball = make_tgz(tmp_path / "urls.tgz", {"fall11_urls.txt": data})
    report = build_url_index(tarball, tmp_path / "index")
    index = UrlIndex.open(tmp_path / "index")

    expected: dict[str, list[tuple[str, str]]] = {}
    for image_id, url in records:
        expected.setdefault(image_id.split("_")[0], []).append((image_id, url))
    assert index_contents(index) == expected
    assert report["urls"] == 20_000 and report["malformed_total"] == 0
    assert report["synsets"] == 200 and report["grouped"] is True
    assert sum(not url.isascii() for _, url in records) > 0  # the raw UTF-8 really is exercised


def test_a_failure_mid_run_stops_every_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small blocks and a small pool, so the reader is blocked waiting for buffers when
    # the parser fails: the run must still end promptly, with the parser's error.
    monkeypatch.setattr(stream, "BLOCK_BYTES", 256)
    monkeypatch.setattr(stream, "_POOL", 3)
    real_parse = stream.parse_block
    calls = []

    def failing_parse(buf: bytearray, end: int) -> object:
        calls.append(end)
        if len(calls) == 5:
            raise RuntimeError("parser broke")
        return real_parse(buf, end)

    monkeypatch.setattr(stream, "parse_block", failing_parse)
    data = b"".join(f"n03000000_{i}\thttp://example.com/{i}.jpg\n".encode() for i in range(2000))
    tarball = make_tgz(tmp_path / "urls.tgz", {"fall11_urls.txt": data})
    before = {t.name for t in threading.enumerate()}
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            build_url_index(tarball, tmp_path / "index")
        except BaseException as exc:  # inspected below
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "build_url_index hung after a parser error"
    assert len(outcome) == 1 and "parser broke" in str(outcome[0])
    leftover = {t.name for t in threading.enumerate()} - before
    assert not [name for name in leftover if name.startswith("url-index")]


def test_a_write_error_keeps_its_own_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class FullDisk:
        def write_batch(self, batch: object) -> None:
            raise OSError(28, "No space left on device")

    real_init = stream._BackgroundWriter.__init__

    def init(self: object, writer: object, pool: object) -> None:
        real_init(self, FullDisk(), pool)

    monkeypatch.setattr(stream._BackgroundWriter, "__init__", init)
    tarball = make_tgz(tmp_path / "urls.tgz", {"fall11_urls.txt": b"n01440764_1\thttp://a/\n"})
    with pytest.raises(OSError, match="No space left") as caught:
        build_url_index(tarball, tmp_path / "index")
    assert not isinstance(caught.value, UrlListError)


def _restamp(index_dir: Path, metadata: dict[str, str]) -> None:
    """Rewrite urls.arrow with the same rows under other schema metadata."""
    import pyarrow as pa

    path = index_dir / "urls.arrow"
    table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    table = table.replace_schema_metadata(metadata)
    with pa.OSFile(str(path) + ".new", "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    Path(str(path) + ".new").replace(path)


def test_index_of_a_data_dir_made_before_the_stage_folders_still_opens(tmp_path: Path) -> None:
    # The pre-refactor code (sampler/url_index.py) stamped urls.arrow {"sampler.url_index": "1"}
    # and refused any other stamp; renaming the key made every category task of an existing
    # data_dir fail ("not a URL index of format 1") while ExtractUrls counted as complete.
    import pyarrow as pa

    data = b"n01_1\thttp://a.example/1.jpg\nn01_2\thttp://a.example/2.jpg\nn02_1\thttp://b.example/1.jpg\n"
    build_url_index(make_tgz(tmp_path / "urls.tgz", {"fall11_urls.txt": data}), tmp_path / "index")
    written = pa.ipc.open_file(pa.memory_map(str(tmp_path / "index" / "urls.arrow"), "r")).schema.metadata
    assert written == {b"sampler.url_index": b"1"}  # what the old code reads: downgrades work too
    expected = index_contents(UrlIndex.open(tmp_path / "index"))
    _restamp(tmp_path / "index", {"sampler.url_index": "1"})
    assert index_contents(UrlIndex.open(tmp_path / "index")) == expected
    for stamp in ({"sampler.url_index": "2"}, {"sampler.index.url_index": "1"}, {"other": "1"}):
        _restamp(tmp_path / "index", stamp)
        with pytest.raises(UrlListError, match="not a URL index of format 1"):
            UrlIndex.open(tmp_path / "index")
