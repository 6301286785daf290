"""Attacks on the export (issue 15) with hand-made manifests: no pipeline run, real JPEGs."""

from __future__ import annotations

import csv
import hashlib
import io
import random
import tarfile
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image

from sampler.categories.words import Category
from sampler.export import ExportError, ExportSettings, export_dataset
from sampler.naming import image_filename

WNIDS = ["n01440764", "n02102040", "n02979186"]


def noise_jpeg(rng: random.Random, side: int) -> bytes:
    """A JPEG of noise: it barely compresses, so its size is known in advance (~side² bytes)."""
    image = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95)
    return out.getvalue()


def make_images(folder: Path, per_class: int, side: int, labels: list[str] | None = None):
    """images/ and manifest rows as FetchFives writes them, for ``per_class`` images a class."""
    rng = random.Random(1)
    labels = labels or [f"class {i}" for i in range(len(WNIDS))]
    categories = [Category(w, label) for w, label in zip(WNIDS, labels, strict=True)]
    images = folder / "images"
    images.mkdir(parents=True)
    rows = []
    for category in categories:
        for n in range(per_class):
            image_id = f"{category.wnid}_{n + 1}"
            data = noise_jpeg(rng, side)
            name = image_filename(image_id, category.label)
            (images / name).write_bytes(data)
            rows.append(
                {
                    "image_id": image_id,
                    "wnid": category.wnid,
                    "label": category.label,
                    "url": f"http://example.com/{image_id}.jpg",
                    "file": name,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "bytes": str(len(data)),
                }
            )
    return images, rows, categories


def test_the_export_holds_one_image_at_a_time_not_the_whole_dataset(tmp_path):
    """Found by attack: every image's bytes stayed in memory until the shards were written, so
    ilsvrc2012 at 50 a class (50,000 images, several GB) could not be exported on one machine."""
    images, rows, categories = make_images(tmp_path, per_class=10, side=300)
    total = sum(int(row["bytes"]) for row in rows)
    tracemalloc.start()
    try:
        export_dataset(tmp_path / "out", rows, images, categories, ExportSettings(), {})
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    largest = max(int(row["bytes"]) for row in rows)
    assert peak < total / 3, f"peak {peak:,} bytes for {total:,} bytes of images (largest {largest:,})"


def test_an_image_bigger_than_a_shard_gets_a_shard_of_its_own_and_loads(tmp_path):
    images, rows, categories = make_images(tmp_path, per_class=2, side=400)  # ~300 KB each
    settings = ExportSettings(shard_max_bytes=65536, val_fraction=0.0, formats=("webdataset",))
    summary = export_dataset(tmp_path / "out", rows, images, categories, settings, {})
    shards = summary["shards"]["train"]
    assert len(shards) == len(rows)
    seen = {}
    for shard in shards:
        with tarfile.open(tmp_path / "out" / shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".jpg"):
                    body = tar.extractfile(member).read()
                    seen[member.name[: -len(".jpg")]] = hashlib.sha256(body).hexdigest()
    assert seen == {row["image_id"]: row["sha256"] for row in rows}


def test_labels_that_clash_once_made_file_safe_are_refused_by_name(tmp_path):
    images, rows, categories = make_images(tmp_path, 1, 40, labels=["hot dog", "hot_dog", "Hot Dog"])
    with pytest.raises(ExportError, match="clash"):
        export_dataset(tmp_path / "out", rows, images, categories, ExportSettings(class_names="label"), {})
    assert not (tmp_path / "out").exists()
    # By wnid (the default) the same labels are no problem.
    export_dataset(tmp_path / "out", rows, images, categories, ExportSettings(), {})
    with (tmp_path / "out" / "classes.csv").open(encoding="utf-8", newline="") as src:
        assert [row["label"] for row in csv.DictReader(src)] == ["hot dog", "hot_dog", "Hot Dog"]


