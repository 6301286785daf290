"""Attacks on the fetch stage that its own tests' worlds did not try: against real loopback
servers, real JPEGs and the real per-category round."""

from __future__ import annotations

import csv
import hashlib
import io
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from sampler.fetch.category_round import CategoryFiles, CategoryJob, run_round
from sampler.fetch.http_fetch import FetchSettings
from sampler.fetch.image_check import judge_image
from sampler.store import ImageStore
from tests.conftest import run_luigi, write_demo_config


def jpeg(seed: int) -> bytes:
    img = Image.linear_gradient("L").resize((96, 64)).convert("RGB")
    img.putpixel((seed % 96, seed % 64), (255, seed % 256, 0))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


class CountingHandler(BaseHTTPRequestHandler):
    """Serves a distinct JPEG per path after a short pause, counting requests in flight."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # http.server's name
        server = self.server
        with server.lock:  # type: ignore[attr-defined]
            server.in_flight += 1  # type: ignore[attr-defined]
            server.most = max(server.most, server.in_flight)  # type: ignore[attr-defined]
        try:
            time.sleep(0.03)
            body = jpeg(sum(self.path.encode()))
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        finally:
            with server.lock:  # type: ignore[attr-defined]
                server.in_flight -= 1  # type: ignore[attr-defined]

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def counting_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), CountingHandler)
    server.daemon_threads = True
    server.lock, server.in_flight, server.most = threading.Lock(), 0, 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_per_host_holds_across_two_configurations_running_on_one_data_dir(
    tmp_path: Path, counting_server: ThreadingHTTPServer
) -> None:
    """Two FetchFives of different seeds on one data_dir (the README: per_host is "across every
    process sharing data_dir") must not send a host twice per_host requests at once."""
    port = counting_server.server_address[1]
    data_dir = tmp_path / "data"
    store = ImageStore(data_dir / "store")
    settings = FetchSettings(per_host=1, allow_private=True)
    errors: list[BaseException] = []

    def run(config: str) -> None:
        try:
            files = CategoryFiles(data_dir / "fetch" / config, "n01234567")
            sample = [(f"n01234567_{i}", f"http://127.0.0.1:{port}/{config}/{i}.jpg") for i in range(12)]
            job = CategoryJob(
                "n01234567", "cat", 12, sample, lambda: iter(()), store, set(), [], max_in_flight=8
            )
            summary = run_round(files, 0, job, settings=settings, judge=judge_image).result
            assert len(summary.kept) == 12
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in ("seed1-n1-k12", "seed2-n1-k12")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert counting_server.most == 1  # type: ignore[attr-defined]


# --- the store, corrupted by hand -------------------------------------------------------------


def _truncate(body: bytes) -> bytes:
    return body[: len(body) // 2]


def _flip(body: bytes) -> bytes:
    middle = len(body) // 2
    return body[:middle] + bytes(b ^ 0x5A for b in body[middle : middle + 64]) + body[middle + 64 :]


@pytest.mark.parametrize(
    "damage", [_truncate, _flip, "another"], ids=["truncated", "flipped", "another-jpeg"]
)
def test_a_store_entry_damaged_by_hand_is_repaired_by_a_rerun(
    finished_demo_run, tmp_path, demo_world, demo_server, damage
):
    """A store entry edited in place (images/ holds copies, untouched): a rerun must end with
    the bytes the manifest names in images/ and in the store, whatever was done to the entry."""
    subprocess.run(["cp", "-a", str(finished_demo_run / "data"), str(tmp_path / "data")], check=True)
    config = write_demo_config(tmp_path, demo_world, demo_server)
    data = tmp_path / "data"
    with (data / "manifest.csv").open(encoding="utf-8", newline="") as src:
        rows = list(csv.DictReader(src))
    row, other = rows[0], rows[1]
    store = ImageStore(data / "store")
    entry = store.path(row["sha256"])
    good = entry.read_bytes()
    damaged = store.path(other["sha256"]).read_bytes() if damage == "another" else damage(good)
    with entry.open("r+b") as out:  # in place, as an editor or a bad disk would
        out.write(damaged)
        out.truncate()
    run = run_luigi(config, demo_server, "--local-scheduler")
    assert run.returncode == 0, run.stderr[-3000:]
    assert hashlib.sha256((data / "images" / row["file"]).read_bytes()).hexdigest() == row["sha256"]
    assert store.get(row["sha256"]) == good


def test_a_damaged_fetch_summary_makes_the_step_run_again_with_no_request(
    finished_demo_run, tmp_path, demo_world, demo_server
):
    """fetch_summary.json marks FetchFives done; cut short by hand (or a bad disk), it must make
    the step run again from what the categories recorded, not crash every process's check."""
    subprocess.run(["cp", "-a", str(finished_demo_run / "data"), str(tmp_path / "data")], check=True)
    config = write_demo_config(tmp_path, demo_world, demo_server)
    data = tmp_path / "data"
    summary = data / "fetch_summary.json"
    whole = summary.read_bytes()
    summary.write_bytes(whole[: len(whole) // 2])
    demo_server.clear_log()
    run = run_luigi(config, demo_server, "--local-scheduler")
    assert run.returncode == 0, run.stderr[-3000:]
    assert summary.read_bytes() == whole
    assert demo_server.requests == []  # everything it needed was recorded
    assert (data / "manifest.csv").read_bytes() == (finished_demo_run / "data" / "manifest.csv").read_bytes()
