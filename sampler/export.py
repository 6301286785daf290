"""ExportDataset's work: the kept images as a dataset that training code loads as it is.

Two layouts, from one deterministic, seeded, per-class (stratified) train/val split:

- ImageFolder: ``<out>/train/<class>/<file>.jpg`` and ``<out>/val/<class>/<file>.jpg``,
  class folders named by wnid (as ImageNet's own) or by label;
- WebDataset: ``<out>/webdataset/{train,val}-NNNNNN.tar``, each sample ``<key>.jpg``,
  ``<key>.cls`` (the class index) and ``<key>.json`` (wnid, label, URL, sha256), each shard
  at most ``shard_max_bytes``.

Beside them: ``classes.csv`` (index, wnid, label; ILSVRC-2012's class-index order when
the set is a subset of it), ``files.csv`` (every exported file with its URL and hashes),
``export.json`` (settings and provenance) and ``README.md``, a dataset card.  The whole
folder appears at once (sampler.atomic); the originals in images/ are only read.
Images, shards, classes.csv and files.csv are byte-identical for the same inputs and
settings; README.md and export.json also carry the export's date.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import shutil
import tarfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from sampler.atomic import atomic_path
from sampler.categories.sets import ilsvrc2012_order
from sampler.categories.words import Category
from sampler.export_metadata import (
    OWNERS_LICENCE,
    card_header,
    metadata_files,
    set_title,
    write_ecosystem_files,
)
from sampler.naming import safe_label

FORMATS = ("imagefolder", "webdataset")
CLASS_NAMES = ("wnid", "label")
SPLITS = ("train", "val")
TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK  # tarfile pads an archive to whole records
MIN_RESIZE = 32
STAGING = ".staging"  # inside the export's temporary folder, gone before it appears
MAX_RESIZE = 100_000


class ExportError(ValueError):
    """The export cannot be made as asked; the message says why.

    ``setting`` names the ExportSettings field at fault, when one is (so that the task can
    name its flag).
    """

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


@dataclass(frozen=True)
class ExportSettings:
    formats: tuple[str, ...] = FORMATS
    val_fraction: float = 0.2
    split_seed: int = 0
    class_names: str = "wnid"
    resize: int = 0  # shorter side in pixels; 0 keeps the originals' bytes
    quality: int = 90  # JPEG quality of resized images
    shard_max_bytes: int = 100_000_000

    def check(self) -> None:
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats or len(set(self.formats)) != len(self.formats):
            raise ExportError(
                f"formats must be some of {', '.join(FORMATS)}, each once, got {list(self.formats)}",
                "formats",
            )
        if not 0 <= self.val_fraction < 1:
            raise ExportError(f"val_fraction must be in [0, 1), got {self.val_fraction}", "val_fraction")
        if self.class_names not in CLASS_NAMES:
            raise ExportError(f"class_names must be wnid or label, got {self.class_names!r}", "class_names")
        # Below MIN_RESIZE the pipeline itself would call an image a tracking pixel
        # (FetchCategory's min_side): a 1 px "dataset" is a typo, not a wish.
        if self.resize != 0 and not MIN_RESIZE <= self.resize <= MAX_RESIZE:
            raise ExportError(
                f"resize must be 0 (keep the originals) or a shorter side of {MIN_RESIZE}..{MAX_RESIZE} "
                f"pixels, got {self.resize}",
                "resize",
            )
        if not 1 <= self.quality <= 95:
            raise ExportError(f"quality must be 1..95 (Pillow's advice), got {self.quality}", "quality")
        if self.shard_max_bytes < 64 * 1024:
            raise ExportError(
                f"shard_max_bytes must be at least 65536, got {self.shard_max_bytes}", "shard_max_bytes"
            )


@dataclass(frozen=True)
class ExportClass:
    index: int
    wnid: str
    label: str
    folder: str
    ilsvrc2012_index: int | None = None


@dataclass
class ExportSample:
    image_id: str
    cls: ExportClass
    split: str
    file: str  # name in images/ and in the class folder
    url: str
    source_sha256: str
    # The exported bytes live on disk (``stored``), not in memory: an export of 50,000 images
    # must not hold them all at once.
    stored: Path | None = None
    sha256: str = ""
    size: int = 0
    width: int = 0
    height: int = 0

    def data(self) -> bytes:
        assert self.stored is not None, "the sample's bytes are not written yet"
        return self.stored.read_bytes()


def folder_clashes(folders: Sequence[str]) -> list[str]:
    """Folder names that two classes would share on a case-insensitive file system."""
    counts = Counter(f.lower() for f in folders)
    return sorted({f for f in folders if counts[f.lower()] > 1})


def label_clashes(categories: Sequence[Category]) -> list[str]:
    """Labels whose file-safe folder names clash (``hot dog`` and ``hot_dog``)."""
    return folder_clashes([safe_label(c.label) for c in categories])


def class_table(categories: Sequence[Category], present: set[str], class_names: str) -> list[ExportClass]:
    """The exported classes (those with at least one image), indexed.

    Indexes follow ILSVRC-2012's class order when every class is one of its 1000, and wnid
    order otherwise: in both cases the order of ImageFolder's sorted wnid folders.  Label
    folders carry their index in front (``000_tench``, zero-padded to one width), so that
    sorted folder names -- ImageFolder's class numbers -- keep that order too: every loader
    (ImageFolder, Hugging Face ``datasets``, the shards' ``.cls``, classes.csv, Croissant)
    gives a class one number.
    """
    kept = [c for c in categories if c.wnid in present]
    ilsvrc = ilsvrc2012_order()
    subset = all(c.wnid in ilsvrc for c in kept)
    kept.sort(key=(lambda c: ilsvrc[c.wnid]) if subset else (lambda c: c.wnid))
    width = max(3, len(str(len(kept) - 1)))
    folders = [
        c.wnid if class_names == "wnid" else f"{i:0{width}d}_{safe_label(c.label)}"
        for i, c in enumerate(kept)
    ]
    # Label folders no longer share a name (the index is in front), but two classes whose
    # labels are one once file-safe would still read as one class: refused, as before.
    clashes = folder_clashes(folders) or (label_clashes(kept) if class_names == "label" else [])
    if clashes:
        raise ExportError(
            f"class folders by label would clash (case-insensitively): {', '.join(clashes)}", "class_names"
        )
    return [
        ExportClass(i, c.wnid, c.label, folder, ilsvrc[c.wnid] if subset else None)
        for i, (c, folder) in enumerate(zip(kept, folders, strict=True))
    ]


def split_counts(n: int, val_fraction: float) -> int:
    """Validation images of a class of ``n``: the nearest to the fraction, keeping one of each side."""
    if n < 2 or val_fraction <= 0:
        return 0
    return min(max(1, round(n * val_fraction)), n - 1)


def split_class(image_ids: Sequence[str], val_fraction: float, seed: int, wnid: str) -> set[str]:
    """The validation image ids of one class: seeded per class, independent of the other classes."""
    order = sorted(image_ids)
    random.Random(f"{seed}:{wnid}").shuffle(order)  # str seeds hash with SHA-512: stable everywhere
    return set(order[: split_counts(len(order), val_fraction)])


def resized_jpeg(data: bytes, shorter_side: int, quality: int) -> tuple[bytes, int, int]:
    """The image with its shorter side ``shorter_side`` (Lanczos), re-encoded; never upscaled.

    An image already that small keeps its bytes.  EXIF (orientation) and the ICC profile
    travel with the pixels, so viewers show the image as they showed the original.
    """
    from PIL import Image  # here: the task module imports this one's constants only

    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if shorter_side <= 0 or min(width, height) <= shorter_side:
            return data, width, height
        if width <= height:
            size = (shorter_side, max(1, round(height * shorter_side / width)))
        else:
            size = (max(1, round(width * shorter_side / height)), shorter_side)
        extra = {k: image.info[k] for k in ("exif", "icc_profile") if image.info.get(k)}
        converted: Image.Image = image
        if image.mode not in ("RGB", "L"):  # CMYK and the like: a CMYK profile no longer fits
            converted = image.convert("RGB")
            extra.pop("icc_profile", None)
        small = converted.resize(size, Image.Resampling.LANCZOS)
        out = io.BytesIO()
        small.save(out, "JPEG", quality=quality, **extra)
        return out.getvalue(), size[0], size[1]


def plan_samples(
    rows: Sequence[Mapping[str, str]], classes: Sequence[ExportClass], settings: ExportSettings
) -> list[ExportSample]:
    """Every manifest row as a sample of its split, in class order then image id."""
    by_wnid = {c.wnid: c for c in classes}
    ids: dict[str, list[str]] = {}
    for row in rows:
        ids.setdefault(row["wnid"], []).append(row["image_id"])
    val = set()
    for wnid, image_ids in ids.items():
        val |= split_class(image_ids, settings.val_fraction, settings.split_seed, wnid)
    samples = [
        ExportSample(
            image_id=row["image_id"],
            cls=by_wnid[row["wnid"]],
            split="val" if row["image_id"] in val else "train",
            file=row["file"],
            url=row["url"],
            source_sha256=row["sha256"],
        )
        for row in rows
    ]
    samples.sort(key=lambda s: (s.cls.index, s.image_id))
    return samples


def tar_member_size(size: int) -> int:
    return TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK


def shard_size(member_bytes: int) -> int:
    """A tar archive's size: its members, the two zero end blocks, padded to whole records."""
    return -(-(member_bytes + 2 * TAR_BLOCK) // TAR_RECORD) * TAR_RECORD


def sample_members(sample: ExportSample, data: bytes) -> list[tuple[str, bytes]]:
    meta = {
        "image_id": sample.image_id,
        "wnid": sample.cls.wnid,
        "label": sample.cls.label,
        "class_index": sample.cls.index,
        "url": sample.url,
        "sha256": sample.sha256,
        "source_sha256": sample.source_sha256,
        "width": sample.width,
        "height": sample.height,
        "split": sample.split,
    }
    # webdataset groups a sample's files by the name before the first dot: image ids have none.
    return [
        (f"{sample.image_id}.cls", f"{sample.cls.index}".encode("ascii")),
        (f"{sample.image_id}.jpg", data),
        (
            f"{sample.image_id}.json",
            (json.dumps(meta, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"),
        ),
    ]


def group_shards(samples: Sequence[ExportSample], max_bytes: int) -> list[list[ExportSample]]:
    """Consecutive samples in shards of at most ``max_bytes`` (a bigger sample gets a shard of its own)."""
    shards: list[list[ExportSample]] = []
    current: list[ExportSample] = []
    used = 0
    for sample in samples:
        size = sum(
            tar_member_size(sample.size if name.endswith(".jpg") else len(data))
            for name, data in sample_members(sample, b"")
        )
        if current and shard_size(used + size) > max_bytes:
            shards.append(current)
            current, used = [], 0
        current.append(sample)
        used += size
    if current:
        shards.append(current)
    return shards


def write_shard(path: Path, samples: Sequence[ExportSample]) -> None:
    # Fixed metadata (owner, time, mode): the same samples give the same bytes.
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for name, data in sample_members(sample, sample.data()):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                info.mtime = 0
                tar.addfile(info, io.BytesIO(data))


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def export_dataset(
    out: Path,
    rows: Sequence[Mapping[str, str]],
    images_dir: Path,
    categories: Sequence[Category],
    settings: ExportSettings,
    provenance: Mapping[str, object],
    reasons: Mapping[str, str] | None = None,
    progress: Callable[[float, str], None] = lambda percent, message: None,
) -> dict:
    """Write the export to ``out`` (replacing it whole) and return its summary (export.json).

    ``reasons`` says why a category has no images, when known (``no URLs in fall11_urls.txt``).
    """
    settings.check()
    if not rows:
        raise ExportError("the manifest lists no images: nothing to export")
    listed = {c.wnid for c in categories}
    strays = sorted({row["wnid"] for row in rows} - listed)
    if strays:
        raise ExportError(f"the manifest holds images of categories outside the set: {', '.join(strays)}")
    classes = class_table(categories, {row["wnid"] for row in rows}, settings.class_names)
    samples = plan_samples(rows, classes, settings)
    with atomic_path(out, directory=True) as tmp:
        for n, sample in enumerate(samples, start=1):
            source = images_dir / sample.file
            original = source.read_bytes()
            if hashlib.sha256(original).hexdigest() != sample.source_sha256:
                raise ExportError(
                    f"{source} no longer matches the manifest's sha256 (changed during the export): rerun "
                    "the same command; ExportDataset puts the stored original back first"
                )
            data, sample.width, sample.height = resized_jpeg(original, settings.resize, settings.quality)
            sample.sha256, sample.size = hashlib.sha256(data).hexdigest(), len(data)
            if "imagefolder" in settings.formats:
                sample.stored = tmp / sample.split / sample.cls.folder / sample.file
            else:  # the shards alone: staged until they are written
                sample.stored = tmp / STAGING / sample.file
            sample.stored.parent.mkdir(parents=True, exist_ok=True)
            sample.stored.write_bytes(data)
            del data, original
            progress(90 * n / len(samples), f"images {n}/{len(samples)}")
        if "imagefolder" in settings.formats:
            # Every class folder in both splits, so that ImageFolder gives both the same indexes.
            for split in SPLITS:
                for cls in classes:
                    (tmp / split / cls.folder).mkdir(parents=True, exist_ok=True)
        shards: dict[str, list[str]] = {}
        if "webdataset" in settings.formats:
            (tmp / "webdataset").mkdir()
            for split in SPLITS:
                in_split = [s for s in samples if s.split == split]
                if split == "train":  # mixed classes within each shard, the same mix every time
                    random.Random(f"{settings.split_seed}:shuffle").shuffle(in_split)
                groups = group_shards(in_split, settings.shard_max_bytes)
                shards[split] = [f"webdataset/{split}-{i:06d}.tar" for i in range(len(groups))]
                for name, group in zip(shards[split], groups, strict=True):
                    write_shard(tmp / name, group)
        shutil.rmtree(tmp / STAGING, ignore_errors=True)
        progress(95, "classes, files and the dataset card")
        write_csv(
            tmp / "classes.csv",
            ["index", "wnid", "label", "folder"]
            + (["ilsvrc2012_index"] if classes[0].ilsvrc2012_index is not None else []),
            [
                [c.index, c.wnid, c.label, c.folder]
                + ([c.ilsvrc2012_index] if c.ilsvrc2012_index is not None else [])
                for c in classes
            ],
        )
        write_csv(
            tmp / "files.csv",
            [
                "split",
                "class_index",
                "wnid",
                "label",
                "path",
                "image_id",
                "url",
                "sha256",
                "source_sha256",
                "width",
                "height",
            ],
            [
                [
                    s.split,
                    s.cls.index,
                    s.cls.wnid,
                    s.cls.label,
                    f"{s.split}/{s.cls.folder}/{s.file}",
                    s.image_id,
                    s.url,
                    s.sha256,
                    s.source_sha256,
                    s.width,
                    s.height,
                ]
                for s in samples
            ],
        )
        summary = summarise(categories, classes, samples, settings, provenance, shards, reasons or {})
        write_ecosystem_files(tmp, samples, summary)  # Hugging Face's metadata.csv, croissant.json
        (tmp / "export.json").write_text(
            json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        card = card_header(summary) + "\n" + dataset_card(summary)  # the Hub's YAML, then the text
        (tmp / "README.md").write_text(card, encoding="utf-8")
    progress(100, f"exported {len(samples)} images of {len(classes)} classes")
    return summary


def missing_files(out: Path, summary: Mapping) -> list[str]:
    """Files the export's own record lists that are gone (deleted by hand since): a stat each."""
    expected = [name for names in summary.get("shards", {}).values() for name in names]
    expected += ["classes.csv", "files.csv", "README.md", *metadata_files(summary)]
    if "imagefolder" in summary.get("settings", {}).get("formats", []):
        with (out / "files.csv").open(encoding="utf-8", newline="") as src:
            expected += [row["path"] for row in csv.DictReader(src)]
    return [name for name in expected if not (out / name).is_file()]


def summarise(
    categories: Sequence[Category],
    classes: Sequence[ExportClass],
    samples: Sequence[ExportSample],
    settings: ExportSettings,
    provenance: Mapping[str, object],
    shards: Mapping[str, list[str]],
    reasons: Mapping[str, str],
) -> dict:
    counts = {c.wnid: {"train": 0, "val": 0} for c in classes}
    for sample in samples:
        counts[sample.cls.wnid][sample.split] += 1
    exported = {c.wnid for c in classes}
    return {
        "settings": {**asdict(settings), "formats": list(settings.formats)},
        "provenance": dict(provenance),
        "images": {split: sum(c[split] for c in counts.values()) for split in SPLITS},
        "classes": [
            {"index": c.index, "wnid": c.wnid, "label": c.label, "folder": c.folder, **counts[c.wnid]}
            for c in classes
        ],
        "ilsvrc2012_order": bool(classes) and classes[0].ilsvrc2012_index is not None,
        "missing_classes": [
            {"wnid": c.wnid, "label": c.label, "reason": reasons.get(c.wnid, "no working image found")}
            for c in categories
            if c.wnid not in exported
        ],
        "shards": dict(shards),
    }


def dataset_card(summary: Mapping) -> str:
    """README.md of the export: what is in it, how it was made, whose the images are."""
    settings, prov = summary["settings"], summary["provenance"]
    classes = summary["classes"]
    images = summary["images"]
    train_shards = len(summary["shards"].get("train", []))
    lines = [
        f"# {set_title(prov)} sample: {len(classes)} classes, {images['train'] + images['val']} images",
        "",
        "Made by imagenet-sampler from ImageNet's URL list (fall11_urls.txt): for each class, up to "
        f"{prov.get('per_category', '?')} working JPEGs drawn at random (seed {prov.get('seed', '?')}) "
        "from the synset's URLs, downloaded and checked (full decode, no placeholders).",
        "",
        "## Licence and ownership",
        "",
        OWNERS_LICENCE,
        "",
        "## Split",
        "",
        f"Stratified per class: about {settings['val_fraction']:.0%} of each class's images in `val`, "
        f"chosen at random with seed {settings['split_seed']} (a class with one image is in `train` "
        f"only). train: {images['train']} images, val: {images['val']} images.",
        "",
        "## Layout",
        "",
    ]
    if "imagefolder" in settings["formats"]:
        lines.append(
            "- `train/<class>/<file>.jpg` and `val/<class>/<file>.jpg`, class folders named by "
            + (
                "wnid"
                if settings["class_names"] == "wnid"
                else "class index and label (`000_tench`: the index in front, so that sorted folders "
                "keep the class order)"
            )
            + ". ImageFolder numbers classes by sorted folder name, which is classes.csv's `index`, "
            "the shards' `.cls` and the `label` of Hugging Face `datasets` and Croissant alike. "
            "Every class has a folder in both splits, so both get the same "
            "indexes (pass `allow_empty=True` to ImageFolder if a val folder is empty)."
        )
    for split, names in summary["shards"].items():
        if names:
            lines.append(
                f"- WebDataset {split}: `webdataset/{split}-{{000000..{len(names) - 1:06d}}}.tar`, "
                f"{len(names)} shard(s) of at most {settings['shard_max_bytes']:,} bytes; each sample has "
                "`.jpg`, `.cls` (class index) and `.json` (wnid, label, url, sha256 of the `.jpg`, "
                "source_sha256 of the original)."
            )
    ilsvrc = " and ilsvrc2012_index (a subset of ILSVRC-2012, in its class order)"
    lines += [
        "- `classes.csv`: index, wnid, label, folder"
        + (ilsvrc if summary["ilsvrc2012_order"] else "")
        + ". With wnid folders ImageFolder's indexes are these; with label folders ImageFolder sorts "
        "the labels: map through `classes.csv`.",
        "- `files.csv`: every image with its split, class, path, URL and hashes; `export.json`: "
        "all of this as data; `croissant.json`: MLCommons Croissant metadata (the files with their "
        "sha256, the splits, the classes, a record per image with its URL and sha256)."
        + (
            " `<split>/metadata.csv` gives Hugging Face `datasets` each image's class index "
            "(classes.csv's), wnid, URL and sha256."
            if "imagefolder" in settings["formats"]
            else ""
        ),
        "",
        "## Loading",
        "",
        "```python",
    ]
    if "imagefolder" in settings["formats"]:
        lines += ["from torchvision.datasets import ImageFolder", 'train = ImageFolder("train")']
    if train_shards:
        pattern = f"webdataset/train-{{000000..{train_shards - 1:06d}}}.tar"
        lines += [
            "import webdataset as wds",
            f'shards = wds.WebDataset("{pattern}", shardshuffle=False).decode("pil")',
        ]
    lines += [
        "import os",
        "from datasets import load_dataset  # Hugging Face: classes.csv's labels as class names",
        'hf = load_dataset(os.getcwd())  # (not ".": datasets names a dataset after its folder)',
        "import mlcroissant as mlc",
        'records = mlc.Dataset(jsonld="croissant.json").records("images")',
    ]
    resize = settings["resize"]
    pixels = (
        f"shorter side {resize} px (Lanczos, JPEG quality {settings['quality']}); never upscaled: "
        f"an image whose shorter side is already {resize} px or less keeps its own size and bytes"
        if resize
        else "the originals, byte for byte"
    )
    lines += ["```", "", "## Provenance", ""]
    lines += [f"- {key}: {value}" for key, value in prov.items()]
    lines += [
        f"- images: {pixels}",
        f"- export settings: `{json.dumps(settings, sort_keys=True)}`",
        "",
        "## Classes",
        "",
        "| index | wnid | label | train | val |",
        "|---:|---|---|---:|---:|",
    ]
    # (A "|" in a label would end its cell: the rest of the row shifts one column right.)
    cell = {c["wnid"]: c["label"].replace("|", "\\|") for c in classes}
    lines += [
        f"| {c['index']} | {c['wnid']} | {cell[c['wnid']]} | {c['train']} | {c['val']} |" for c in classes
    ]
    wanted = int(prov.get("per_category", 0) or 0)
    short = [c for c in classes if c["train"] + c["val"] < wanted]
    if short or summary["missing_classes"]:
        lines += ["", "## Shortfalls", ""]
        lines += [f"- {c['wnid']} ({c['label']}): {c['train'] + c['val']} images" for c in short]
        lines += [
            f"- {c['wnid']} ({c['label']}): no images ({c['reason']})" for c in summary["missing_classes"]
        ]
    return "\n".join(lines) + "\n"