INTERLEAVED = r"""
import json, sys
import luigi, luigi.task
import pipeline  # noqa: F401 - registers the tasks and the package's config
from tasks.export_dataset import ExportDataset
from tasks.fetch_fives import FetchFives
from tasks.report import RunReport

data, family = sys.argv[1], sys.argv[2]
assert luigi.build([FetchFives(data_dir=data, seed=7)], local_scheduler=True, workers=1)
seven = open(f"{data}/manifest.csv", encoding="utf-8").read()
attempts = open(f"{data}/attempts.csv", encoding="utf-8").read().count("\n") - 1
# The worker of a seed-7 task has checked its dependency (done) and is about to run;
# meanwhile another command, seed 0 on the same data_dir, rewrites manifest.csv and images/.
task = {"ExportDataset": ExportDataset, "RunReport": RunReport}[family](data_dir=data, seed=7)
assert luigi.build([FetchFives(data_dir=data, seed=0)], local_scheduler=True, workers=1)
steps = task.run()
for deps in steps or ():  # what luigi's worker does with dynamic dependencies
    assert luigi.build(luigi.task.flatten(deps), local_scheduler=True, workers=1)
outputs = luigi.task.flatten(task.output())
print(json.dumps({"seven": seven, "attempts": attempts, "out": outputs[0].path}))
"""


def run_interleaved(tmp_path: Path, demo_world: Path, demo_server, family: str) -> tuple[dict, Path, int]:
    import json
    import subprocess
    import sys

    from tests.conftest import REPO, pipeline_env, write_demo_config

    config = write_demo_config(tmp_path, demo_world, demo_server)
    result = subprocess.run(
        [sys.executable, "-c", INTERLEAVED, str(tmp_path / "data"), family],
        cwd=REPO,
        env=pipeline_env(config, demo_server),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    seven = {row["image_id"]: row["sha256"] for row in csv.DictReader(io.StringIO(report["seven"]))}
    return seven, Path(report["out"]), report["attempts"]


def test_an_export_is_made_from_its_own_configuration_while_another_runs(tmp_path, demo_world, demo_server):
    """Found by attack: manifest.csv and images/ belong to whichever FetchFives ran last, and
    ExportDataset read them without a lock or a check, so a concurrent run with another seed
    on the same data_dir could slip its images into this export, labelled with this seed."""
    import json

    seven, out, _attempts = run_interleaved(tmp_path, demo_world, demo_server, "ExportDataset")
    with (out / "files.csv").open(encoding="utf-8", newline="") as src:
        exported = {row["image_id"]: row["source_sha256"] for row in csv.DictReader(src)}
    assert exported == seven
    assert json.loads((out / "export.json").read_text())["provenance"]["seed"] == 7


def test_a_run_report_describes_its_own_configuration_while_another_runs(tmp_path, demo_world, demo_server):
    """The same race for the reports: RunReport stamped seed 7's configuration on a report
    counted from seed 0's manifest."""
    import json

    seven, out, attempts = run_interleaved(tmp_path, demo_world, demo_server, "RunReport")
    report = json.loads(Path(out).read_text(encoding="utf-8"))
    assert report["config"]["fetch"].startswith("seed7-")
    assert report["stages"]["kept"] == len(seven)
    assert report["attempts"]["rows"] == attempts


def test_a_file_deleted_from_the_export_is_made_again_without_downloading(tmp_path, demo_world, demo_server):
    """Found by attack: complete() looked only at export.json, so an export missing a shard
    or an image (deleted by hand, a sync tool) stayed broken: the rerun did nothing."""
    from tests.conftest import run_luigi, write_demo_config

    config = write_demo_config(tmp_path, demo_world, demo_server)
    assert run_luigi(config, demo_server, task="ExportDataset").returncode == 0
    out = next((tmp_path / "data" / "export").iterdir())
    dated = {"README.md", "export.json"}  # they carry the day of the export

    def contents() -> dict:
        files = [p for p in out.rglob("*") if p.is_file() and p.name not in dated]
        return {p.relative_to(out): p.read_bytes() for p in files}

    before = contents()
    image = next(p for p in sorted(out.glob("train/*/*.jpg")))
    shard = next(p for p in sorted(out.glob("webdataset/*.tar")))
    image.unlink()
    shard.unlink()
    demo_server.clear_log()
    again = run_luigi(config, demo_server, task="ExportDataset")
    assert again.returncode == 0, again.stderr[-3000:]
    assert contents() == before
    assert [url for _m, url, _s in demo_server.requests if "/files/" not in url] == []
