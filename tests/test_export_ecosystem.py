"""The export as the ML ecosystem loads it: Hugging Face `datasets` and `huggingface_hub`,
MLCommons `mlcroissant`, and Imagenette-style sizes from one fetch.

One `luigi --module pipeline ExportDataset --ExportDataset-sizes '[0, 160, 64]'` against a
demo world of the ten Imagenette classes; then each library reads the exports in a
subprocess of its own, offline, with its caches under the test's folder (as a user's
fresh machine would, and so that no library's import-time settings leak between tests).
The libraries are the export-test extra (setup.cfg); without them these tests fail, saying so.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from demo.world import build_demo_world, url_key
from sampler.categories.sets import PRESETS
from sampler.categories.words import Category
from sampler.export import ExportSettings, export_dataset, missing_files
from sampler.fetch.gather import read_manifest
from tests.conftest import REPO, run_luigi, write_demo_config
from tests.test_export_attack import make_images

SIZES = (0, 160, 64)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as src:
        return list(csv.DictReader(src))


def run_python(code: str, cwd: Path, home: Path) -> dict:
    """``code`` in a fresh interpreter, offline, with every cache under ``home``; it prints
    one JSON object last, which this returns."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "HF_HOME": str(home / "hf"),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "CROISSANT_CACHE": str(home / "croissant"),
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0 and "ModuleNotFoundError" in result.stderr:
        pytest.fail(
            f"{result.stderr.strip().splitlines()[-1]}: install the export-test extra: "
            "pip install -e '.[export-test]'"
        )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sized_run(tmp_path_factory):
    from demo.server import DemoServer

    world = build_demo_world(tmp_path_factory.mktemp("world"), categories_csv=PRESETS["imagenette"])
    with DemoServer(world) as server:
        folder = tmp_path_factory.mktemp("export")
        config = write_demo_config(folder, world, server, ParseSynsets={"categories": "imagenette"})
        sizes = json.dumps(list(SIZES))
        result = run_luigi(
            config, server, "--workers", "2", "--ExportDataset-sizes", sizes, task="ExportDataset"
        )
        assert result.returncode == 0, result.stderr[-4000:]
        data = folder / "data"
        answered = Counter(url_key(url) for _method, url, status in server.requests if status == 200)
        hits = {row["url"]: answered[url_key(row["url"])] for row in read_manifest(data / "manifest.csv")}
        before = {p: p.stat().st_mtime_ns for p in (data / "export").rglob("*")}
        again = run_luigi(config, server, "--ExportDataset-sizes", sizes, task="ExportDataset")
        assert again.returncode == 0, again.stderr[-4000:]
        unchanged = before == {p: p.stat().st_mtime_ns for p in (data / "export").rglob("*")}
        yield data, hits, unchanged


def test_sizes_make_full_and_resized_exports_from_one_fetch(sized_run):
    data, hits, unchanged = sized_run
    exports = data / "export"
    names = ["imagenette", "imagenette-160px", "imagenette-64px"]
    assert sorted(p.name for p in exports.iterdir()) == names
    assert set(hits.values()) == {1}  # every kept image downloaded once (200 once), for all three sizes
    assert unchanged  # the same command again does nothing
    manifest = {row["file"]: row for row in read_manifest(data / "manifest.csv")}
    splits = [{r["image_id"]: r["split"] for r in read_csv(exports / name / "files.csv")} for name in names]
    assert splits[0] == splits[1] == splits[2] and len(splits[0]) == len(manifest)  # same images, split
    for size in SIZES[1:]:
        out = exports / f"imagenette-{size}px"
        smaller = 0
        for path in out.glob("*/*/*.jpg"):
            row = manifest[path.name]
            with Image.open(path) as image:
                if min(int(row["width"]), int(row["height"])) <= size:
                    assert image.size == (int(row["width"]), int(row["height"]))  # never upscaled
                    smaller += 1
                else:
                    assert min(image.size) == size
        card = (out / "README.md").read_text(encoding="utf-8")
        assert f"shorter side {size} px" in card and "never upscaled" in card
        assert json.loads((out / "export.json").read_text())["settings"]["resize"] == size
    assert smaller > 0  # the demo world has images under 64 px on a side: the rule was exercised


