"""The offline demo world (demo.world) and its loopback proxy (demo.server)."""

from __future__ import annotations

import csv
import hashlib
import io
import subprocess
import sys
import tarfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

from demo import world as dw
from demo.server import DemoServer
from sampler.download import URL_LIST_MEMBER
from sampler.naming import IMAGE_ID_RE

REPO = Path(__file__).resolve().parent.parent
WORLD_FILES = (dw.URLS_TGZ, dw.WORDS_TXT, dw.CATEGORIES_CSV, dw.WORLD_JSON)


@pytest.fixture(scope="module")
def world(demo_world: Path) -> dict:
    return dw.load_world(demo_world)


@pytest.fixture()
def server(demo_world: Path) -> Iterator[DemoServer]:
    # A fresh server per test: transient faults remember their first hit per server.
    with DemoServer(demo_world) as srv:
        yield srv


def member_lines(world_dir: Path) -> list[bytes]:
    with tarfile.open(world_dir / dw.URLS_TGZ, "r:gz") as tar:
        return tar.extractfile(URL_LIST_MEMBER).read().split(b"\n")[:-1]


def urls_with(world: dict, behaviour: str) -> list[str]:
    return [u for u, e in world["urls"].items() if e["behaviour"] == behaviour]


def get(server: DemoServer, url: str, **kwargs) -> requests.Response:
    kwargs.setdefault("timeout", 5)
    return requests.get(url, proxies=server.proxies, **kwargs)


# ---------------------------------------------------------------- the files


def test_build_is_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    a = dw.build_demo_world(tmp_path / "a", seed=7, n_categories=6)
    b = dw.build_demo_world(tmp_path / "b", seed=7, n_categories=6)
    c = dw.build_demo_world(tmp_path / "c", seed=8, n_categories=6)
    for name in WORLD_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / dw.URLS_TGZ).read_bytes() != (c / dw.URLS_TGZ).read_bytes()
    assert sorted(p.name for p in a.iterdir()) == sorted(WORLD_FILES)  # no temporaries left


