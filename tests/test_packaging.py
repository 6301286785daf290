"""What a user installs: the wheel holds the product, its shipped configuration and templates,
and nothing of the demo world."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_config_and_templates_and_no_demo(tmp_path):
    # pip builds in the source tree: build a copy, so the checkout gains no build/ folder.
    source = tmp_path / "source"
    skip = shutil.ignore_patterns(
        ".git", ".venv", ".demo", ".luigid", "data*", "build", "bench-data", "*.egg-info"
    )
    shutil.copytree(ROOT, source, symlinks=True, ignore=skip)
    # Without build isolation: no download, the setuptools of the test environment.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path), str(source)],
        check=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("imagenet_sampler-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {name.split("/")[0] for name in names if "/" in name and ".dist-info" not in name}
    assert packages == {"sampler", "tasks", "pipeline"}
    shipped_config = {p.relative_to(ROOT / "config").as_posix() for p in (ROOT / "config").rglob("*.csv")}
    assert {f"sampler/config/{name}" for name in shipped_config} <= names
    assert "sampler/config/det200.csv" in names and "tasks/luigi.cfg" in names
    templates = {p.name for p in (ROOT / "sampler" / "report" / "templates").iterdir()}
    assert templates and {f"sampler/report/templates/{name}" for name in templates} <= names
