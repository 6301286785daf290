"""The export described for the ML ecosystem's loaders: Hugging Face and MLCommons Croissant.

Three kinds of file, written by sampler.export once the images, shards and CSV files are:

- ``train/metadata.csv`` and ``val/metadata.csv``: one row per image beside the ImageFolder
  images (``file_name`` relative to the split, ``label`` the class index of classes.csv, wnid,
  image id, URL, sha256).  Hugging Face ``datasets``' imagefolder builder reads them, so its
  labels are classes.csv's whatever the class folders are named;
- the YAML header of the dataset card (README.md): the Hub's metadata (licence, task, size,
  the splits' data files and a ClassLabel of the human-readable class names), so that
  ``load_dataset(<export>)`` names the classes and a push to the Hub needs no edit;
- ``croissant.json``: MLCommons Croissant 1.0 metadata (the files with their sha256, the
  splits, the classes, and one record per image with its class, source URL and sha256).

Nothing here holds a date or an absolute path: the same export gives the same bytes.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

METADATA_CSV = "metadata.csv"
CROISSANT = "croissant.json"
# The Hub's names for the splits (its imagefolder builder maps a val/ folder to "validation").
HF_SPLITS = {"train": "train", "val": "validation"}
CROISSANT_SPLITS = {"train": "cr:TrainingSplit", "val": "cr:ValidationSplit"}
IMAGENET_TERMS = "https://image-net.org/download.php"
OWNERS_LICENCE = (
    "The images are not ImageNet's and not this tool's: each belongs to its owner and carries "
    "its owner's licence. Every image's source URL is listed in `files.csv` (and in each "
    "WebDataset sample's `.json`): check the licence there before any use beyond research, "
    "and remove an image when its owner asks. ImageNet's URL list and class names come under "
    f"ImageNet's terms of access ({IMAGENET_TERMS}): non-commercial research and education."
)
HF_METADATA_COLUMNS = ("file_name", "label", "wnid", "image_id", "url", "sha256")


class Sample(Protocol):
    """What this module reads of sampler.export's ExportSample (no import cycle)."""

    image_id: str
    split: str
    file: str
    url: str
    sha256: str

    @property
    def cls(self) -> Any: ...


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        # Small blocks: an export holds about one image's bytes at a time, never a shard's.
        for block in iter(lambda: src.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def class_names(classes: Sequence[Mapping[str, Any]]) -> list[str]:
    """The classes' human-readable names in index order, each unique, as a ClassLabel needs:
    a label that two classes share (words.txt has two "crane"s) gets its wnid in brackets."""
    counts = Counter(c["label"] for c in classes)
    return [c["label"] if counts[c["label"]] == 1 else f"{c['label']} ({c['wnid']})" for c in classes]


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket of ``n`` images."""
    for limit, name in [
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
    ]:
        if n < limit:
            return name
    return "10M<n<100M"


def hf_metadata_rows(samples: Sequence[Sample], split: str) -> list[list[object]]:
    return [
        [f"{s.cls.folder}/{s.file}", s.cls.index, s.cls.wnid, s.image_id, s.url, s.sha256]
        for s in samples
        if s.split == split
    ]


def splits_with_images(summary: Mapping[str, Any]) -> list[str]:
    return [split for split in HF_SPLITS if summary["images"][split]]


def metadata_files(summary: Mapping[str, Any]) -> list[str]:
    """The files this module adds to an export (for missing_files)."""
    names = [CROISSANT]
    if "imagefolder" in summary["settings"]["formats"]:
        names += [f"{split}/{METADATA_CSV}" for split in splits_with_images(summary)]
    return names


# --------------------------------------------------------------------------- the card's header


def yaml_scalar(value: object) -> str:
    # A YAML double-quoted scalar, pure ASCII: quotes, colons, "#", non-ASCII and control
    # characters in a label cannot break the header.  Not json.dumps: it writes a character
    # beyond U+FFFF (an emoji, 𝔸) as two \u surrogates, which YAML reads as two broken halves.
    if not isinstance(value, str):
        return json.dumps(value)
    return '"' + "".join(_yaml_char(char) for char in value) + '"'


def _yaml_char(char: str) -> str:
    if char in '"\\':
        return "\\" + char
    if " " <= char <= "~":
        return char
    return f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}"


def set_title(provenance: Mapping[str, Any]) -> str:
    """The category set's name for a title: a preset's name, or a CSV list's file stem (its
    absolute path would publish the user's folders, and differ from one machine to the next)."""
    name = str(provenance.get("category_set", "ImageNet"))
    return Path(name).stem if name.endswith(".csv") or "/" in name else name


def class_label_feature(name: str, summary: Mapping[str, Any]) -> list[str]:
    lines = [f"  - name: {name}", "    dtype:", "      class_label:", "        names:"]
    return lines + [
        f"          {yaml_scalar(str(i))}: {yaml_scalar(label)}"
        for i, label in enumerate(class_names(summary["classes"]))
    ]


def imagefolder_features(summary: Mapping[str, Any]) -> list[str]:
    """The imagefolder config's columns (YAML lines): metadata.csv's, with the label a
    ClassLabel of the human-readable names."""
    lines = ["  - name: image", "    dtype: image", *class_label_feature("label", summary)]
    for column in HF_METADATA_COLUMNS[2:]:
        lines += [f"  - name: {column}", "    dtype: string"]
    return lines


# The types of a shard's <key>.json (sampler.export.sample_members), as `datasets` reads them.
WDS_JSON_TYPES = {
    "class_index": "int64",
    "height": "int64",
    "image_id": "string",
    "label": "string",
    "sha256": "string",
    "source_sha256": "string",
    "split": "string",
    "url": "string",
    "width": "int64",
    "wnid": "string",
}


def webdataset_features(summary: Mapping[str, Any]) -> list[str]:
    """The webdataset builder's columns: the key, the shard, the class as a ClassLabel of the
    human-readable names, the JPEG and the sample's .json."""
    lines = ["  - name: __key__", "    dtype: string", "  - name: __url__", "    dtype: string"]
    lines += [*class_label_feature("cls", summary), "  - name: jpg", "    dtype: image"]
    lines += ["  - name: json", "    struct:"]
    for key, kind in WDS_JSON_TYPES.items():
        lines += [f"    - name: {key}", f"      dtype: {kind}"]
    return lines


def card_header(summary: Mapping[str, Any]) -> str:
    """The Hugging Face Hub's YAML metadata block, ``---`` to ``---``, for the card's top."""
    settings, prov = summary["settings"], summary["provenance"]
    total = summary["images"]["train"] + summary["images"]["val"]
    splits = splits_with_images(summary)
    set_name = set_title(prov)
    lines = [
        "---",
        "license: other",
        "license_name: image-owners-licences",
        f"license_link: {IMAGENET_TERMS}",
        "task_categories:",
        "- image-classification",
        "task_ids:",
        "- multi-class-image-classification",
        "size_categories:",
        f"- {yaml_scalar(size_category(total))}",
        f"pretty_name: {yaml_scalar(f'{set_name} sample (imagenet-sampler)')}",
        "tags:",
        "- imagenet",
        "configs:",
    ]
    features = imagefolder_features(summary)
    if "imagefolder" in settings["formats"]:
        lines += ["- config_name: default", "  data_files:"]
        for split in splits:
            lines += [f"  - split: {HF_SPLITS[split]}", f"    path: {split}/**"]
        # Here for `datasets` (its folder builder takes a config's features, not dataset_info's).
        lines += ["  features:"] + [f"  {line}" for line in features]
    else:  # (`datasets` picks one builder for all of a folder's configs: the images' when both)
        features = webdataset_features(summary)  # (its builder takes dataset_info's)
        lines += ["- config_name: default", "  data_files:"]
        for split in splits:
            lines += [f"  - split: {HF_SPLITS[split]}", f"    path: webdataset/{split}-*.tar"]
    # The same for the Hub's viewer.
    lines += ["dataset_info:", "  config_name: default", "  features:", *features]
    lines.append("---")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- Croissant

CROISSANT_CONTEXT = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "equivalentProperty": "cr:equivalentProperty",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}