def test_tarball_is_one_member_grouped_by_synset(demo_world: Path, world: dict) -> None:
    with tarfile.open(demo_world / dw.URLS_TGZ, "r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [URL_LIST_MEMBER] and members[0].isfile()
    lines = member_lines(demo_world)
    assert len(lines) == world["files"][dw.URLS_TGZ]["member_lines"]
    good = []
    for line in lines:
        fields = line.decode("utf-8", "replace").split("\t")
        if len(fields) == 2 and IMAGE_ID_RE.fullmatch(fields[0]) and "\ufffd" not in fields[1]:
            good.append(fields)
    assert len(good) == len(lines) - len(world["malformed_lines"])
    # Grouped like the real file: each synset's well-formed lines are contiguous.
    seen, previous = set(), None
    for image_id, _ in good:
        wnid = image_id.split("_")[0]
        if wnid != previous:
            assert wnid not in seen, f"{wnid} appears in two blocks"
            seen.add(wnid)
            previous = wnid
    # Every well-formed line is described in world.json.
    for image_id, url in good:
        assert image_id in world["urls"][url]["ids"]


def test_url_list_has_the_real_quirks(demo_world: Path, world: dict) -> None:
    lines = member_lines(demo_world)
    kinds = {m["kind"] for m in world["malformed_lines"]}
    assert kinds >= {"no_tab", "empty", "empty_id", "bad_id", "non_utf8", "extra_field"}
    positions = [m["line"] for m in world["malformed_lines"]]
    assert min(positions) < len(lines) // 2  # scattered, not piled at the end
    for m in world["malformed_lines"]:
        raw = lines[m["line"] - 1]
        assert raw.decode("utf-8", "backslashreplace") == m["text"]
    with pytest.raises(UnicodeDecodeError):
        b"\n".join(lines).decode("utf-8")
    text = b"\n".join(lines).decode("utf-8", "replace")
    for needle in (" cats/", ",summer,", '"', "写真", "München", "%20", "ftp://", "file:///", "javascript:"):
        assert needle in text, needle
    shared = [u for u, e in world["urls"].items() if len(e["ids"]) > 1]
    assert shared and {i.split("_")[0] for i in world["urls"][shared[0]]["ids"]} >= {
        world["categories"][0]["wnid"],
        world["categories"][4]["wnid"],
    }


def test_categories_words_and_composition(demo_world: Path, world: dict) -> None:
    with (REPO / "config" / "det200.csv").open(newline="") as fh:
        det200 = [(r["wnid"], r["label"]) for r in csv.DictReader(fh)]
    with (demo_world / dw.CATEGORIES_CSV).open(newline="") as fh:
        assert [(r["wnid"], r["label"]) for r in csv.DictReader(fh)] == det200[:10]
    cats = {c["role"]: c for c in world["categories"]}
    assert cats["big"]["n_urls"] > 100 and cats["big"]["wnid"] == "n02672831"
    short = cats["shortfall"]
    assert short["shortfall"] and short["n_valid"] + len(short["banner_urls"]) < 5
    assert all(not c["shortfall"] for c in world["categories"] if c is not short)
    assert not any(world["urls"][u]["valid"] for _, u in cats["dead_first"]["entries"][:6])
    assert cats["dead_first"]["n_valid"] / cats["dead_first"]["n_urls"] <= 0.25
    assert world["urls"][cats["banner"]["entries"][0][1]]["behaviour"] == "jpeg_banner"
    assert sum(bool(c["banner_urls"]) for c in world["categories"]) >= 3
    assert all(30 <= c["n_urls"] <= 150 for c in world["categories"])
    det_wnids = {w for w, _ in det200}
    assert len(world["distractors"]) == 20 and not det_wnids & {d["wnid"] for d in world["distractors"]}

    urls = [e for e in world["urls"].values() if e["behaviour"] != "bad_scheme"]
    failing = sum(not e["valid"] for e in urls) / len(urls)
    assert 0.40 <= failing <= 0.50
    flickr = [e for e in urls if e["host"].endswith(".static.flickr.com")]
    assert len(flickr) > len(urls) / 2
    others = {e["host"] for e in urls} - {e["host"] for e in flickr}
    assert len(others) >= 10
    assert {e["behaviour"] for e in urls} >= set(dw.EXPECT) - {"bad_scheme", "server_500"}  # 500s: dead web

    words = (demo_world / dw.WORDS_TXT).read_bytes()
    assert not words.endswith(b"\n")
    records = dict(line.split("\t") for line in words.decode().split("\n"))
    wnids = {i.split("_")[0] for e in world["urls"].values() for i in e["ids"]}
    assert wnids <= set(records) and len(records) > len(wnids)
    assert records["n02672831"].startswith("accordion")


# ---------------------------------------------------------------- the server


def test_ok_url_is_a_fully_decodable_unique_jpeg(server: DemoServer, world: dict) -> None:
    url = next(u for u in urls_with(world, "ok") if u.startswith("http://farm"))
    first, second = get(server, url), get(server, url)
    assert first.status_code == 200 and first.headers["Content-Type"] == "image/jpeg"
    assert first.content == second.content == dw.expected_jpeg(world, url)
    with Image.open(io.BytesIO(first.content)) as img:
        assert img.format == "JPEG"
        img.load()
        assert 80 <= img.width <= 640 and 60 <= img.height <= 480
    other = get(server, urls_with(world, "ok")[1]).content
    assert other != first.content
    assert server.hits(url) == 2


def test_http_errors_and_unknown_urls(server: DemoServer, world: dict) -> None:
    for behaviour, status in (("http_404", 404), ("http_410", 410), ("http_403", 403)):
        assert get(server, urls_with(world, behaviour)[0]).status_code == status
    assert get(server, "http://farm1.static.flickr.com/1/never_listed.jpg").status_code == 404
    assert requests.get(server.url + "/nothing-here", timeout=5).status_code == 404


def test_placeholder_redirects(server: DemoServer, world: dict) -> None:
    locations = set()
    for url in urls_with(world, "flickr_placeholder_redirect"):
        r = get(server, url, allow_redirects=False)
        assert r.status_code == 302
        locations.add(r.headers["Location"])
        if dw.FLICKR_PLACEHOLDER_PNG_URL in locations and dw.FLICKR_PLACEHOLDER_GIF_URL in locations:
            break
    assert dw.FLICKR_PLACEHOLDER_PNG_URL in locations and dw.FLICKR_PLACEHOLDER_GIF_URL in locations
    gif = get(server, dw.FLICKR_PLACEHOLDER_GIF_URL)
    assert gif.headers["Content-Type"] == "image/gif"
    assert hashlib.md5(gif.content).hexdigest() == world["placeholders"]["flickr_gif_md5"]


def test_banner_is_the_same_jpeg_behind_many_urls(server: DemoServer, world: dict) -> None:
    banners = urls_with(world, "jpeg_banner")
    a, b = get(server, banners[0]), get(server, banners[-1])
    assert a.status_code == b.status_code == 200 and a.content == b.content
    assert hashlib.md5(a.content).hexdigest() == world["placeholders"]["banner_md5"]
    with Image.open(io.BytesIO(a.content)) as img:
        img.load()
        assert img.format == "JPEG" and img.width > 80 and img.height > 60


def test_redirect_ok_and_awkward_urls(server: DemoServer, world: dict) -> None:
    for url in urls_with(world, "redirect_ok")[:4]:
        r = get(server, url)
        assert r.status_code == 200 and r.history and r.content == dw.expected_jpeg(world, url)
    awkward = [u for u in world["urls"] if u.startswith("http") and (not u.isascii() or " " in u or '"' in u)]
    assert len(awkward) >= 4
    for url in awkward:  # requests percent-encodes them; the server must still recognise them
        assert get(server, url).content == dw.expected_jpeg(world, url)
    encoded = next(u for u in world["urls"] if "%20" in u)
    assert get(server, encoded).status_code == 200
    assert get(server, encoded.replace("%20", "%2520")).status_code == 404  # double-encoding misses


def test_other_list_behaviours(server: DemoServer, world: dict) -> None:
    for url in urls_with(world, "dead_host")[:2] + [
        next(u for u in urls_with(world, "dead_host") if world["urls"][u]["mode"] == "close")
    ]:
        with pytest.raises(requests.ConnectionError):
            get(server, url)
    html = get(server, urls_with(world, "html_200")[0])
    assert html.status_code == 200 and html.headers["Content-Type"].startswith("text/html")
    for url in urls_with(world, "truncated_jpeg")[:6]:
        try:
            body = get(server, url).content
        except requests.exceptions.ChunkedEncodingError:
            continue  # the "full" length mode: announced more than it sent
        with pytest.raises(OSError), Image.open(io.BytesIO(body)) as img:
            img.load()
    for behaviour, fmt in (("png_image", "PNG"), ("gif_image", "GIF")):
        for url in urls_with(world, behaviour)[:3]:
            with Image.open(io.BytesIO(get(server, url).content)) as img:
                assert img.format == fmt
    lies = [
        u
        for u in urls_with(world, "png_image") + urls_with(world, "gif_image")
        if world["urls"][u]["content_type"] == "image/jpeg"
    ]
    assert lies and get(server, lies[0]).headers["Content-Type"] == "image/jpeg"


def test_transient_failures_succeed_on_retry(server: DemoServer, world: dict) -> None:
    url = urls_with(world, "transient_500")[0]
    first = get(server, url)
    assert first.status_code in (503, 504)  # both say "try again"
    second = get(server, url)
    assert second.status_code == 200 and second.content == dw.expected_jpeg(world, url)
    limited = urls_with(world, "rate_limited_429")[0]
    r = get(server, limited)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert get(server, limited).status_code == 200
    assert server.hits(url) == 2 and server.hits(limited) == 2
    stats = requests.get(server.url + "/__stats", timeout=5).json()
    assert [s for m, u, s in stats["requests"] if u == url] == [first.status_code, 200]


def test_files_with_and_without_range(server: DemoServer, demo_world: Path) -> None:
    data = (demo_world / dw.URLS_TGZ).read_bytes()
    url = server.file_url(dw.URLS_TGZ)
    assert requests.get(url, timeout=5).content == data
    r = requests.get(url, headers={"Range": "bytes=100-1099"}, timeout=5)
    assert r.status_code == 206 and r.content == data[100:1100]
    assert r.headers["Content-Range"] == f"bytes 100-1099/{len(data)}"
    r = requests.get(url, headers={"Range": "bytes=-10"}, timeout=5)
    assert r.status_code == 206 and r.content == data[-10:]
    r = requests.get(url, headers={"Range": f"bytes={len(data)}-"}, timeout=5)
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{len(data)}"
    norange = server.file_url(dw.URLS_TGZ, "files-norange")
    r = requests.get(norange, headers={"Range": "bytes=100-"}, timeout=5)
    assert r.status_code == 200 and r.content == data
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(server.file_url(dw.URLS_TGZ, "files-cut"), timeout=5)
    # The archive.org address of the real tarball is served too (through the proxy).
    assert get(server, dw.ARCHIVE_TGZ_URL).content == data
    assert get(server, dw.ORIGINAL_TGZ_URL).status_code == 404
    assert requests.get(server.url + "/files/../world.json", timeout=5).status_code == 404


def test_fault_urls(server: DemoServer) -> None:
    pixel = get(server, server.fault_url("pixel"))
    assert Image.open(io.BytesIO(pixel.content)).size == (1, 1)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(get(server, server.fault_url("bomb")).content))
    assert get(server, server.fault_url("empty")).content == b""
    assert get(server, server.fault_url("html")).headers["Content-Type"].startswith("text/html")
    with pytest.raises(requests.ConnectionError):
        get(server, server.fault_url("reset"))
    with pytest.raises(requests.TooManyRedirects):
        get(server, server.fault_url("redirect_loop"))
    r = get(server, server.fault_url("redirect_file"), allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"] == "file:///etc/passwd"
    ok_a, ok_b = get(server, server.fault_url("ok", "a")), get(server, server.fault_url("ok", "b"))
    assert ok_a.content != ok_b.content and ok_a.content == get(server, server.fault_url("ok", "a")).content
    assert requests.get(server.fault_url("ok", "a", direct=True), timeout=5).status_code == 200
    with pytest.raises(requests.exceptions.ReadTimeout):
        get(server, server.fault_url("slow") + "?seconds=2", timeout=(2, 0.3))
    r = get(server, server.fault_url("huge_length"), stream=True)
    assert r.headers["Content-Length"] == "2147483648"
    r.close()
    with get(server, server.fault_url("trickle"), stream=True, timeout=3) as r:
        start = time.monotonic()
        got = b"".join(r.raw.read(1) for _ in range(21))
        assert got.startswith(b"\xff\xd8") and time.monotonic() - start >= 1.0


def test_stop_is_prompt_while_a_request_hangs(demo_world: Path) -> None:
    server = DemoServer(demo_world, latency=(0.05, 0.05)).start()
    url = server.fault_url("hang")
    errors: list[BaseException] = []

    def client() -> None:
        try:
            requests.get(url, proxies=server.proxies, timeout=30)
        except requests.RequestException as exc:
            errors.append(exc)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while server.hits(url) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.hits(url) == 1
    time.sleep(0.2)
    start = time.monotonic()
    server.stop()
    # Not the client's 30 s: stop() wakes the hung handler (generous for a loaded machine).
    assert time.monotonic() - start < 15
    thread.join(5)
    assert not thread.is_alive() and errors  # the hung client was released with an error
    assert server.requests == [("GET", url, 0)]


def test_request_log_and_latency(demo_world: Path, world: dict) -> None:
    url = next(u for u in urls_with(world, "ok") if u.startswith("http://farm"))
    with DemoServer(demo_world, latency=(0.1, 0.1)) as server:
        start = time.monotonic()
        get(server, url)
        assert time.monotonic() - start >= 0.1
        assert requests.head(server.url + "/", timeout=5).status_code == 204  # not logged
        assert server.requests == [("GET", url, 200)] and server.hits(url) == 1
        stats = requests.get(server.url + "/__stats", timeout=5).json()
        assert len(stats["requests"]) == 1 and stats["requests"][0][2] == 200
        server.clear_log()
        assert server.requests == [] and server.hits(url) == 0


def test_prerendered_server_serves_the_same_bytes(demo_world: Path, world: dict, tmp_path: Path) -> None:
    urls = [urls_with(world, b)[0] for b in ("ok", "png_image", "gif_image", "redirect_ok")]
    half = [u for u in urls_with(world, "truncated_jpeg") if world["urls"][u]["length_mode"] == "half"]
    urls.append(half[0])
    with DemoServer(demo_world) as plain:
        expected = [get(plain, u, timeout=10).content for u in urls]
    cache = tmp_path / "renders"
    rendered = DemoServer(demo_world).prerender(cache)
    assert rendered > len(world["urls"]) // 3 and cache.is_file()
    again = DemoServer(demo_world)
    assert again.prerender(cache) == rendered
    with again:
        assert [get(again, u, timeout=10).content for u in urls] == expected

    # A cache made for another world is not trusted: that world's own images are served.
    other = dw.build_demo_world(tmp_path / "other", seed=7, n_categories=2, n_distractors=2)
    other_world = dw.load_world(other)
    with DemoServer(other) as server:
        entries = other_world["urls"].values()
        painted = sum(e["behaviour"] in ("ok", "png_image", "gif_image") for e in entries)
        assert painted < server.prerender(cache) < rendered
        url = urls_with(other_world, "ok")[0]
        assert get(server, url).content == dw.expected_jpeg(other_world, url)


# ---------------------------------------------------------------- command lines


def test_command_lines(tmp_path: Path) -> None:
    out = tmp_path / "world"
    built = subprocess.run(
        [sys.executable, "-m", "demo.world", str(out), "--seed", "3", "--categories", "4"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert built.returncode == 0, built.stderr
    assert all((out / name).is_file() for name in WORLD_FILES)
    assert len(dw.load_world(out)["categories"]) == 4

    pidfile = tmp_path / "server.pid"
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo.server", "--world", str(out), "--port", "0", "--pidfile", str(pidfile)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        deadline = time.monotonic() + 10
        while True:
            try:
                assert requests.head(url + "/", timeout=1).status_code == 204
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert pidfile.read_text().strip() == str(proc.pid)
        assert requests.get(url + "/files/categories.csv", timeout=5).text.startswith("wnid,label\n")
        proc.terminate()
        assert proc.wait(5) == 0
        assert not pidfile.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_per_category_valid_counts_match_entries(world: dict) -> None:
    by_cat = defaultdict(list)
    for cat in world["categories"]:
        for _, url in cat["entries"]:
            by_cat[cat["wnid"]].append(url)
        assert cat["valid_urls"] == [u for u in by_cat[cat["wnid"]] if world["urls"][u]["valid"]]
        assert cat["n_valid"] == len(cat["valid_urls"]) and cat["n_urls"] == len(cat["entries"])


def test_the_dead_web_world_is_mostly_dead_and_its_dead_hosts_answer_like_squid(tmp_path: Path) -> None:
    out = dw.build_demo_world(tmp_path / "dead", n_categories=6, n_distractors=2, dead_web=True)
    world = dw.load_world(out)
    entries = [world["urls"][u] for c in world["categories"] for _, u in c["entries"]]
    assert sum(not e["valid"] for e in entries) / len(entries) >= 0.9
    worst = [c for c in world["categories"] if c["role"] == "worst"]
    assert any(c["n_urls"] == 100 and c["n_valid"] == 5 for c in worst)  # the worst case: 5 of 100
    assert all(c["n_valid"] / c["n_urls"] <= 0.06 for c in worst)
    behaviours = {e["behaviour"] for e in entries}
    assert {"http_404", "http_410", "http_403", "dead_host", "server_500"} <= behaviours
    assert behaviours & {"rate_limited_429", "transient_500"}  # a few transient ones
    dead = [u for u, e in world["urls"].items() if e["behaviour"] == "dead_host"]
    assert len({world["urls"][u]["host"] for u in dead}) < len(dead)  # a dead host holds several URLs
    with DemoServer(out) as server:
        for url in dead[:5]:
            r = requests.get(url, proxies=server.proxies, timeout=5)
            assert r.status_code in (502, 503)
            assert r.headers["X-Squid-Error"].split()[0] in ("ERR_DNS_FAIL", "ERR_CONNECT_FAIL")
        broken = next(u for u, e in world["urls"].items() if e["behaviour"] == "server_500")
        statuses = [requests.get(broken, proxies=server.proxies, timeout=5).status_code for _ in range(2)]
        assert statuses == [500, 500]  # permanent, unlike transient_500
