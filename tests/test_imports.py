"""Where the heavy modules are imported: not by a luigi command that runs nothing, but once,
in the scheduling process, before it forks category tasks (so they do not each import them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = (
    "numpy",
    "pyarrow",
    "PIL",
    "PIL.Image",
    "sampler.index.read",
    "sampler.fetch.category_round",
)


def loaded_after(code: str, cwd: Path) -> dict[str, bool]:
    """Run ``code`` in a fresh interpreter; which of HEAVY are in sys.modules afterwards."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, check=True, timeout=120
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_loading_the_pipeline_imports_no_heavy_module(tmp_path: Path) -> None:
    # What `luigi --module pipeline FetchFives --help` and a no-op rerun load before they exit.
    loaded = loaded_after(f"import sys; sys.path.insert(0, {str(REPO)!r}); import pipeline", tmp_path)
    assert not any(loaded.values()), loaded


def test_a_complete_pipeline_is_checked_without_heavy_modules(tmp_path: Path) -> None:
    # FetchFives complete: luigi asks it, and nothing below it.
    code = f"""
import sys; sys.path.insert(0, {str(REPO)!r})
import json, pipeline
from pathlib import Path
fives = pipeline.FetchFives()
folder = fives.run_folder()
folder.mkdir(parents=True)
(folder / "manifest.csv").write_text("image_id,url\\n")
(folder / "attempts.csv").write_text("wnid,image_id,url,outcome\\n")
(folder / "fetch_summary.json").write_text(json.dumps({{"kept": 0}}))
assert fives.complete()
"""
    loaded = loaded_after(code, tmp_path)
    assert not any(loaded.values()), loaded


def test_scheduling_a_category_imports_the_fetch_stack_before_any_fork(tmp_path: Path) -> None:
    # Scheduling only (Worker.add, no run): no task process exists yet, so whatever is
    # loaded now is what every forked category task inherits.
    code = f"""
import sys; sys.path.insert(0, {str(REPO)!r})
import luigi.scheduler, luigi.worker, pipeline
with luigi.worker.Worker(scheduler=luigi.scheduler.Scheduler(), worker_processes=4) as worker:
    assert worker.add(pipeline.FetchCategory(wnid="n01440764", label="tench"))
"""
    loaded = loaded_after(code, tmp_path)
    assert all(loaded.values()), loaded