def csv_field(record_set: str, name: str, data_type: str, file_id: str, column: str, about: str) -> dict:
    return {
        "@type": "cr:Field",
        "@id": f"{record_set}/{name}",
        "name": name,
        "description": about,
        "dataType": data_type,
        "source": {"fileObject": {"@id": file_id}, "extract": {"column": column}},
    }


def file_object(out: Path, name: str, encoding: str, about: str) -> dict:
    return {
        "@type": "cr:FileObject",
        "@id": name,
        "name": name,
        "description": about,
        "contentUrl": name,  # relative to croissant.json: the export moves as a whole
        "encodingFormat": encoding,
        "sha256": file_sha256(out / name),
    }


def image_files(shards: Sequence[str] | None) -> tuple[dict, dict]:
    """The images' FileSet and the field that joins each to its files.csv row.

    The ImageFolder files when ``shards`` is None, joined by their path under the export;
    else the shards' ``<image id>.jpg`` members, joined by image id.
    """
    file_set: dict[str, Any] = {"@type": "cr:FileSet", "@id": "image-files", "name": "image-files"}
    if shards is None:
        file_set["description"] = "The ImageFolder images; each one's sha256 is in files.csv."
        file_set["includes"] = [f"{split}/*/*.jpg" for split in HF_SPLITS]
        key = ("path", "The image's path in the export.", "fullpath", "^(.*)$", "path")
    else:
        file_set["description"] = (
            "The images inside the WebDataset shards; each one's sha256 is in files.csv."
        )
        file_set["containedIn"] = [{"@id": name} for name in shards]
        file_set["includes"] = "*.jpg"
        # The ".jpg" optional: mlcroissant applies the regex to the member's name, then again
        # to what it gave, and "^(.*)\\.jpg$" logged "Could not match" once per image.
        about = "The ImageNet image id (<wnid>_<number>)."
        key = ("image_id", about, "filename", "^(.*?)(?:\\.jpg)?$", "image_id")
    file_set["encodingFormat"] = "image/jpeg"
    name, about, file_property, regex, column = key
    join = {
        "@type": "cr:Field",
        "@id": f"images/{name}",
        "name": name,
        "description": about,
        "dataType": "sc:Text",
        # (The regex makes the file property text, as files.csv holds it.)
        "source": {
            "fileSet": {"@id": "image-files"},
            "extract": {"fileProperty": file_property},
            "transform": {"regex": regex},
        },
        "references": {"fileObject": {"@id": "files.csv"}, "extract": {"column": column}},
    }
    return file_set, join