def test_the_new_metadata_holds_no_path_and_no_date_so_the_bytes_stay_the_same(sized_run):
    data, _hits, _unchanged = sized_run
    for out in (data / "export").iterdir():
        header = (out / "README.md").read_text(encoding="utf-8").split("\n---\n")[0]
        for text in (
            [header]
            + [p.read_text(encoding="utf-8") for p in out.glob("*/metadata.csv")]
            + [(out / "croissant.json").read_text(encoding="utf-8")]
        ):
            assert str(data) not in text and str(Path.home()) not in text
            assert not re.search(r"20\d\d-\d\d-\d\d", text)


def test_datasets_loads_the_export_with_human_readable_class_names_and_counts(sized_run, tmp_path):
    data, _hits, _unchanged = sized_run
    out = data / "export" / "imagenette-64px"
    found = run_python(
        """
        import json
        from datasets import load_dataset
        hf = load_dataset("data/export/imagenette-64px")
        print(json.dumps({
            "splits": {name: split.num_rows for name, split in hf.items()},
            "names": hf["train"].features["label"].names,
            "rows": [
                {"split": name, "label": row["label"], "wnid": row["wnid"], "image_id": row["image_id"],
                 "url": row["url"], "size": list(row["image"].size)}
                for name, split in hf.items() for row in split
            ],
        }))
        """,
        cwd=data.parent,
        home=tmp_path,
    )
    classes = read_csv(out / "classes.csv")
    files = {row["image_id"]: row for row in read_csv(out / "files.csv")}
    assert found["names"] == [row["label"] for row in classes]  # "tench", not n01440764
    assert found["names"][0] == "tench"
    counts = Counter(row["split"] for row in files.values())
    assert found["splits"] == {"train": counts["train"], "validation": counts["val"]}
    assert sorted(row["image_id"] for row in found["rows"]) == sorted(files)
    for row in found["rows"]:
        listed = files[row["image_id"]]
        assert row["label"] == int(listed["class_index"])  # classes.csv's index, whatever the folders
        assert row["wnid"] == listed["wnid"] and row["url"] == listed["url"]
        assert {"train": "train", "validation": "val"}[row["split"]] == listed["split"]
        assert row["size"] == [int(listed["width"]), int(listed["height"])]


def test_the_card_passes_huggingface_hubs_loader_with_the_hubs_metadata(sized_run, tmp_path):
    data, _hits, _unchanged = sized_run
    out = data / "export" / "imagenette"
    found = run_python(
        """
        import json
        from huggingface_hub import DatasetCard
        card = DatasetCard.load("data/export/imagenette/README.md")
        print(json.dumps({"data": card.data.to_dict(), "text": card.text}))
        """,
        cwd=data.parent,
        home=tmp_path,
    )
    meta = found["data"]
    assert meta["license"] == "other" and meta["license_name"]
    assert meta["task_categories"] == ["image-classification"]
    assert meta["size_categories"] == ["n<1K"]
    (config,) = meta["configs"]
    assert config["config_name"] == "default"
    assert config["data_files"] == [
        {"split": "train", "path": "train/**"},
        {"split": "validation", "path": "val/**"},
    ]
    names = meta["dataset_info"]["features"][1]["dtype"]["class_label"]["names"]
    assert list(names.values()) == [row["label"] for row in read_csv(out / "classes.csv")]
    assert "belongs to its owner" in found["text"] and "ImageNet's terms of access" in found["text"]


def croissant_records(data: Path, export: str, home: Path) -> dict:
    return run_python(
        f"""
        import json
        import mlcroissant as mlc
        dataset = mlc.Dataset(jsonld="data/export/{export}/croissant.json")
        records = []
        for record in dataset.records("images"):
            text = {{k.split("/")[1]: v.decode() if isinstance(v, bytes) else v
                    for k, v in record.items() if k != "images/image"}}
            text["image_size"] = list(record["images/image"].size)
            records.append(text)
        print(json.dumps({{
            "warnings": sorted(dataset.metadata.ctx.issues.warnings),
            "records": records,
            "splits": [{{k: v.decode() if isinstance(v, bytes) else v for k, v in r.items()}}
                       for r in dataset.records("splits")],
        }}))
        """,
        cwd=data.parent,
        home=home,
    )


