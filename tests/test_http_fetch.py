"""Fetcher against real loopback HTTP servers (no mocks): every failure mode it must name."""

from __future__ import annotations

import gzip
import io
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from PIL import Image

from sampler.fetch.http_fetch import Fetcher, FetchOutcome, FetchSettings
from tests.servers import trickle_body


def make_jpeg(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    img = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    img.putpixel((seed % width, 0), (255, 0, seed % 256))  # distinct bytes per seed
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


GOOD = make_jpeg()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LoopbackServer

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def body(self, data: bytes, status: int = 200, ctype: str = "image/jpeg", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(data)

    def do_CONNECT(self) -> None:
        # An https request through this server as a proxy: logged like any other, then refused.
        with self.server.lock:
            self.server.requests.append((self.command + " " + self.path, dict(self.headers.items())))
        self.body(b"no tunnels here", 502, "text/plain")

    def do_GET(self) -> None:  # noqa: C901 - one route table
        proxied = self.path.startswith("http://")
        parts = urlsplit(self.path)
        path, query = parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}
        srv = self.server
        with srv.lock:
            srv.hits[path + ("?" + parts.query if parts.query else "")] += 1
            hits = srv.hits[path + ("?" + parts.query if parts.query else "")]
            srv.requests.append((self.path, dict(self.headers.items())))
            srv.peers.append(self.client_address)
        if proxied and parts.hostname != "images.example.test":
            return self.body(b"unknown host", 502, "text/plain")
        stop = srv.stop

        if path == "/img/good.jpg" or path.startswith("/echo/"):
            return self.body(GOOD)
        if path == "/status":
            code = int(query["code"])
            return (
                self.body(b"", code, "text/plain")
                if code in (204, 304)
                else self.body(b"nope", code, "text/plain")
            )
        if path == "/flaky":  # first `fail` requests answer `code`, then the image
            if hits <= int(query.get("fail", "1")):
                extra = {"Retry_After": query["retry_after"]} if "retry_after" in query else {}
                extra.update({k[4:]: v for k, v in query.items() if k.startswith("hdr_")})
                return self.body(b"busy", int(query["code"]), "text/plain", **extra)
            return self.body(GOOD)
        if path == "/redirect":
            self.send_response(int(query.get("code", "302")))
            if "to" in query:
                self.send_header("Location", query["to"])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if path == "/hang":
            stop.wait(30)
            return None
        if path == "/trickle":  # valid headers, then one body byte a second
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b"x")
                if stop.wait(float(query.get("every", "1"))):
                    break
            self.close_connection = True
            return None
        if path == "/framed-trickle":  # a byte every `every` s under one framing, for ever
            every = float(query.get("every", "0.2"))
            try:
                trickle_body(
                    self, query["framing"], first=b"x", then=b"x", every=every, stop=stop, length=100_000
                )
            except OSError:
                with srv.lock:
                    srv.hung_up += 1  # the client gave up: what the deadline must cause
            return None
        if path == "/trickle-headers":  # never finishes its headers
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            for _ in range(1000):
                self.wfile.write(b"a")
                if stop.wait(0.3):
                    break
            self.close_connection = True
            return None
        if path == "/huge-length":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(2_000_000_000))
            self.end_headers()
            self.wfile.write(b"\xff\xd8\xff" + b"\0" * 1000)
            self.close_connection = True
            return None
        if path == "/endless":  # no length: body ends when the connection does (never)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            if query.get("chunked"):
                self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            block = b"\xff" * 65536
            try:
                while not stop.is_set():
                    if query.get("chunked"):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                    else:
                        self.wfile.write(block)
            except OSError:
                pass
            return None
        if path == "/short":  # announces 1000 bytes, sends 500, hangs up
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(GOOD[:500])
            self.close_connection = True
            return None
        if path == "/gzip":  # a server that gzips although we asked for identity
            return self.body(gzip.compress(GOOD), Content_Encoding="gzip")
        if path == "/reset":  # RST instead of an answer
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return None
        if path == "/slow":
            with srv.lock:
                srv.active += 1
                srv.max_active = max(srv.max_active, srv.active)
            stop.wait(float(query.get("s", "0.3")))
            with srv.lock:
                srv.active -= 1
            return self.body(GOOD)
        return self.body(b"not found", 404, "text/html")


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.hits: Counter[str] = Counter()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.peers: list[tuple[str, int]] = []  # client address of each request: one per connection
        self.stop = threading.Event()
        self.active = self.max_active = 0
        self.hung_up = 0

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # resets and aborted clients are the point of these tests

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy configured on the test machine must not intercept loopback requests.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackServer]:
    srv = LoopbackServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.stop.set()
    srv.shutdown()
    srv.server_close()


