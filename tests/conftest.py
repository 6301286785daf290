"""Shared fixtures: the demo world on a loopback server, a real luigid, pipeline runs."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The one place tests find the real ImageNet reference data (words.txt, the 2017 run's
# JPEGs, category lists): ../shared/data beside the checkout, or SAMPLER_SHARED_DATA.
# Users will not have it; CI must (.ci/run sets REQUIRE_SHARED_DATA=1).
SHARED_DATA = Path(os.environ.get("SAMPLER_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(*parts: str) -> Path:
    """A reference file or folder under SHARED_DATA.  Absent, its test skips, or fails where
    REQUIRE_SHARED_DATA is set (CI): there a silent skip would hide a test that never ran."""
    path = optional_shared_file(*parts)
    if path is None:
        pytest.skip(f"reference data {SHARED_DATA.joinpath(*parts)} is absent (set SAMPLER_SHARED_DATA?)")
    return path


def optional_shared_file(*parts: str) -> Path | None:
    """A reference file or folder under SHARED_DATA, or None where it is absent, for tests
    that fall back to synthetic data (a real photo when there is one).  Where
    REQUIRE_SHARED_DATA is set, absent data fails the test instead."""
    path = SHARED_DATA.joinpath(*parts)
    if path.exists():
        return path
    if os.environ.get("REQUIRE_SHARED_DATA"):
        pytest.fail(f"reference data {path} is required here (REQUIRE_SHARED_DATA is set) but absent")
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_runs(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not reaped yet, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_for_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from demo.world import build_demo_world

    return build_demo_world(tmp_path_factory.mktemp("demo-world"))


@pytest.fixture(scope="session")
def demo_server(demo_world: Path) -> Iterator:
    from demo.server import DemoServer

    with DemoServer(demo_world) as server:
        yield server


class Luigid:
    """A real central scheduler on a free loopback port."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()  # a port: luigid restarted where its workers look for it
        self.url = f"http://127.0.0.1:{self.port}"
        (folder / "logs").mkdir(parents=True, exist_ok=True)
        self.log = (folder / "luigid.out").open("a")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                # As scripts/luigid.sh starts it: the package's defaults ([scheduler], [resources]).
                "import sys, tasks; from luigi.cmdline import luigid; luigid(sys.argv[1:])",
                "--address",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--state-path",
                str(folder / "state.pickle"),
                "--logdir",
                str(folder / "logs"),
            ],
            cwd=REPO,  # luigid reads the project's luigi.cfg ([scheduler], [resources])
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for_http(self.url + "/")

    def stop(self) -> None:
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="session")
def luigid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Luigid]:
    scheduler = Luigid(tmp_path_factory.mktemp("luigid"))
    yield scheduler
    scheduler.stop()


def write_demo_config(folder: Path, world: Path, server, **sections: dict) -> Path:
    """``folder``/test-luigi.cfg pointing the pipeline at the served demo world, data in
    ``folder``/data; ``sections`` add or override settings ({"FetchCategory": {...}})."""
    from demo.config import write_demo_config as write
    from demo.world import CATEGORIES_CSV

    return write(
        folder / "test-luigi.cfg", server.url, folder / "data", world / CATEGORIES_CSV, sections=sections
    )


def pipeline_env(config: Path, server) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "LUIGI_CONFIG_PATH": str(config),
            # Image hosts are reached through the demo server acting as a web proxy; luigid is not.
            "HTTP_PROXY": server.proxy_url,
            "http_proxy": server.proxy_url,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PYTHONPATH": str(REPO),
        }
    )
    return env


def run_luigi(
    config: Path,
    server,
    *args: str,
    task: str = "FetchFives",
    scheduler: Luigid | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """``luigi --module pipeline <task>`` as a user runs it, from the project folder."""
    # --no-lock: luigi refuses an identical command line already running on this host.
    command = [sys.executable, "-m", "luigi", "--module", "pipeline", task, "--no-lock", *args]
    if scheduler is None:
        command.append("--local-scheduler")
    else:
        command += ["--scheduler-host", "127.0.0.1", "--scheduler-port", str(scheduler.port)]
    return subprocess.run(
        command, cwd=REPO, env=pipeline_env(config, server), capture_output=True, text=True, timeout=timeout
    )


# Headless, as root, on a machine with no network: without the background-networking
# flags Chromium keeps trying to reach Google's hosts.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium_path() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("REQUIRE_CHROMIUM"):
        pytest.fail("chromium is required here (REQUIRE_CHROMIUM is set) but not installed")
    return found


@pytest.fixture(scope="session")
def finished_demo_run(tmp_path_factory: pytest.TempPathFactory, demo_world: Path, demo_server) -> Path:
    """A folder holding one finished FetchFives run (``data/``) on the demo world.  Read only:
    a test that damages or changes it works on a copy."""
    folder = tmp_path_factory.mktemp("finished-demo-run")
    config = write_demo_config(folder, demo_world, demo_server)
    run = run_luigi(config, demo_server, "--workers", "2", "--local-scheduler")
    assert run.returncode == 0, run.stderr[-3000:]
    return folder