def check_croissant(out: Path, found: dict) -> None:
    # Only the missing publication date is warned about: it is left out so that the same
    # sample gives the same bytes.
    assert all("datePublished" in warning for warning in found["warnings"]), found["warnings"]
    metadata = json.loads((out / "croissant.json").read_text(encoding="utf-8"))
    for item in metadata["distribution"]:
        if item["@type"] == "cr:FileObject":
            assert item["sha256"] == hashlib.sha256((out / item["contentUrl"]).read_bytes()).hexdigest()
    assert {r["splits/name"] for r in found["splits"]} == {"train", "val"}
    classes = {row["wnid"]: row for row in read_csv(out / "classes.csv")}
    files = {row["image_id"]: row for row in read_csv(out / "files.csv")}
    assert sorted(r["image_id"] for r in found["records"]) == sorted(files)
    for record in found["records"]:
        listed = files[record["image_id"]]
        assert record["label"] == int(classes[listed["wnid"]]["index"])
        assert record["label_name"] == classes[listed["wnid"]]["label"]
        assert (record["url"], record["sha256"], record["split"]) == (
            listed["url"],
            listed["sha256"],
            listed["split"],
        )
        assert record["image_size"] == [int(listed["width"]), int(listed["height"])]


def test_croissant_validates_and_reads_back_every_record_with_its_label(sized_run, tmp_path):
    data, _hits, _unchanged = sized_run
    check_croissant(
        data / "export" / "imagenette-160px", croissant_records(data, "imagenette-160px", tmp_path)
    )


def test_shards_alone_load_in_croissant_and_datasets_with_class_names(sized_run, tmp_path):
    data, _hits, _unchanged = sized_run
    rows = read_manifest(data / "manifest.csv")
    classes = read_csv(data / "export" / "imagenette" / "classes.csv")
    categories = [Category(row["wnid"], row["label"]) for row in classes]
    out = data / "export" / "shards-only"
    settings = ExportSettings(formats=("webdataset",), shard_max_bytes=65536)
    export_dataset(out, rows, data / "images", categories, settings, {"category_set": "imagenette"})
    try:
        assert not list(out.glob("*/metadata.csv"))
        check_croissant(out, croissant_records(data, "shards-only", tmp_path))
        # datasets reads the shards alone with its webdataset builder, the class named too.
        found = run_python(
            """
            import json
            from datasets import load_dataset
            hf = load_dataset("data/export/shards-only")
            print(json.dumps({
                "names": hf["train"].features["cls"].names,
                "rows": [[row["__key__"], row["cls"], row["json"]["wnid"]] for row in hf["validation"]],
            }))
            """,
            cwd=data.parent,
            home=tmp_path,
        )
        assert found["names"] == [row["label"] for row in classes]
        index = {row["wnid"]: int(row["index"]) for row in classes}
        val = {r["image_id"] for r in read_csv(out / "files.csv") if r["split"] == "val"}
        assert sorted(key for key, _cls, _wnid in found["rows"]) == sorted(val)
        assert all(cls == index[wnid] for _key, cls, wnid in found["rows"])
    finally:
        shutil.rmtree(out)  # the module's data_dir holds the pipeline's exports only