# The server is on loopback: these tests talk to it directly, so private addresses are allowed.
FAST = FetchSettings(
    connect_timeout=2, read_timeout=2, deadline=5, backoff=0.02, max_bytes=1_000_000, allow_private=True
)


@pytest.fixture
def fetcher() -> Iterator[Fetcher]:
    with Fetcher(FAST) as f:
        yield f


def timed(fetcher: Fetcher, url: str) -> tuple[FetchOutcome, float]:
    start = time.monotonic()
    result = fetcher.fetch(url)
    return result, time.monotonic() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- success -----------------------------------------------------------------------


def test_good_image_exact_bytes_and_polite_headers(server: LoopbackServer, fetcher: Fetcher) -> None:
    r = fetcher.fetch(server.url + "/img/good.jpg")
    assert (r.outcome, r.status, r.body, r.bytes, r.redirects, r.attempts) == (
        "ok",
        200,
        GOOD,
        len(GOOD),
        0,
        1,
    )
    assert r.final_url == server.url + "/img/good.jpg" and r.error == ""
    headers = next(h for p, h in reversed(server.requests) if p == "/img/good.jpg")
    assert headers["User-Agent"] == FAST.user_agent
    assert headers["Accept-Encoding"] == "identity"


def test_raw_utf8_and_spaces_are_quoted_once(server: LoopbackServer, fetcher: Fetcher) -> None:
    # The URL list mixes raw UTF-8, spaces and %-escapes: % must not be re-encoded.
    r = fetcher.fetch(server.url + "/echo/a b/café%20x.jpg")
    assert r.outcome == "ok"
    assert any(p == "/echo/a%20b/caf%C3%A9%20x.jpg" for p, _ in server.requests)


def test_gzip_transfer_encoding_is_undone_not_reencoded(server: LoopbackServer, fetcher: Fetcher) -> None:
    r = fetcher.fetch(server.url + "/gzip")
    assert r.outcome == "ok" and r.body == GOOD


@pytest.mark.parametrize("code", [403, 404, 410, 400])
def test_client_errors_are_final(server: LoopbackServer, fetcher: Fetcher, code: int) -> None:
    r = fetcher.fetch(f"{server.url}/status?code={code}")
    assert (r.outcome, r.status, r.attempts, r.body) == (f"http_{code}", code, 1, None)
    assert server.hits[f"/status?code={code}"] == 1


@pytest.mark.parametrize("code", [204, 206])
def test_other_2xx_are_failures(server: LoopbackServer, fetcher: Fetcher, code: int) -> None:
    assert fetcher.fetch(f"{server.url}/status?code={code}").outcome == f"http_{code}"


# --- retries -----------------------------------------------------------------------


@pytest.mark.parametrize("code", [503, 504, 408])
def test_try_again_statuses_are_retried(server: LoopbackServer, fetcher: Fetcher, code: int) -> None:
    r = fetcher.fetch(server.url + f"/flaky?key=a{code}&code={code}&fail=1")
    assert (r.outcome, r.attempts, r.body) == ("ok", 2, GOOD)
    assert server.hits[f"/flaky?key=a{code}&code={code}&fail=1"] == 2


@pytest.mark.parametrize("code", [500, 501, 502, 505])
def test_broken_server_statuses_are_final(server: LoopbackServer, fetcher: Fetcher, code: int) -> None:
    # On today's web a 500/502 from an image host is a broken server, not a busy one.
    r = fetcher.fetch(server.url + f"/flaky?key=f{code}&code={code}&fail=1")
    assert (r.outcome, r.attempts, r.retryable, r.dead_host) == (f"http_{code}", 1, False, False)


def test_without_retries_a_retryable_answer_comes_back_at_once(server: LoopbackServer) -> None:
    # How category downloads use the fetcher: the caller parks the URL instead of sleeping.
    with Fetcher(FetchSettings(retries=0, backoff=5, allow_private=True)) as f:
        r, took = timed(f, server.url + "/flaky?key=p&code=429&fail=1&retry_after=10")
    assert (r.outcome, r.attempts, r.retryable, r.retry_after) == ("http_429", 1, True, 10.0)
    assert took < 5  # waiting first would take the 10 s Retry-After (or the 5 s backoff at least)