# The images record set's fields read from files.csv: name, type, column, description.
FILES_CSV_FIELDS = [
    ("image_id", "sc:Text", "image_id", "The ImageNet image id (<wnid>_<number>)."),
    ("split", "sc:Text", "split", "train or val (the splits record set)."),
    ("label", "sc:Integer", "class_index", "The class: its index in classes.csv."),
    ("wnid", "sc:Text", "wnid", "The class's WordNet id."),
    ("label_name", "sc:Text", "label", "The class's human-readable name."),
    ("url", "sc:URL", "url", "Where the image was downloaded from."),
    ("sha256", "sc:Text", "sha256", "sha256 of the exported JPEG."),
    ("source_sha256", "sc:Text", "source_sha256", "sha256 of the downloaded original."),
    ("width", "sc:Integer", "width", "Width in pixels."),
    ("height", "sc:Integer", "height", "Height in pixels."),
]


def record_sets(join: Mapping[str, Any]) -> list[dict]:
    image_content = {
        "@type": "cr:Field",
        "@id": "images/image",
        "name": "image",
        "description": "The JPEG.",
        "dataType": "sc:ImageObject",
        "source": {"fileSet": {"@id": "image-files"}, "extract": {"fileProperty": "content"}},
    }
    return [
        {
            "@type": "cr:RecordSet",
            "@id": "splits",
            "name": "splits",
            "description": "The splits: per class, seeded, stratified.",
            "dataType": "cr:Split",
            "key": {"@id": "splits/name"},
            "field": [
                {"@type": "cr:Field", "@id": "splits/name", "name": "name", "dataType": "sc:Text"},
                {"@type": "cr:Field", "@id": "splits/url", "name": "url", "dataType": "sc:URL"},
            ],
            "data": [{"splits/name": split, "splits/url": url} for split, url in CROISSANT_SPLITS.items()],
        },
        {
            "@type": "cr:RecordSet",
            "@id": "classes",
            "name": "classes",
            "description": "The classes, indexed as in classes.csv.",
            "key": {"@id": "classes/index"},
            "field": [
                csv_field("classes", "index", "sc:Integer", "classes.csv", "index", "The class index."),
                csv_field("classes", "wnid", "sc:Text", "classes.csv", "wnid", "The WordNet id."),
                csv_field("classes", "label", "sc:Text", "classes.csv", "label", "The human-readable name."),
            ],
        },
        {
            "@type": "cr:RecordSet",
            "@id": "images",
            "name": "images",
            "description": "One record per image: the JPEG, its split, class and provenance.",
            "key": {"@id": join["@id"]},
            "field": [join, image_content]
            + [
                csv_field("images", name, data_type, "files.csv", column, about)
                for name, data_type, column, about in FILES_CSV_FIELDS
                if name != join["name"]
            ],
        },
    ]