def readme_loaders_example() -> str:
    """The README's loading example, as a user copies it."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    (example,) = [
        block
        for block in re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
        if "load_dataset(" in block and "mlcroissant" in block
    ]
    return example


def test_the_readmes_loading_example_runs_with_each_library(sized_run, tmp_path):
    data, _hits, _unchanged = sized_run
    found = run_python(
        readme_loaders_example()
        + textwrap.dedent(
            """
            import json
            print(json.dumps({
                "torchvision": [len(train), sorted(train.class_to_idx)[:1]],
                "webdataset": int(next(iter(shards))[1]),
                "datasets": names[:1],
                "mlcroissant": first["images/url"].decode(),
            }))
            """
        ),
        cwd=data.parent,
        home=tmp_path,
    )
    files = read_csv(data / "export" / "imagenette" / "files.csv")
    assert found["torchvision"] == [sum(r["split"] == "train" for r in files), ["n01440764"]]
    assert 0 <= found["webdataset"] < 10
    assert found["datasets"] == ["tench"]
    assert found["mlcroissant"] in {r["url"] for r in files}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--ExportDataset-sizes", "[0, 320, 320]"], "lists a size twice"),
        (
            ["--ExportDataset-sizes", "[0, 8]"],
            "each size must be 0 (the originals) or a shorter side of 32..",
        ),
        (["--ExportDataset-sizes", "[320]", "--ExportDataset-resize", "160"], "give the sizes alone"),
    ],
)
def test_bad_sizes_are_refused_by_name_before_any_work(tmp_path, args, needle):
    from demo.server import DemoServer

    world = build_demo_world(tmp_path / "world", categories_csv=PRESETS["imagenette"])
    with DemoServer(world) as server:
        config = write_demo_config(tmp_path, world, server, ParseSynsets={"categories": "imagenette"})
        result = run_luigi(config, server, *args, task="ExportDataset")
        assert server.requests == []  # nothing fetched
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "--ExportDataset-sizes" in output and needle in output
    assert not (tmp_path / "data" / "export").exists()


def test_two_classes_with_one_label_get_unique_names_in_datasets(tmp_path):
    """words.txt has two "crane"s (the bird, the machine): a ClassLabel refuses a name twice."""
    images, rows, categories = make_images(tmp_path, per_class=3, side=64, labels=["crane", "crane", "radio"])
    out = tmp_path / "data" / "export" / "cranes"
    export_dataset(out, rows, images, categories, ExportSettings(), {"category_set": "cranes"})
    found = run_python(
        """
        import json
        from datasets import load_dataset
        hf = load_dataset("data/export/cranes")
        print(json.dumps({"names": hf["train"].features["label"].names,
                          "labels": sorted({row["label"] for row in hf["train"]})}))
        """,
        cwd=tmp_path,
        home=tmp_path,
    )
    first, second = (c.wnid for c in categories[:2])
    assert found["names"] == [f"crane ({first})", f"crane ({second})", "radio"]
    assert found["labels"] == [0, 1, 2]


HOSTILE_LABELS = [
    '{a: b} #, "q" \U0001f41c *x &y !z \\U0001f41c | ok',
    "x: y 'z' \u00e9 \u4e2d \U0001d538 [1] %",
    "yes",
]


@pytest.mark.parametrize("formats", [("imagefolder", "webdataset"), ("webdataset",)])
def test_hostile_labels_read_back_whole_from_the_card_datasets_and_croissant(tmp_path, formats):
    """Labels YAML reads as something else (`yes`, `{a: b}`, `#`, quotes) and characters past
    U+FFFF (an emoji, a math letter), from a category list given as a CSV path: the card's
    ClassLabel names (huggingface_hub, datasets) and Croissant's records say them exactly,
    Croissant logs no per-image warning, and no absolute path is published."""
    images, rows, categories = make_images(tmp_path, per_class=3, side=64, labels=HOSTILE_LABELS)
    out = tmp_path / "data" / "export" / "hostile"
    csv_list = str(tmp_path / "lists" / "my-list.csv")  # as ExportDataset passes a CSV list
    export_dataset(out, rows, images, categories, ExportSettings(formats=formats), {"category_set": csv_list})
    found = run_python(
        """
        import json, logging
        from huggingface_hub import DatasetCard
        from datasets import load_dataset
        import mlcroissant as mlc
        logged = []
        class Keep(logging.Handler):
            def emit(self, record):
                logged.append(record.getMessage())
        logging.getLogger().addHandler(Keep())
        card = DatasetCard.load("data/export/hostile/README.md").data.to_dict()
        feature = [f for f in card["dataset_info"]["features"] if f["name"] in ("label", "cls")][0]
        hf = load_dataset("data/export/hostile")
        names = hf["train"].features["label" if "label" in hf["train"].features else "cls"].names
        dataset = mlc.Dataset(jsonld="data/export/hostile/croissant.json")
        labels = sorted({r["images/label_name"].decode() for r in dataset.records("images")})
        # Code points: JSON would glue two broken halves of a character back together.
        points = lambda texts: [[ord(char) for char in text] for text in texts]
        print(json.dumps({"card": points(feature["dtype"]["class_label"]["names"].values()),
                          "hf": points(names), "croissant": points(labels),
                          "pretty_name": card["pretty_name"],
                          "logged": [m for m in logged if "Could not match" in m]}))
        """,
        cwd=tmp_path,
        home=tmp_path,
    )
    def points(texts: list[str]) -> list[list[int]]:
        return [[ord(char) for char in text] for text in texts]

    assert found["card"] == found["hf"] == points(HOSTILE_LABELS)
    assert found["croissant"] == points(sorted(HOSTILE_LABELS))
    assert found["logged"] == []
    assert found["pretty_name"] == "my-list sample (imagenet-sampler)"
    header, body = (out / "README.md").read_text(encoding="utf-8").split("\n---\n", 1)
    table = body.split("## Classes", 1)[1].split("\n\n")[1].splitlines()
    assert all(len(re.split(r"(?<!\\)\|", row)) == 7 for row in table), table  # 5 cells each
    assert str(tmp_path) not in header and str(tmp_path) not in (out / "croissant.json").read_text()


def test_a_deleted_croissant_or_metadata_csv_makes_the_export_incomplete(tmp_path):
    images, rows, categories = make_images(tmp_path, per_class=3, side=64)
    out = tmp_path / "out"
    summary = export_dataset(out, rows, images, categories, ExportSettings(), {})
    assert missing_files(out, summary) == []
    (out / "croissant.json").unlink()
    (out / "train" / "metadata.csv").unlink()
    assert missing_files(out, summary) == ["croissant.json", "train/metadata.csv"]


def test_the_cards_loading_example_runs_in_the_export_folder(sized_run, tmp_path):
    data, _hits, _unchanged = sized_run
    out = data / "export" / "imagenette-64px"
    card = (out / "README.md").read_text(encoding="utf-8")
    (example,) = re.findall(r"```python\n(.*?)```", card, re.DOTALL)
    found = run_python(
        example
        + textwrap.dedent(
            """
            import json
            print(json.dumps({
                "torchvision": len(train),
                "webdataset": sum(1 for _ in shards),
                "datasets": hf["train"].features["label"].names,
                "mlcroissant": sum(1 for _ in records),
            }))
            """
        ),
        cwd=out,
        home=tmp_path,
    )
    files = read_csv(out / "files.csv")
    train = sum(r["split"] == "train" for r in files)
    assert (found["torchvision"], found["webdataset"], found["mlcroissant"]) == (train, train, len(files))
    assert found["datasets"] == [row["label"] for row in read_csv(out / "classes.csv")]


def test_every_loader_gives_a_class_one_number_with_label_folders(tmp_path):
    """Labels whose sorted order is not the class order (zebra, tench, radio for wnids in
    order): torchvision's ImageFolder (sorted folders), webdataset's .cls, Hugging Face
    datasets, mlcroissant and classes.csv give every image the same class number."""
    images, rows, categories = make_images(tmp_path, per_class=4, side=64, labels=["zebra", "tench", "radio"])
    out = tmp_path / "data" / "export" / "zoo"
    settings = ExportSettings(class_names="label")
    export_dataset(out, rows, images, categories, settings, {"category_set": "zoo"})
    found = run_python(
        """
        import glob, json, os
        import mlcroissant as mlc
        import webdataset as wds
        from datasets import load_dataset
        from torchvision.datasets import ImageFolder

        out = "data/export/zoo"
        image_id = lambda path: os.path.basename(path).rsplit("_", 1)[0]
        found = {"torchvision": {}, "webdataset": {}, "datasets": {}, "mlcroissant": {}}
        for split in ("train", "val"):
            folder = ImageFolder(f"{out}/{split}", allow_empty=True)
            found["torchvision"].update({image_id(path): index for path, index in folder.samples})
            shards = sorted(glob.glob(f"{out}/webdataset/{split}-*.tar"))
            for key, cls in wds.WebDataset(shards, shardshuffle=False).to_tuple("__key__", "cls"):
                found["webdataset"][os.path.basename(key)] = int(cls)
        hf = load_dataset(os.path.abspath(out))
        for split in hf:
            found["datasets"].update({row["image_id"]: row["label"] for row in hf[split]})
        dataset = mlc.Dataset(jsonld=f"{out}/croissant.json")
        for record in dataset.records("images"):
            key = record["images/image_id"]
            key = key.decode() if isinstance(key, bytes) else key
            found["mlcroissant"][key] = int(record["images/label"])
        print(json.dumps(found))
        """,
        cwd=tmp_path,
        home=tmp_path,
    )
    classes = {row["wnid"]: int(row["index"]) for row in read_csv(out / "classes.csv")}
    assert [classes[c.wnid] for c in categories] == [0, 1, 2]  # sorted labels would give 2, 1, 0
    wanted = {row["image_id"]: classes[row["wnid"]] for row in rows}
    for loader, numbers in found.items():
        assert numbers == wanted, loader
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "`000_tench`" in card and "sorted folder name" in card
