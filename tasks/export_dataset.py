"""Stage 6: the sample as a dataset that training code loads (ImageFolder, WebDataset)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import luigi

from sampler.atomic import is_temporary
from sampler.categories.words import SynsetError, read_category_table
from sampler.export import (
    FORMATS,
    MAX_RESIZE,
    MIN_RESIZE,
    ExportError,
    ExportSettings,
    export_dataset,
    label_clashes,
    missing_files,
)
from sampler.fetch.gather import image_view, read_manifest
from sampler.publish import publish_export
from sampler.report.run_files import read_json_object
from sampler.store import MissingFromStore, make_view
from tasks.configuration import flag
from tasks.errors import ConfigError
from tasks.fetch_fives import FetchConfig, FetchFives
from tasks.freshness import RebuiltWhenInputsChange
from tasks.parameters import ListParameter, category_digest, category_source, keyed_name
from tasks.parse_synsets import ParseSynsets
from tasks.progress import task_progress
from tasks.targets import AtomicFolderTarget
from tasks.task import SamplerTask


class ExportDataset(FetchConfig, RebuiltWhenInputsChange):
    """``exports/<set>[-<resize>px]-<digest>/``: train/val ImageFolder, WebDataset shards, classes,
    card; published (copied) to ``export/<set>[-<resize>px]/`` at the end of the run."""

    formats = ListParameter(default=FORMATS, description="imagefolder and/or webdataset")
    val_fraction = luigi.FloatParameter(default=0.2, description="Share of each class in val/")
    split_seed = luigi.IntParameter(default=0, description="Seed of the train/val split")
    class_names = luigi.ChoiceParameter(
        default="wnid", choices=["wnid", "label"], description="Class folders named by wnid or by label"
    )
    resize = luigi.IntParameter(default=0, description="Shorter side in pixels (0: the originals' bytes)")
    quality = luigi.IntParameter(default=90, description="JPEG quality of resized images")
    shard_max_bytes = luigi.IntParameter(default=100_000_000, description="Largest WebDataset shard")
    name = luigi.Parameter(default="", description="Folder under export/ (default: the set, and -<N>px)")
    sizes = ListParameter(
        default=(),
        item=int,
        description="Several exports from one fetch, one per shorter side (0: the originals), "
        "e.g. [0, 320, 160]: export/<set>/, export/<set>-320px/, export/<set>-160px/",
    )

    def validate(self) -> None:
        # Checked when the task is built, like every other setting: a typo in an export
        # setting must not cost a whole download first (nor fail only at the very end).
        super().validate()
        try:
            self.settings().check()
        except ExportError as error:
            raise ConfigError(f"{flag('ExportDataset', error.setting or 'formats')}: {error}") from error
        self.validate_sizes()
        if self.class_names == "label":  # known now for a preset or CSV: fail before fetching
            try:
                categories = self.synsets().category_list()
            except SynsetError:  # a subtree not resolved yet: export_dataset checks it
                categories = []
            clashes = label_clashes(categories)
            if clashes:
                raise ConfigError(
                    f"{flag('ExportDataset', 'class_names')} = label: class folders would clash "
                    f"(case-insensitively, once file-safe): {', '.join(clashes)}; use wnid"
                )
        # One folder under export/: a name with a separator or ".." would write outside data_dir.
        if self.name and (self.name in (".", "..") or any(sep in self.name for sep in ("/", "\\", "\0"))):
            raise ConfigError(
                f"{flag('ExportDataset', 'name')} must be a plain folder name (it goes under "
                f"<data_dir>/export/), not {self.name!r}"
            )
        self.validate_folder_name()

    def validate_folder_name(self) -> None:
        """The export's folder must not be named like a temporary: a later run's sweep after a
        crash (tasks.recovery) would delete it as a dead process's leftover."""
        folder = self.published_name()  # export/<name>/, the view (exports/ adds a digest)
        if not is_temporary(Path(folder)):
            return
        if self.name:
            raise ConfigError(
                f"{flag('ExportDataset', 'name')} {self.name!r} ends like a temporary's name "
                "(.tmp-<number>), which a later run would delete: choose another name"
            )
        raise ConfigError(
            f"{flag('ParseSynsets', 'categories')}: the category list's file name makes the export "
            f"folder export/{folder}, which ends like a temporary's name (.tmp-<number>) and a later "
            "run would delete: rename the file or set --ExportDataset-name"
        )

    def validate_sizes(self) -> None:
        if not self.sizes:
            return
        sizes = list(self.sizes)
        if self.resize:
            raise ConfigError(
                f"{flag('ExportDataset', 'sizes')} and {flag('ExportDataset', 'resize')} both set: "
                "give the sizes alone (0 in them for the originals)"
            )
        if any(isinstance(size, bool) or not isinstance(size, int) for size in sizes):
            raise ConfigError(f"{flag('ExportDataset', 'sizes')} must be a list of whole pixels, got {sizes}")
        if len(set(sizes)) != len(sizes):
            raise ConfigError(f"{flag('ExportDataset', 'sizes')} lists a size twice: {sizes}")
        wrong = [size for size in sizes if size != 0 and not MIN_RESIZE <= size <= MAX_RESIZE]
        if wrong:  # as resize: below MIN_RESIZE the pipeline would call an image a tracking pixel
            raise ConfigError(
                f"{flag('ExportDataset', 'sizes')}: each size must be 0 (the originals) or a shorter side "
                f"of {MIN_RESIZE}..{MAX_RESIZE} pixels, got {', '.join(map(str, wrong))}"
            )

    def size_exports(self) -> list[ExportDataset]:
        """With ``sizes``: one export per size, each the task as if run with ``resize`` = it.
        They share FetchFives (one fetch) and differ only in their folder and pixels."""
        sizes: list[int] = list(self.sizes)
        named = {size: f"{self.name}-{size}px" if self.name and size else self.name for size in sizes}
        return [self.clone(resize=size, sizes=(), name=named[size]) for size in sizes]

    def synsets(self) -> ParseSynsets:
        return ParseSynsets(data_dir=self.data_dir, categories=self.category_list)

    def requires(self) -> dict[str, SamplerTask]:
        if self.sizes:
            return {str(task.resize): task for task in self.size_exports()}
        return {"fives": FetchFives(**self.fetch_settings()), "synsets": self.synsets()}

    def settings(self) -> ExportSettings:
        # (formats: luigi's ListParameter gives a tuple, as ExportSettings wants.)
        return self.settings_of(ExportSettings)

    def output(self) -> AtomicFolderTarget | list[AtomicFolderTarget]:
        if self.sizes:  # the exports of its sizes, made by the tasks it requires
            return [task.export_folder() for task in self.size_exports()]
        return self.export_folder()

    def published_name(self) -> str:
        """The folder under export/ that the end of the run makes a copy of this export."""
        return self.name or self.synsets().spec().stem + (f"-{self.resize}px" if self.resize else "")

    def export_key(self) -> dict:
        """Every setting that changes the export's bytes (its folder's digest)."""
        settings = json.loads(json.dumps(self.settings().__dict__ | {"formats": list(self.formats)}))
        return self.run_key() | {"export": settings}

    def export_folder(self) -> AtomicFolderTarget:
        """``exports/<name>-<digest>/``, written whole by sampler.export (atomically: it is
        called without luigi too); no other configuration writes it."""
        return AtomicFolderTarget(self.path("exports", keyed_name(self.published_name(), self.export_key())))

    def publish(self) -> None:
        """The fetch's view, and ``export/<name>/`` (each size's) a copy of this export."""
        super().publish()
        for task in self.size_exports() if self.sizes else [self]:
            publish_export(
                task.export_folder().fs_path, self.path("export", task.published_name()), Path(self.data_dir)
            )

    def provenance(self) -> dict:
        """What the export was made from; together with the settings, its identity."""
        return {
            "category_set": category_source(self.category_list),
            "category_digest": category_digest(self.category_list),
            "seed": self.seed,
            "sample_size": self.sample_size,
            "per_category": self.per_category,
        }

    def complete(self) -> bool:
        # Hand-written: FetchFives' checks first (a store entry lost since), and a file deleted
        # from the export by hand since is a missing output too (the folder alone exists).
        if self.sizes:
            return all(task.complete() for task in self.size_exports())
        if not super().complete():
            return False
        # A file deleted from the export since (a shard, an image): made again.
        folder = self.export_folder()
        summary = read_json_object(folder.child("export.json"))  # damaged: {}, and made again
        return (
            bool(summary)
            and folder.child("files.csv").exists()
            and not missing_files(folder.fs_path, summary)
        )

    def run(self) -> None:
        if self.sizes:  # its requirements did the work
            return
        self.export()

    def export(self) -> None:
        synsets = self.synsets()
        selection = json.loads(synsets.selection().read_text())
        reasons = {item["wnid"]: item["reason"] for item in selection["without_urls"]}
        provenance = self.provenance() | {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
            "source": "fall11_urls.txt (imagenet_fall11_urls.tgz)",
        }
        inputs = self.input()
        rows = read_manifest(inputs["fives"]["manifest"])
        # images/ checked against the manifest and repaired from the store first: an image
        # changed there with its size and mtime kept passes FetchFives' cheap complete().
        try:
            make_view(self.image_store(), self.run_path("images"), image_view(rows))
        except MissingFromStore as error:  # damaged in the store too: quarantined by now
            raise ExportError(f"{error} (FetchFives does, as part of the export)") from None
        export_dataset(
            self.export_folder().fs_path,
            rows,
            self.run_path("images"),
            read_category_table(inputs["synsets"].fs_path),
            self.settings(),
            provenance,
            reasons,
            progress=task_progress(self),
        )
