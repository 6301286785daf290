"""ExportDataset: the sample as a dataset, loaded the way users load it.

`luigi --module pipeline ExportDataset --ParseSynsets-categories imagenette` against a demo
world of the ten Imagenette classes, then torchvision's ImageFolder and webdataset read it.
Both are the export-test extra (setup.cfg); without them these tests fail, saying so.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from demo.world import build_demo_world
from sampler.categories.sets import PRESETS, ilsvrc2012_order, parse_spec, read_preset
from sampler.export import ExportError, ExportSettings, export_dataset, split_counts
from sampler.fetch.gather import read_manifest
from sampler.naming import safe_label
from tests.conftest import REPO, pipeline_env, run_luigi, shared_file, write_demo_config

PER_CATEGORY = 5


def loader(module: str):  # -> a module
    """torchvision / webdataset, or a failure that says how to get them (never a skip)."""
    try:
        return importlib.import_module(module)
    except Exception as error:  # ImportError, or a torch build that cannot load
        pytest.fail(
            f"{module} cannot be imported ({error}); "
            "install the export-test extra: pip install -e '.[export-test]'"
        )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as src:
        return list(csv.DictReader(src))


@pytest.fixture(scope="module")
def imagenette_world(tmp_path_factory):
    from demo.server import DemoServer

    world = build_demo_world(
        tmp_path_factory.mktemp("imagenette-world"), categories_csv=PRESETS["imagenette"]
    )
    with DemoServer(world) as server:
        yield world, server


@pytest.fixture(scope="module")
def export_run(tmp_path_factory, imagenette_world):
    world, server = imagenette_world
    folder = tmp_path_factory.mktemp("export")
    config = write_demo_config(folder, world, server, ParseSynsets={"categories": "imagenette"})
    result = run_luigi(config, server, "--workers", "2", task="ExportDataset")
    assert result.returncode == 0, result.stderr[-4000:]
    data = folder / "data"
    return data, data / "export" / "imagenette", config


def test_the_preset_runs_end_to_end_into_an_export(export_run):
    data, out, _config = export_run
    (table,) = (data / "synsets").glob("imagenette-*.csv")  # named <set>-<digest of its rows>
    selection = json.loads(table.with_suffix(".selection.json").read_text())
    assert selection["set"] == "imagenette" and selection["synsets"] == 10 and selection["without_urls"] == []
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "classes.csv",
        "croissant.json",
        "export.json",
        "files.csv",
        "train",
        "val",
        "webdataset",
    ]
    assert not list(data.rglob("*.tmp-*"))


def test_classes_follow_ilsvrc2012_order_with_words_txt_labels(export_run):
    _data, out, _config = export_run
    classes = read_csv(out / "classes.csv")
    ilsvrc = ilsvrc2012_order()
    preset = {c.wnid: c.label for c in read_preset(parse_spec("imagenette"))}
    assert [row["wnid"] for row in classes] == sorted(preset, key=ilsvrc.__getitem__)
    assert [int(row["index"]) for row in classes] == list(range(len(classes)))
    assert all(int(row["ilsvrc2012_index"]) == ilsvrc[row["wnid"]] for row in classes)
    assert all(row["label"] == preset[row["wnid"]] for row in classes)


def test_torchvision_imagefolder_loads_every_image_with_its_class_and_bytes(export_run):
    datasets = loader("torchvision.datasets")
    data, out, _config = export_run
    manifest = {row["file"]: row for row in read_manifest(data / "manifest.csv")}
    classes = {row["wnid"]: int(row["index"]) for row in read_csv(out / "classes.csv")}
    seen = []
    for split in ("train", "val"):
        dataset = datasets.ImageFolder(str(out / split))
        assert dataset.class_to_idx == classes  # wnid folders: ImageFolder's indexes are classes.csv's
        for path, target in dataset.samples:
            row = manifest[Path(path).name]
            assert target == classes[row["wnid"]]
            assert sha256(Path(path).read_bytes()) == row["sha256"]  # the originals, byte for byte
            seen.append(Path(path).name)
        image, target = dataset[0]
        assert image.size[0] > 0 and isinstance(target, int)
    assert sorted(seen) == sorted(manifest)


def test_the_split_is_stratified_per_class(export_run):
    data, out, _config = export_run
    per_class = Counter(row["wnid"] for row in read_manifest(data / "manifest.csv"))
    for wnid, n in per_class.items():
        val = len(list((out / "val" / wnid).iterdir()))
        train = len(list((out / "train" / wnid).iterdir()))
        assert (train, val) == (n - split_counts(n, 0.2), split_counts(n, 0.2))
    assert set(per_class.values()) >= {PER_CATEGORY}  # most classes are full: 4 train, 1 val


def test_webdataset_loads_every_sample_with_class_metadata_and_bytes(export_run):
    wds = loader("webdataset")
    data, out, _config = export_run
    manifest = {row["image_id"]: row for row in read_manifest(data / "manifest.csv")}
    classes = {row["wnid"]: row for row in read_csv(out / "classes.csv")}
    files = {row["image_id"]: row for row in read_csv(out / "files.csv")}
    summary = json.loads((out / "export.json").read_text())
    keys = []
    for split in ("train", "val"):
        shards = [str(out / name) for name in summary["shards"][split]]
        for sample in wds.WebDataset(shards, shardshuffle=False):
            key = sample["__key__"]
            meta = json.loads(sample["json"])
            row = manifest[key]
            assert meta["wnid"] == row["wnid"] and meta["url"] == row["url"]
            assert meta["label"] == classes[row["wnid"]]["label"]
            assert int(sample["cls"]) == int(classes[row["wnid"]]["index"]) == meta["class_index"]
            assert sha256(sample["jpg"]) == meta["sha256"] == row["sha256"]
            assert meta["split"] == split == files[key]["split"]
            keys.append(key)
    assert sorted(keys) == sorted(manifest)
    decoded = next(iter(wds.WebDataset(shards, shardshuffle=False).decode("pil").to_tuple("jpg", "cls")))
    assert decoded[0].size[0] > 0


def test_the_dataset_card_tells_classes_counts_split_provenance_and_ownership(export_run):
    data, out, _config = export_run
    card = (out / "README.md").read_text()
    manifest = read_manifest(data / "manifest.csv")
    assert f"10 classes, {len(manifest)} images" in card
    for row in read_csv(out / "classes.csv"):
        assert f"| {row['wnid']} | {row['label']} |" in card
    for needle in ("Stratified per class", "seed 0", "belongs to its owner", "owner's licence", "- date: 20"):
        assert needle in card
    summary = json.loads((out / "export.json").read_text())
    assert summary["provenance"]["category_set"] == "imagenette"
    assert summary["settings"]["val_fraction"] == 0.2


def test_rerun_does_nothing_and_a_changed_setting_redoes_the_export(export_run, imagenette_world):
    _data, out, config = export_run
    _world, server = imagenette_world
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = run_luigi(config, server, task="ExportDataset")
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    # Another split seed is another export, in the same folder.
    changed = run_luigi(config, server, "--ExportDataset-split-seed", "3", task="ExportDataset")
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert json.loads((out / "export.json").read_text())["settings"]["split_seed"] == 3


def test_resized_export_has_the_shorter_side_never_upscales_and_leaves_originals(
    export_run, imagenette_world
):
    data, _out, config = export_run
    _world, server = imagenette_world
    result = run_luigi(config, server, "--ExportDataset-resize", "64", task="ExportDataset")
    assert result.returncode == 0, result.stderr[-3000:]
    out = data / "export" / "imagenette-64px"
    manifest = {row["file"]: row for row in read_manifest(data / "manifest.csv")}
    resized = 0
    for path in out.glob("*/*/*.jpg"):
        row = manifest[path.name]
        original = (data / "images" / path.name).read_bytes()
        assert sha256(original) == row["sha256"]  # untouched
        with Image.open(path) as image:
            image.load()
            if min(int(row["width"]), int(row["height"])) <= 64:
                assert path.read_bytes() == original  # never upscaled, never re-encoded
            else:
                assert min(image.size) == 64
                ratio = int(row["width"]) / int(row["height"])
                assert abs(image.size[0] / image.size[1] - ratio) < 0.05
                resized += 1
    assert resized > 10
    files = read_csv(out / "files.csv")
    assert all(int(row["width"]) > 0 for row in files)
    assert "shorter side 64 px" in (out / "README.md").read_text()


@pytest.fixture()
def manifest_rows(export_run):
    data, _out, _config = export_run
    return data, read_manifest(data / "manifest.csv"), read_preset(parse_spec("imagenette"))


def test_same_inputs_and_settings_give_the_same_bytes(manifest_rows, tmp_path):
    data, rows, categories = manifest_rows
    settings = ExportSettings(split_seed=7)
    for name in ("a", "b"):
        export_dataset(tmp_path / name, rows, data / "images", categories, settings, {"seed": 0})
    a = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    b = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file()}
    assert a == b
    # Another seed, another split (of the same images).
    export_dataset(tmp_path / "c", rows, data / "images", categories, ExportSettings(split_seed=8), {})
    splits = {
        name: {r["image_id"]: r["split"] for r in read_csv(tmp_path / name / "files.csv")} for name in "ac"
    }
    assert splits["a"].keys() == splits["c"].keys() and splits["a"] != splits["c"]


def test_label_folders_and_small_shards_load_in_both_libraries(manifest_rows, tmp_path):
    datasets, wds = loader("torchvision.datasets"), loader("webdataset")
    data, rows, categories = manifest_rows
    settings = ExportSettings(class_names="label", shard_max_bytes=65536)
    summary = export_dataset(tmp_path / "out", rows, data / "images", categories, settings, {})
    out = tmp_path / "out"
    classes = read_csv(out / "classes.csv")
    assert sorted(p.name for p in (out / "train").iterdir() if p.is_dir()) == sorted(
        f"{row['index']:0>3}_{safe_label(row['label'])}" for row in classes
    )
    dataset = datasets.ImageFolder(str(out / "train"))
    by_folder = {row["folder"]: row for row in classes}
    for path, target in dataset.samples:
        folder = Path(path).parent.name
        assert dataset.classes[target] == folder
        assert by_folder[folder]["wnid"] == path.split("/")[-1][:9]
    shards = summary["shards"]["train"]
    assert len(shards) > 1
    assert all((out / name).stat().st_size <= 65536 for name in shards)
    samples = list(wds.WebDataset([str(out / n) for n in shards], shardshuffle=False))
    assert len(samples) == summary["images"]["train"]
    by_label = {row["label"]: row for row in classes}
    assert all(int(s["cls"]) == int(by_label[json.loads(s["json"])["label"]]["index"]) for s in samples)
    assert [dataset.class_to_idx[row["folder"]] for row in classes] == [int(row["index"]) for row in classes]


def test_a_changed_original_fails_and_leaves_nothing_half_written(manifest_rows, tmp_path):
    data, rows, categories = manifest_rows
    bad = [dict(row) for row in rows]
    bad[3]["sha256"] = "0" * 64
    with pytest.raises(ExportError, match="no longer matches the manifest"):
        export_dataset(tmp_path / "out", bad, data / "images", categories, ExportSettings(), {})
    assert list(tmp_path.iterdir()) == []


def test_bad_settings_are_refused_by_name():
    for settings, needle in [
        (ExportSettings(formats=("parquet",)), "formats"),
        (ExportSettings(val_fraction=1.0), "val_fraction"),
        (ExportSettings(class_names="number"), "class_names"),
        (ExportSettings(quality=100), "quality"),
    ]:
        with pytest.raises(ExportError, match=needle):
            settings.check()


def test_a_single_image_class_stays_in_train_and_both_splits_list_every_class():
    assert [split_counts(n, 0.2) for n in (0, 1, 2, 5, 10)] == [0, 0, 1, 1, 2]
    assert split_counts(5, 0.0) == 0
    assert split_counts(3, 0.9) == 2  # at least one stays in train


def run_pipeline_module(config: Path, server, *args: str) -> subprocess.CompletedProcess:
    """``python -m pipeline <args>`` with a local scheduler."""
    command = [sys.executable, "-m", "pipeline", *args, "--no-lock", "--local-scheduler"]
    return subprocess.run(
        command, cwd=REPO, env=pipeline_env(config, server), capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def woof_world(tmp_path_factory):
    from demo.server import DemoServer

    world = build_demo_world(tmp_path_factory.mktemp("woof-world"), categories_csv=PRESETS["imagewoof"])
    with DemoServer(world) as server:
        yield world, server


def test_a_subtree_is_resolved_first_then_fetched_and_exported(tmp_path, woof_world):
    world, server = woof_world
    words = shared_file("imagenet", "words.txt")
    is_a = shared_file("imagenet", "wordnet.is_a.txt")
    dead_mirror = f"{server.url}/files/no-such-wordnet.is_a.txt"  # answers 404: the next one is tried
    config = write_demo_config(
        tmp_path,
        world,
        server,
        ParseSynsets={"words_url": str(words), "hierarchy_mirrors": json.dumps([dead_mirror, str(is_a)])},
    )
    result = run_pipeline_module(
        config, server, "ExportDataset", "--ParseSynsets-categories", "under:n02084071"
    )
    assert result.returncode == 0, result.stderr[-4000:]
    (selection_path,) = (tmp_path / "data" / "synsets").glob("under-n02084071-*.selection.json")
    selection = json.loads(selection_path.read_text())
    woof = {c.wnid for c in read_preset(parse_spec("imagewoof"))}
    dogs = woof - {"n02115641"}  # the dingo is a wild dog, outside domestic dog's subtree
    assert selection["synsets_with_urls"] == len(dogs) == 9
    assert selection["synsets"] > 100  # every dog breed of words.txt, most without URLs here
    assert {
        row["wnid"] for row in read_csv(tmp_path / "data" / "export" / "under-n02084071" / "classes.csv")
    } == dogs

    # A subtree without any URL fails clearly, before any image is fetched.
    cats = run_pipeline_module(config, server, "FetchFives", "--ParseSynsets-categories", "under:n02121808")
    assert cats.returncode != 0
    assert "under:n02121808 (domestic cat): none of its" in cats.stdout + cats.stderr


def test_a_synset_without_urls_is_a_shortfall_with_its_reason_not_a_failure(tmp_path, imagenette_world):
    """As ILSVRC-2012's teddy bear: here Imagenette plus n04399382, which the world has no URLs for."""
    world, server = imagenette_world
    preset = tmp_path / "imagenette-and-teddy.csv"
    preset.write_text(
        PRESETS["imagenette"].read_text(encoding="utf-8") + "n04399382,teddy\n", encoding="utf-8"
    )
    words = shared_file("imagenet", "words.txt")  # knows the teddy bear, unlike the world's own
    config = write_demo_config(tmp_path, world, server, ParseSynsets={"words_url": str(words)})
    # The preset table is the only thing replaced; the rest is `python -m pipeline` as users run it.
    code = (
        "import sys; from pathlib import Path; import sampler.categories.sets as sets; "
        f"sets.PRESETS['imagenette'] = Path({str(preset)!r}); "
        "from pipeline.__main__ import main; sys.exit(main(sys.argv[1:]))"
    )
    command = [sys.executable, "-c", code, "ExportDataset", "--ParseSynsets-categories", "imagenette"]
    result = subprocess.run(
        [*command, "--local-scheduler", "--no-lock"],
        cwd=REPO,
        env=pipeline_env(config, server),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "1 without URLs (no URLs in fall11_urls.txt): n04399382 (teddy)" in result.stderr
    data = tmp_path / "data"
    (selection_path,) = (data / "synsets").glob("imagenette-*.selection.json")
    selection = json.loads(selection_path.read_text())
    assert selection["synsets"] == 11 and selection["synsets_with_urls"] == 10
    assert selection["without_urls"] == [
        {"wnid": "n04399382", "label": "teddy", "reason": "no URLs in fall11_urls.txt"}
    ]
    assert json.loads((data / "fetch_summary.json").read_text())["shortfalls"]["n04399382"] == PER_CATEGORY
    out = data / "export" / "imagenette"
    assert "n04399382" not in (out / "classes.csv").read_text()  # no class without images
    assert "- n04399382 (teddy): no images (no URLs in fall11_urls.txt)" in (out / "README.md").read_text()


def test_resize_keeps_small_images_whole_and_converts_cmyk():
    from sampler.export import resized_jpeg

    def jpeg(mode: str, size: tuple[int, int]) -> bytes:
        out = io.BytesIO()
        Image.new(mode, size, (10, 20, 30, 40)[: len(mode)] if mode != "L" else 99).save(
            out, "JPEG", quality=95
        )
        return out.getvalue()

    small = jpeg("RGB", (120, 90))
    assert resized_jpeg(small, 160, 90) == (small, 120, 90)  # never upscaled, never re-encoded
    data, width, height = resized_jpeg(jpeg("CMYK", (400, 300)), 160, 90)
    with Image.open(io.BytesIO(data)) as image:
        assert (image.mode, image.size, (width, height)) == ("RGB", (213, 160), (213, 160))
    data, width, height = resized_jpeg(jpeg("L", (300, 1000)), 100, 90)
    assert (width, height) == (100, 333)


def test_one_format_alone_writes_only_that_layout(manifest_rows, tmp_path):
    data, rows, categories = manifest_rows
    export_dataset(
        tmp_path / "w", rows, data / "images", categories, ExportSettings(formats=("webdataset",)), {}
    )
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [
        "README.md",
        "classes.csv",
        "croissant.json",
        "export.json",
        "files.csv",
        "webdataset",
    ]
    assert "ImageFolder(" not in (tmp_path / "w" / "README.md").read_text()
    export_dataset(
        tmp_path / "f", rows, data / "images", categories, ExportSettings(formats=("imagefolder",)), {}
    )
    assert not (tmp_path / "f" / "webdataset").exists() and (tmp_path / "f" / "train").is_dir()
    assert "wds.WebDataset" not in (tmp_path / "f" / "README.md").read_text()