@pytest.mark.parametrize(
    "header",
    [
        ("X-Squid-Error", "ERR_DNS_FAIL 0"),
        ("X-Squid-Error", "ERR_CONNECT_FAIL 111"),
        ("Proxy-Status", "squid; error=dns_error; details=no-such-host"),
    ],
)
def test_a_proxys_origin_unreachable_page_means_a_dead_host(
    server: LoopbackServer, fetcher: Fetcher, header: tuple[str, str]
) -> None:
    name, value = header
    url = server.url + f"/flaky?key=s{value[:8]}&code=503&fail=9&hdr_{name.replace('-', '_')}={quote(value)}"
    r = fetcher.fetch(url)
    assert (r.outcome, r.status, r.attempts, r.retryable, r.dead_host) == ("dead_host", 503, 1, False, True)
    assert value.split()[0].rstrip(";") in r.error


def test_429_honours_retry_after(server: LoopbackServer, fetcher: Fetcher) -> None:
    r, took = timed(fetcher, server.url + "/flaky?key=b&code=429&fail=1&retry_after=1")
    assert (r.outcome, r.attempts) == ("ok", 2)
    assert took >= 0.95  # waited what the server asked, not the 0.02 s backoff


def test_retry_after_beyond_max_gives_up_at_once(server: LoopbackServer, fetcher: Fetcher) -> None:
    r, took = timed(fetcher, server.url + "/flaky?key=c&code=503&fail=1&retry_after=3600")
    assert (r.outcome, r.attempts) == ("http_503", 1)
    assert "Retry-After" in r.error and took < 5  # waiting would take the whole 5 s deadline


def test_503_forever_gives_up_after_retries(server: LoopbackServer, fetcher: Fetcher) -> None:
    r = fetcher.fetch(server.url + "/status?code=503")
    assert (r.outcome, r.status, r.attempts) == ("http_503", 503, FAST.retries + 1)
    assert server.hits["/status?code=503"] == FAST.retries + 1


def test_retries_never_outlast_the_deadline(server: LoopbackServer) -> None:
    # The first retry would wait 3 s * [1, 1.5): past the 2 s deadline, so none is tried.
    with Fetcher(FetchSettings(backoff=3.0, retries=5, deadline=2.0, allow_private=True)) as f:
        r, took = timed(f, server.url + "/status?code=504")
    assert r.outcome == "http_504" and "no time left" in r.error and r.attempts == 1
    assert took < 2.9  # a fetcher sleeping past the deadline takes 3 s at least


def test_backoff_grows_exponentially(server: LoopbackServer) -> None:
    with Fetcher(FetchSettings(backoff=0.25, retries=3, deadline=20, allow_private=True)) as f:
        r, took = timed(f, server.url + "/status?code=503&key=backoff")  # its own hit counter
    assert r.attempts == 4
    # Waits 0.25, 0.5 and 1 s, each times [1, 1.5): 1.75 to 2.6 s plus the requests.  A constant
    # backoff waits 1.1 s at most, and load only adds to that, so the lower bound tells them apart;
    # the upper one leaves a loaded machine 3 s for four loopback requests.
    assert 1.75 <= took < 6


# --- redirects ---------------------------------------------------------------------


def test_redirect_to_image_is_followed(server: LoopbackServer, fetcher: Fetcher) -> None:
    inner = "/redirect?to=" + quote("/img/good.jpg")
    r = fetcher.fetch(server.url + "/redirect?code=301&to=" + quote(inner))
    assert (r.outcome, r.redirects, r.attempts, r.body) == ("ok", 2, 3, GOOD)
    assert r.final_url == server.url + "/img/good.jpg"