def croissant(out: Path, summary: Mapping[str, Any]) -> dict:
    """croissant.json of the export in ``out`` (its CSV files and shards already written).

    Records come from files.csv, one per image, joined to the image files: the ImageFolder
    files when there are any, else the shards' members.
    """
    set_name = set_title(summary["provenance"])
    total = summary["images"]["train"] + summary["images"]["val"]
    shards = [name for split in HF_SPLITS for name in summary["shards"].get(split, [])]
    file_set, join = image_files(None if "imagefolder" in summary["settings"]["formats"] else shards)
    return {
        "@context": CROISSANT_CONTEXT,
        "@type": "sc:Dataset",
        "name": f"{set_name}-sample",
        "description": (
            f"{set_name} sample made by imagenet-sampler from ImageNet's URL list (fall11_urls.txt): "
            f"{len(summary['classes'])} classes, {total} images, split train/val per class. "
            "Each image belongs to its owner; see README.md."
        ),
        "conformsTo": "http://mlcommons.org/croissant/1.0",
        "citeAs": "ImageNet: A large-scale hierarchical image database. Deng et al., CVPR 2009.",
        "license": IMAGENET_TERMS,
        "url": IMAGENET_TERMS,
        "version": "1.0.0",
        "distribution": [
            file_object(out, "files.csv", "text/csv", "Every image: split, class, path, source URL, sha256."),
            file_object(out, "classes.csv", "text/csv", "The classes: index, wnid, label, folder."),
            *[file_object(out, name, "application/x-tar", "A WebDataset shard.") for name in shards],
            file_set,
        ],
        "recordSet": record_sets(join),
    }


def write_ecosystem_files(out: Path, samples: Sequence[Sample], summary: Mapping[str, Any]) -> None:
    """metadata.csv beside each split's images (ImageFolder) and croissant.json, in ``out``."""
    if "imagefolder" in summary["settings"]["formats"]:
        for split in splits_with_images(summary):
            with (out / split / METADATA_CSV).open("w", encoding="utf-8", newline="") as dest:
                writer = csv.writer(dest, lineterminator="\n")
                writer.writerow(HF_METADATA_COLUMNS)
                writer.writerows(hf_metadata_rows(samples, split))
    (out / CROISSANT).write_text(
        json.dumps(croissant(out, summary), indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
