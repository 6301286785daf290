"""One luigid, many runs (issue 12): task identity, configuration and validation the Luigi way.

Every test runs ``luigi --module pipeline ...`` as a user does, against the demo world on a
loopback server, through a real luigid wherever luigid is involved.  The numbers in the test
names are the points of the issue.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import (
    REPO,
    Luigid,
    free_port,
    pipeline_env,
    process_runs,
    run_luigi,
    write_demo_config,
)

RETCODE_TASK_FAILED = 30


def manifest_rows(data: Path) -> list[dict[str, str]]:
    with (data / "manifest.csv").open(encoding="utf-8", newline="") as src:
        return list(csv.DictReader(src))


def image_requests(server) -> list[str]:
    return [url for _method, url, _status in server.requests if "/files/" not in url]


def output_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def seeded_data(tmp_path_factory, demo_world, demo_server, luigid):
    """Point 1: seed 7, then the default seed 0, back to back on one luigid and one data_dir."""
    folder = tmp_path_factory.mktemp("seeds")
    config = write_demo_config(folder, demo_world, demo_server)
    seven = run_luigi(config, demo_server, "--SampleUrls-seed", "7", scheduler=luigid)
    manifest_seven = (folder / "data" / "manifest.csv").read_bytes() if seven.returncode == 0 else b""
    zero = run_luigi(config, demo_server, scheduler=luigid)
    return folder, config, seven, manifest_seven, zero


def test_1_back_to_back_runs_with_different_seeds_on_one_luigid_both_run(seeded_data, demo_server, luigid):
    folder, config, seven, manifest_seven, zero = seeded_data
    assert seven.returncode == 0, output_of(seven)[-3000:]
    assert zero.returncode == 0, output_of(zero)[-3000:]
    assert "not granted run permission" not in output_of(zero)
    assert (folder / "data" / "manifest.csv").read_bytes() != manifest_seven  # seed 0's own sample
    assert {p.name for p in (folder / "data" / "fetch").iterdir()} == {"seed7-n100-k5", "seed0-n100-k5"}
    # Going back to seed 7 samples nothing again: its results are still in fetch/.  (Its kept
    # images left images/ for seed 0's, and its categories replay to restore them.)
    demo_server.clear_log()
    back = run_luigi(config, demo_server, "--SampleUrls-seed", "7", scheduler=luigid)
    assert back.returncode == 0, output_of(back)[-3000:]
    assert (folder / "data" / "manifest.csv").read_bytes() == manifest_seven
    # (Those replays go away with a content store for images: issue 13.)
    assert [url for _method, url, _status in demo_server.requests if "/files/" in url] == []


def test_1_task_ids_carry_data_dir_seed_and_the_category_list(tmp_path, demo_world):
    import luigi

    from tasks.fetch_fives import FetchCategory, FetchFives

    categories = demo_world / "categories.csv"
    one = FetchFives(data_dir=str(tmp_path / "a"), category_list=str(categories))
    ids = {
        one.task_id,
        FetchFives(data_dir=str(tmp_path / "b"), category_list=str(categories)).task_id,
        FetchFives(data_dir=str(tmp_path / "a"), category_list=str(categories), seed=7).task_id,
        FetchFives(data_dir=str(tmp_path / "a"), category_list=str(categories), sample_size=50).task_id,
    }
    edited = tmp_path / "edited.csv"
    edited.write_text(categories.read_text(encoding="utf-8") + "n09999999,unicorn\n", encoding="utf-8")
    ids.add(FetchFives(data_dir=str(tmp_path / "a"), category_list=str(edited)).task_id)
    assert len(ids) == 5
    # Same folder, named relatively: the same task.
    os.chdir(tmp_path)
    try:
        assert FetchFives(data_dir="a", category_list=str(categories)).task_id == one.task_id
    finally:
        os.chdir(REPO)
    # Settings travel down: every category task has the root's seed and data_dir.
    seven = FetchFives(data_dir=str(tmp_path / "a"), category_list=str(categories), seed=7)
    for task in seven.requires()["categories"]:
        assert isinstance(task, FetchCategory) and task.seed == 7 and task.data_dir == str(tmp_path / "a")
    # Tuning knobs stay out of the UI; the meaningful settings are shown.
    shown = seven.requires()["categories"][0].to_str_params(only_significant=True, only_public=True)
    assert {"data_dir", "category_list", "seed", "sample_size", "per_category", "wnid", "label"} <= set(shown)
    assert "max_connections" not in shown and "read_timeout" not in shown
    assert luigi.task.flatten(seven.requires())  # built without touching data_dir
    assert not (tmp_path / "a").exists()


def test_1_concurrent_runs_with_different_data_dirs_on_one_luigid(tmp_path, demo_world, demo_server, luigid):
    configs = [
        write_demo_config(tmp_path / name, demo_world, demo_server)
        for name in ("one", "two")
        if (tmp_path / name).mkdir() is None
    ]
    # Identical command lines (no --no-lock): only LUIGI_CONFIG_PATH, and so data_dir, differ.
    command = [sys.executable, "-m", "luigi", "--module", "pipeline", "FetchFives"]
    command += ["--scheduler-host", "127.0.0.1", "--scheduler-port", str(luigid.port)]
    processes = [
        subprocess.Popen(
            command,
            cwd=REPO,
            env=pipeline_env(config, demo_server),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for config in configs
    ]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [p.returncode for p in processes] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    first, second = (manifest_rows(tmp_path / name / "data") for name in ("one", "two"))
    assert first and first == second
    # luigid shows each run's tasks with their meaningful settings, tuning knobs hidden.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    query = urllib.parse.urlencode({"data": json.dumps({"status": "DONE", "search": "DownloadUrlTarball"})})
    with opener.open(f"{luigid.url}/api/task_list?{query}", timeout=10) as answer:
        listed = json.load(answer)["response"].values()
    shown = {task["params"]["data_dir"]: task["params"] for task in listed}
    for name in ("one", "two"):
        params = shown[str(tmp_path / name / "data")]
        assert "mirrors" not in params and "timeout" not in params


def test_2_from_another_folder_the_package_defaults_hold(tmp_path, demo_world, demo_server):
    """No luigi.cfg in the folder, and LUIGI_CONFIG_PATH names a file without [retcode]."""
    categories = tmp_path / "cats.csv"
    categories.write_text("wnid,label\nn09999999,unicorn\n", encoding="utf-8")
    config = write_demo_config(
        tmp_path, demo_world, demo_server, ParseSynsets={"categories": str(categories)}
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "luigi", "--module", "pipeline", "FetchFives", "--local-scheduler"],
        cwd=elsewhere,
        env=pipeline_env(config, demo_server),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == RETCODE_TASK_FAILED, output_of(result)[-3000:]
    assert "unknown to words.txt: n09999999" in output_of(result)
    assert "workers=8" in output_of(result)  # [core] workers from the package's defaults
    assert not (elsewhere / "data").exists()  # data_dir came from the user's file


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--FetchFives-per-category", "0"], "--FetchFives-per-category"),
        (["--FetchFives-per-category", "-2"], "--FetchFives-per-category"),
        (["--SampleUrls-per-category", "0"], "--SampleUrls-per-category"),
        (["--SampleUrls-per-category", "3"], "--SampleUrls-per-category"),
        (["--SampleUrls-seed", "seven"], "--SampleUrls-seed"),
        (["--ParseSynsets-categories", "/nonexistent/cats.csv"], "--ParseSynsets-categories"),
        # Found by attack: luigi takes an empty flag for an absent one (det200, ./data).
        (["--ParseSynsets-categories", ""], "--ParseSynsets-categories (on the command line) is empty"),
        (["--paths-data-dir", ""], "--paths-data-dir (on the command line) is empty"),
    ],
)
def test_3_bad_numbers_fail_before_anything_runs_naming_the_flag(
    tmp_path, demo_world, demo_server, luigid, flags, named
):
    config = write_demo_config(tmp_path, demo_world, demo_server)
    demo_server.clear_log()
    result = run_luigi(config, demo_server, *flags, scheduler=luigid, timeout=120)
    assert result.returncode != 0
    assert named in output_of(result), output_of(result)[-3000:]
    assert demo_server.requests == []  # not even the tarball
    assert not (tmp_path / "data").exists()


def test_3_bad_per_category_leaves_an_existing_data_dir_untouched(seeded_data, demo_server, luigid):
    folder, config, *_ = seeded_data
    before = {p: p.stat().st_mtime_ns for p in (folder / "data").rglob("*")}
    result = run_luigi(config, demo_server, "--FetchFives-per-category", "0", scheduler=luigid)
    assert result.returncode != 0
    assert {p: p.stat().st_mtime_ns for p in (folder / "data").rglob("*")} == before


def test_4_unknown_wnid_on_a_data_dir_with_a_sample_downloads_nothing(
    seeded_data, tmp_path, demo_world, demo_server, luigid
):
    folder, _config, *_ = seeded_data
    edited = tmp_path / "edited.csv"
    edited.write_text((demo_world / "categories.csv").read_text() + "n09999999,unicorn\n", encoding="utf-8")
    config = write_demo_config(folder, demo_world, demo_server, ParseSynsets={"categories": str(edited)})
    results = {p: p.stat().st_mtime_ns for p in (folder / "data" / "fetch").rglob("*")}
    demo_server.clear_log()
    bad = run_luigi(config, demo_server, "--FetchFives-per-category", "4", scheduler=luigid)
    assert bad.returncode != 0
    assert "unknown to words.txt: n09999999" in output_of(bad)
    assert image_requests(demo_server) == []
    assert not (folder / "data" / "fetch" / "seed0-n100-k4").exists()  # no category task ran
    assert {p: p.stat().st_mtime_ns for p in (folder / "data" / "fetch").rglob("*")} == results


def test_4_an_edited_list_is_sampled_again(tmp_path, demo_world, demo_server):
    rows = (demo_world / "categories.csv").read_text(encoding="utf-8").splitlines()
    fewer = tmp_path / "cats.csv"
    fewer.write_text("\n".join(rows[:-1]) + "\n", encoding="utf-8")
    config = write_demo_config(tmp_path, demo_world, demo_server, ParseSynsets={"categories": str(fewer)})
    assert run_luigi(config, demo_server).returncode == 0
    fewer.write_text("\n".join(rows) + "\n", encoding="utf-8")  # the same file, one category more
    again = run_luigi(config, demo_server)
    assert again.returncode == 0, output_of(again)[-3000:]
    added = rows[-1].split(",")[0]
    assert added in {row["wnid"] for row in manifest_rows(tmp_path / "data")}
    samples = sorted((tmp_path / "data" / "sample").glob("seed0-n100-*.csv"))
    assert len(samples) == 2 and any(added in path.read_text() for path in samples)


@pytest.mark.parametrize(
    "section",
    [
        {"DownloadUrlTarball": {"mirrors": "not json"}},
        {"DownloadUrlTarball": {"mirrors": "[]"}},
        {"DownloadUrlTarball": {"timeout": "abc"}},
        {"FetchCategory": {"read_timeout": "soon"}},
    ],
)
def test_5_a_typo_in_an_upstream_setting_fails_at_once_through_luigid(
    tmp_path, demo_world, demo_server, luigid, section
):
    config = write_demo_config(tmp_path, demo_world, demo_server, **section)
    ((name, values),) = section.items()
    (option,) = values
    result = run_luigi(config, demo_server, scheduler=luigid, timeout=120)  # a hang fails here
    assert result.returncode != 0
    # Named as set: in the file LUIGI_CONFIG_PATH names (tests/test_errors.py: the other places).
    said = f"[{name}] {option} (in {config}, the file LUIGI_CONFIG_PATH names)"
    assert said in output_of(result), output_of(result)[-3000:]
    assert not (tmp_path / "data").exists()


def test_5_an_unschedulable_dependency_does_not_keep_the_worker_waiting(tmp_path, demo_world, luigid):
    """A task whose requires() fails at scheduling time: the run stops instead of waiting."""
    script = tmp_path / "broken.py"
    script.write_text(
        "import sys, luigi, tasks\n"
        "from tasks.task import SamplerTask\n"
        "class Broken(SamplerTask):\n"
        "    def requires(self):\n"
        "        if getattr(self, 'built', False):\n"
        "            raise RuntimeError('cannot build my dependencies')\n"
        "        self.built = True\n"
        "        return []\n"
        "    def output(self):\n"
        "        return luigi.LocalTarget(self.path('broken'))\n"
        "    def run(self):\n"
        "        self.output().open('w').close()\n"
        "class Top(SamplerTask):\n"
        "    def requires(self):\n"
        "        return Broken(data_dir=self.data_dir)\n"
        "    def output(self):\n"
        "        return luigi.LocalTarget(self.path('top'))\n"
        "    def run(self):\n"
        "        self.output().open('w').close()\n"
        "from luigi.cmdline import luigi_run\n"
        "luigi_run(sys.argv[1:])\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            "Top",
            "--data-dir",
            str(tmp_path / "data"),
            "--no-lock",
            "--scheduler-host",
            "127.0.0.1",
            "--scheduler-port",
            str(luigid.port),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 35, output_of(result)[-3000:]  # [retcode] scheduling_error
    assert "cannot schedule" in output_of(result)


def test_6_a_rerun_right_after_a_failure_runs(tmp_path, demo_world, demo_server, luigid):
    categories = tmp_path / "cats.csv"
    good = (demo_world / "categories.csv").read_text(encoding="utf-8")
    categories.write_text(good + "n09999999,unicorn\n", encoding="utf-8")
    config = write_demo_config(
        tmp_path, demo_world, demo_server, ParseSynsets={"categories": str(categories)}
    )
    failed = run_luigi(config, demo_server, scheduler=luigid)
    assert failed.returncode == RETCODE_TASK_FAILED, output_of(failed)[-3000:]
    # A failure disables ParseSynsets in luigid; the same command again, at once, still runs it.
    again = run_luigi(config, demo_server, scheduler=luigid, timeout=120)
    assert again.returncode == RETCODE_TASK_FAILED, output_of(again)[-3000:]
    assert "not granted run permission" not in output_of(again)
    assert "unknown to words.txt: n09999999" in output_of(again)


def test_7_two_local_scheduler_runs_on_one_data_dir(tmp_path, demo_world, demo_server):
    config = write_demo_config(tmp_path, demo_world, demo_server)
    command = [
        sys.executable,
        "-m",
        "luigi",
        "--module",
        "pipeline",
        "FetchFives",
        "--local-scheduler",
        "--workers",
        "2",
    ]
    processes = [
        subprocess.Popen(
            command,
            cwd=REPO,
            env=pipeline_env(config, demo_server),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [p.returncode for p in processes] == [0, 0], "\n".join(o[-2500:] for o in outputs)
    for output in outputs:
        assert "Traceback" not in output, output[-3000:]
    data = tmp_path / "data"
    rows = manifest_rows(data)
    assert rows and sorted(os.listdir(data / "images")) == sorted(row["file"] for row in rows)
    assert [p for p in data.rglob("*") if ".tmp-" in p.name or p.name.endswith(".part")] == []


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rpartition(")")[2].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_7_a_signal_stops_the_whole_run_and_leaves_nothing_half_written(tmp_path, demo_world, signum):
    from demo.server import DemoServer

    with DemoServer(demo_world, latency=(0.3, 0.5)) as server:
        config = write_demo_config(tmp_path, demo_world, server)
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "luigi",
                "--module",
                "pipeline",
                "FetchFives",
                "--no-lock",
                "--local-scheduler",
                "--workers",
                "3",
            ],
            cwd=REPO,
            env=pipeline_env(config, server),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            workers: set[int] = set()
            while time.monotonic() < deadline and not list((tmp_path / "data").rglob("*.journal.csv")):
                time.sleep(0.1)
            workers = children_of(process.pid)
            assert workers, "no worker process was seen running a category"
            process.send_signal(signum)
            process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert process.returncode != 0
        # Every worker process is gone with it (none left running on, orphaned).
        deadline = time.monotonic() + 10
        while any(process_runs(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in workers if process_runs(pid)] == []
    data = tmp_path / "data"
    assert [p for p in data.rglob("*") if ".tmp-" in p.name] == []
    assert not (data / "manifest.csv").exists()


def test_8_logs_are_info_and_free_of_spurious_warnings(seeded_data):
    _folder, _config, _seven, _manifest, zero = seeded_data
    log = output_of(zero)
    assert " DEBUG: " not in log and "DEBUG:" not in log
    assert "UnconsumedParameterWarning" not in log and "not consumed" not in log
    assert len(log.splitlines()) < 150, len(log.splitlines())


def test_8_no_luigid_says_how_to_start_one(tmp_path, demo_world, demo_server):
    config = write_demo_config(tmp_path, demo_world, demo_server)
    nobody = Luigid.__new__(Luigid)
    nobody.port = free_port()
    result = run_luigi(config, demo_server, scheduler=nobody, timeout=120)
    assert result.returncode != 0
    hints = [line for line in output_of(result).splitlines() if "luigid --background" in line]
    assert len(hints) == 1 and "--local-scheduler" in hints[0], output_of(result)[-3000:]
    assert not (tmp_path / "data").exists()


def test_9_reports_follow_the_configuration_and_counts_agree(tmp_path, demo_world, demo_server, luigid):
    config = write_demo_config(tmp_path, demo_world, demo_server)
    data = tmp_path / "data"
    for per_category in ("5", "3"):
        result = run_luigi(
            config, demo_server, "--FetchFives-per-category", per_category, task="All", scheduler=luigid
        )
        assert result.returncode == 0, output_of(result)[-3000:]
        rows = manifest_rows(data)
        summary = json.loads((data / "fetch_summary.json").read_text())
        report = json.loads((data / "report" / "run_report.json").read_text())
        text = (data / "report" / "summary.txt").read_text()
        with (data / "attempts.csv").open(encoding="utf-8", newline="") as src:
            attempts = list(csv.DictReader(src))
        wanted = int(per_category) * len(summary["config"]["categories"])
        assert summary["kept"] == len(rows) == report["stages"]["kept"]
        assert re.search(rf"\b{len(rows)} of {wanted} images", text), text
        assert sum(summary["outcomes"].values()) == len(attempts)
        assert report["attempts"]["rows"] == len(attempts)
        assert report["attempts"]["outcomes"] == summary["outcomes"]
        assert f"{len(attempts):,} rows in attempts.csv" in text
        # Timings of this configuration's tasks only (the other's share report/timings.csv).
        timed = {t["family"]: t["tasks"] for t in report["timings"]["tasks"]}
        results = list((data / "fetch" / f"seed0-n100-k{per_category}").glob("round*/*.json"))
        assert 0 < timed["FetchCategory"] <= len(results)
        gallery = (data / "gallery" / "index.html").stat().st_mtime_ns
        assert gallery >= (data / "manifest.csv").stat().st_mtime_ns


def test_10_quickstart_names_its_data_dir_and_makes_the_reports(tmp_path):
    port = free_port()
    env = dict(os.environ, LUIGID_PORT=str(port), LUIGID_DIR=str(tmp_path / "luigid"))
    data_dir = tmp_path / "qs-data"
    try:
        result = subprocess.run(
            [str(REPO / "quickstart"), "All", "--paths-data-dir", str(data_dir), "--workers", "2"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        subprocess.run(
            [str(REPO / "scripts" / "luigid.sh"), "stop", str(port)], env=env, capture_output=True, timeout=60
        )
    assert result.returncode == 0, output_of(result)[-3000:]
    closing = result.stdout.strip().splitlines()[-4:]
    assert any(str(data_dir) in line for line in closing), closing
    assert "data-demo" not in "\n".join(closing)
    assert (data_dir / "gallery" / "index.html").is_file() and (data_dir / "report" / "summary.txt").is_file()


def test_2_the_folder_config_copies_of_luigids_settings_match_the_package_defaults():
    """A plain `luigid` started in the project folder sees the same [scheduler]/[resources]."""
    import configparser

    package, folder = configparser.ConfigParser(), configparser.ConfigParser()
    package.read(REPO / "tasks" / "luigi.cfg")
    folder.read(REPO / "luigi.cfg")
    for section in ("scheduler", "resources"):
        for key, value in package[section].items():
            assert folder[section].get(key) == value, (section, key)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--ExportDataset-val-fraction", "1.0"], "--ExportDataset-val-fraction"),
        (["--ExportDataset-val-fraction", "-0.1"], "--ExportDataset-val-fraction"),
        (["--ExportDataset-resize", "1"], "--ExportDataset-resize"),
        (["--ExportDataset-formats", "[]"], "--ExportDataset-formats"),
        (["--ExportDataset-shard-max-bytes", "1"], "--ExportDataset-shard-max-bytes"),
        (["--ExportDataset-quality", "0"], "--ExportDataset-quality"),
        (["--ExportDataset-name", "../../escaped"], "--ExportDataset-name"),
    ],
)
def test_3_bad_export_settings_fail_before_any_download_naming_the_flag(
    tmp_path, demo_world, demo_server, luigid, flags, named
):
    """Found by attack: export settings were checked only when ExportDataset ran, after the
    whole pipeline had downloaded; a name with ``..`` wrote the export outside data_dir."""
    config = write_demo_config(tmp_path, demo_world, demo_server)
    demo_server.clear_log()
    result = run_luigi(config, demo_server, *flags, task="ExportDataset", scheduler=luigid, timeout=120)
    assert result.returncode != 0
    assert named in output_of(result), output_of(result)[-3000:]
    assert demo_server.requests == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test-luigi.cfg"]


def test_1_a_relabelled_list_gives_its_labels_to_the_manifest_and_files(tmp_path, demo_world, demo_server):
    """Found by attack: FetchCategory's result file is keyed on the wnid only, so a list that
    renames a category (same wnids, a label fixed) reused the old label's results: the
    manifest and images/ kept the old label while synsets/ had the new one."""
    rows = (demo_world / "categories.csv").read_text(encoding="utf-8").splitlines()
    wnid, _old = rows[1].split(",", 1)
    renamed = tmp_path / "renamed.csv"
    renamed.write_text("\n".join([rows[0], f"{wnid},squeezebox", *rows[2:]]) + "\n", encoding="utf-8")
    config = write_demo_config(tmp_path, demo_world, demo_server)
    assert run_luigi(config, demo_server).returncode == 0
    config = write_demo_config(tmp_path, demo_world, demo_server, ParseSynsets={"categories": str(renamed)})
    demo_server.clear_log()
    again = run_luigi(config, demo_server)
    assert again.returncode == 0, output_of(again)[-3000:]
    mine = [row for row in manifest_rows(tmp_path / "data") if row["wnid"] == wnid]
    assert mine and {row["label"] for row in mine} == {"squeezebox"}
    assert all(row["file"].endswith("_squeezebox.jpg") for row in mine)
    assert all((tmp_path / "data" / "images" / row["file"]).is_file() for row in mine)
    assert sorted(p.name for p in (tmp_path / "data" / "images").glob(f"{wnid}_*")) == sorted(
        row["file"] for row in mine
    )
    assert image_requests(demo_server) == []  # a label is no reason to download again


def test_3_label_folders_that_would_clash_fail_before_any_download(tmp_path, demo_world, demo_server, luigid):
    """Found by attack: with class_names=label, labels equal once file-safe ("hot dog",
    "Hot_Dog") failed only when ExportDataset ran, after every category was fetched."""
    rows = (demo_world / "categories.csv").read_text(encoding="utf-8").splitlines()
    (first, _), (second, _) = (row.split(",", 1) for row in rows[1:3])
    clashing = tmp_path / "clashing.csv"
    clashing.write_text("\n".join([rows[0], f"{first},hot dog", f"{second},Hot_Dog", *rows[3:]]) + "\n")
    config = write_demo_config(tmp_path, demo_world, demo_server, ParseSynsets={"categories": str(clashing)})
    demo_server.clear_log()
    result = run_luigi(
        config, demo_server, "--ExportDataset-class-names", "label", task="ExportDataset", scheduler=luigid
    )
    assert result.returncode != 0
    assert "--ExportDataset-class-names" in output_of(result) and "hot_dog" in output_of(result)
    assert demo_server.requests == []
    assert not (tmp_path / "data").exists()