@pytest.mark.parametrize(
    "target",
    [
        "https://s.yimg.com/pw/images/en-us/photo_unavailable_l.png",
        "https://s.yimg.com/pw/images/fr-fr/photo_unavailable_l.png",
        "http://l.yimg.com/g/images/photo_unavailable.gif",
    ],
)
def test_redirect_to_flickr_placeholder_is_not_fetched(
    server: LoopbackServer, fetcher: Fetcher, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the loopback server as the proxy for everything but itself, a request for the
    # placeholder (or an https tunnel to its host) would land in the server's log.
    for name in ("HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, server.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    start = len(server.requests)
    r = fetcher.fetch(server.url + "/redirect?to=" + quote(target))
    assert (r.outcome, r.status, r.final_url, r.body, r.attempts) == (
        "placeholder_redirect", 302, target, None, 1
    )  # fmt: skip
    assert [p for p, _ in server.requests[start:]] == ["/redirect?to=" + quote(target)]


def test_redirect_loop(server: LoopbackServer, fetcher: Fetcher) -> None:
    r = fetcher.fetch(server.url + "/loop")
    assert (r.outcome, r.redirects, r.attempts) == (
        "redirect_loop",
        FAST.max_redirects,
        FAST.max_redirects + 1,
    )


@pytest.mark.parametrize(
    "target", ["file:///etc/passwd", "ftp://example.com/a.jpg", "javascript:alert(1)", "http://[bad/x"]
)
def test_redirect_to_other_scheme_is_refused(server: LoopbackServer, fetcher: Fetcher, target: str) -> None:
    r = fetcher.fetch(server.url + "/redirect?to=" + quote(target))
    assert (r.outcome, r.final_url, r.body) == ("bad_redirect", target, None)


def test_redirect_without_location(server: LoopbackServer, fetcher: Fetcher) -> None:
    assert fetcher.fetch(server.url + "/redirect?code=302").outcome == "http_302"


def test_non_http_url_is_never_requested(fetcher: Fetcher) -> None:
    for url in ("ftp://example.com/x.jpg", "file:///etc/passwd", "example.com/x.jpg"):
        r = fetcher.fetch(url)
        assert (r.outcome, r.attempts, r.status) == ("bad_scheme", 0, None)
    for url in ("http:///no-host.jpg", "http://[bad/x.jpg", "http://example.com:99999/x.jpg"):
        assert fetcher.fetch(url).outcome == "bad_url"


# --- time limits -------------------------------------------------------------------


def test_hang_times_out_on_read_timeout(server: LoopbackServer) -> None:
    with Fetcher(FetchSettings(read_timeout=0.5, deadline=5, retries=2, allow_private=True)) as f:
        r, took = timed(f, server.url + "/hang")
    assert (r.outcome, r.attempts) == ("timeout", 1)  # timeouts are not retried
    assert 0.4 < took < 10  # not the 30 s the server hangs for


def test_hang_is_cut_by_the_deadline_before_the_read_timeout(server: LoopbackServer) -> None:
    with Fetcher(FetchSettings(read_timeout=20, deadline=1.0, allow_private=True)) as f:
        r, took = timed(f, server.url + "/hang?n=2")
    assert r.outcome == "timeout" and 0.9 < took < 10  # not the 20 s read timeout


def test_trickle_ends_at_the_deadline(server: LoopbackServer) -> None:
    with Fetcher(FetchSettings(read_timeout=5, deadline=2.0, allow_private=True)) as f:
        r, took = timed(f, server.url + "/trickle")
    assert (r.outcome, r.status, r.body) == ("timeout", 200, None)
    assert 1.9 < took < 10  # the read timeout never trips on a byte a second: the body takes 1000 s
    assert r.bytes <= 3  # bytes still inside the socket buffer are not counted


def test_trickled_headers_end_at_the_deadline(server: LoopbackServer) -> None:
    with Fetcher(FetchSettings(read_timeout=5, deadline=1.5, allow_private=True)) as f:
        r, took = timed(f, server.url + "/trickle-headers")
    assert r.outcome == "timeout" and 1.4 < took < 10  # the headers alone would take 300 s


def test_connection_after_a_killed_fetch_still_works(server: LoopbackServer) -> None:
    # The watchdog shuts a socket; the thread's next fetch must not inherit the damage.
    with Fetcher(FetchSettings(read_timeout=5, deadline=0.8, allow_private=True)) as f:
        assert f.fetch(server.url + "/trickle?every=0.2").outcome == "timeout"
        assert f.fetch(server.url + "/img/good.jpg").outcome == "ok"
        time.sleep(0.1)
        assert f.fetch(server.url + "/img/good.jpg").outcome == "ok"


# --- sizes and broken bodies ---------------------------------------------------------


def test_huge_content_length_is_refused_without_reading(server: LoopbackServer, fetcher: Fetcher) -> None:
    r, took = timed(fetcher, server.url + "/huge-length")
    assert (r.outcome, r.bytes, r.body) == ("too_large", 0, None)
    assert "2000000000" in r.error and took < 5


@pytest.mark.parametrize("chunked", ["", "1"])
def test_endless_body_is_cut_at_max_bytes(server: LoopbackServer, fetcher: Fetcher, chunked: str) -> None:
    r, took = timed(fetcher, f"{server.url}/endless?chunked={chunked}")
    assert r.outcome == "too_large" and r.body is None
    assert FAST.max_bytes < r.bytes <= FAST.max_bytes + 65536 + 16384
    assert took < 10  # the body never ends


def test_body_shorter_than_content_length_is_truncated(server: LoopbackServer, fetcher: Fetcher) -> None:
    r = fetcher.fetch(server.url + "/short")
    assert (r.outcome, r.status, r.body) == ("truncated_download", 200, None)
    assert r.bytes == 500


def test_connection_reset_is_dead_host_and_retried(server: LoopbackServer, fetcher: Fetcher) -> None:
    r = fetcher.fetch(server.url + "/reset")
    assert (r.outcome, r.status) == ("dead_host", None)
    assert r.attempts == FAST.retries + 1  # resets are often transient
    assert server.hits["/reset"] == FAST.retries + 1


def test_refused_port_is_dead_host_not_retried(fetcher: Fetcher) -> None:
    r, took = timed(fetcher, f"http://127.0.0.1:{free_port()}/x.jpg")
    assert (r.outcome, r.attempts, r.status) == ("dead_host", 1, None)
    assert "refused" in r.error and took < 5


def test_dns_failure_is_dead_host_not_retried(fetcher: Fetcher) -> None:
    r = fetcher.fetch("http://no-such-host.invalid/x.jpg")
    assert (r.outcome, r.attempts) == ("dead_host", 1)


# --- proxies and concurrency -------------------------------------------------------


def test_http_proxy_env_is_honoured(
    server: LoopbackServer, fetcher: Fetcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", server.url)
    r = fetcher.fetch("http://images.example.test/img/good.jpg")
    assert (r.outcome, r.body) == ("ok", GOOD)
    assert any(p == "http://images.example.test/img/good.jpg" for p, _ in server.requests)


def test_no_proxy_env_is_honoured(
    server: LoopbackServer, fetcher: Fetcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # a dead proxy
    assert fetcher.fetch(server.url + "/img/good.jpg").outcome == "proxy_error"
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert fetcher.fetch(server.url + "/img/good.jpg").outcome == "ok"


def test_error_pages_and_redirects_keep_the_connection(server: LoopbackServer, fetcher: Fetcher) -> None:
    # Most 2011 URLs answer 404 or redirect: a fresh TCP connection for each would
    # double the requests' cost, for us and for the hosts.
    start = len(server.peers)
    urls = [f"{server.url}/status?code={code}" for code in (404, 410, 403)]
    urls += [f"{server.url}/redirect?to=/echo/{i}" for i in range(3)] + [f"{server.url}/img/good.jpg"]
    outcomes = [fetcher.fetch(url).outcome for url in urls]
    assert outcomes == ["http_404", "http_410", "http_403", "ok", "ok", "ok", "ok"]
    peers = server.peers[start:]
    assert len(peers) == 10  # 3 errors, 3 redirects and their 3 targets, 1 image
    assert len(set(peers)) == 1, f"{len(set(peers))} connections for {len(peers)} requests"


def test_per_host_limit_across_threads(server: LoopbackServer) -> None:
    with (
        Fetcher(FetchSettings(per_host=2, deadline=5, allow_private=True)) as f,
        ThreadPoolExecutor(8) as pool,
    ):
        results = list(pool.map(f.fetch, [f"{server.url}/slow?s=0.2&i={i}" for i in range(8)]))
    assert all(r.outcome == "ok" for r in results)
    assert server.max_active == 2


# --- hostile web: trickles under every framing, internal addresses, userinfo -----------


def via_proxy(server: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reach http://images.example.test/ through the loopback server acting as a proxy,
    as the demo does: the default address policy then applies to the image URLs."""
    monkeypatch.setenv("HTTP_PROXY", server.url)


@pytest.mark.parametrize("framing", ["length", "chunked", "close", "http10"])
def test_a_trickle_under_any_framing_ends_at_the_deadline_and_leaves_no_thread(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, framing: str
) -> None:
    # Default settings but a short deadline: a byte every 0.2 s never trips the 10 s read
    # timeout, so the whole-download deadline is the only thing that can end the download.
    # "close" and "http10" are close-delimited: http.client drops conn.sock for those.
    via_proxy(server, monkeypatch)
    settings = FetchSettings(deadline=1.5)
    assert settings.read_timeout > 5 and not settings.allow_private
    hung_up = server.hung_up
    results: list[FetchOutcome] = []
    with Fetcher(settings) as f:
        url = f"http://images.example.test/framed-trickle?framing={framing}"
        thread = threading.Thread(target=lambda: results.append(f.fetch(url)), daemon=True)
        thread.start()
        thread.join(timeout=60)
    assert not thread.is_alive(), "the fetching thread outlived the deadline"
    [result] = results
    assert result.outcome == "timeout", result
    assert "deadline" in result.error
    assert 0 < result.bytes < 100  # some bytes came, then the deadline cut the download
    for _ in range(50):  # the server sees the connection go as soon as it writes again
        if server.hung_up > hung_up:
            break
        time.sleep(0.1)
    assert server.hung_up > hung_up


INTERNAL_SPELLINGS = [
    "127.0.0.1", "127.1", "0177.0.0.1", "0x7f000001", "2130706433", "0x7f.0.0.1", "0.0.0.0",
    "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "localhost", "LOCALHOST.", "foo.localhost",
]  # fmt: skip


@pytest.mark.parametrize("host", INTERNAL_SPELLINGS)
def test_loopback_in_any_spelling_is_refused_and_never_reached(server: LoopbackServer, host: str) -> None:
    port = server.server_address[1]
    hits = sum(server.hits.values())
    with Fetcher(FetchSettings(deadline=5)) as f:
        result = f.fetch(f"http://{host}:{port}/img/good.jpg")
    assert result.outcome == "refused_address", result
    assert result.attempts == 0 and result.body is None
    assert sum(server.hits.values()) == hits


@pytest.mark.parametrize(
    "target",
    [
        "http://10.1.2.3/x.jpg",
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://[fd00::1]/x.jpg",  # ULA
        "http://[fe80::1%25eth0]/x.jpg",  # link-local with a zone
        "http://192.168.0.1/x.jpg",
        "http://100.64.0.1/x.jpg",  # shared address space (CGNAT)
        "http://224.0.0.1/x.jpg",  # multicast
        "http://240.0.0.1/x.jpg",  # reserved
        "http://[2002:7f00:1::]/x.jpg",  # 6to4 wrapping 127.0.0.1
        "http://metadata.google.internal/computeMetadata/v1/",
    ],
)
def test_a_public_url_redirecting_to_an_internal_address_is_refused(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    via_proxy(server, monkeypatch)
    with Fetcher(FetchSettings(deadline=5)) as f:
        direct = f.fetch(target)
        result = f.fetch(f"http://images.example.test/redirect?to={quote(target, safe='')}")
    assert direct.outcome == "refused_address" and direct.attempts == 0, direct
    assert result.outcome == "refused_address", result
    assert result.attempts == 1 and result.redirects == 0  # the redirect itself, no request to it
    assert not any(p.startswith(target.split("/x.jpg")[0]) for p, _ in server.requests)


def test_a_name_resolving_to_loopback_is_refused_at_connect(server: LoopbackServer) -> None:
    # This machine's own host name: no spelling check can know it is loopback, only the
    # address it resolves to (and connects to) can.
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except OSError:
        pytest.skip(f"{name} does not resolve here")
    if not all(a.startswith("127.") or a == "::1" for a in addresses):
        pytest.skip(f"{name} resolves to {addresses}, not loopback")
    hits = sum(server.hits.values())
    with Fetcher(FetchSettings(deadline=5)) as f:
        result = f.fetch(f"http://{name}:{server.server_address[1]}/img/good.jpg")
    assert result.outcome == "refused_address", result
    assert "loopback" in result.error
    assert sum(server.hits.values()) == hits
    with Fetcher(FetchSettings(deadline=5, allow_private=True)) as f:  # the one explicit way in
        assert f.fetch(f"http://{name}:{server.server_address[1]}/img/good.jpg").outcome == "ok"


def test_userinfo_is_never_sent(server: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    via_proxy(server, monkeypatch)
    with Fetcher(FetchSettings(deadline=5)) as f:
        result = f.fetch("http://admin:secret@images.example.test/echo/userinfo")
    assert result.outcome == "ok"
    path, headers = next((p, h) for p, h in server.requests if p.endswith("/echo/userinfo"))
    assert "secret" not in path and "admin" not in path
    assert not any(name.lower() == "authorization" for name in headers)
