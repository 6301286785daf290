"""The published view: data_dir's ``manifest.csv``, ``images/``, reports and ``export/<name>/``.

Every configuration's outputs live under a folder of their own, named by a digest of what
made them (``runs/<readable>-<digest>/``, ``exports/<name>-<digest>/``): two configurations
never write one path.  What a user opens at the top of data_dir is a *copy* of the outputs
of the configuration asked for last, made here at the end of a run:

* ``images/`` is made from the store (every body checked against its sha256, as before);
* ``attempts.csv``, ``fetch_summary.json``, ``report/``, ``gallery/`` and the contact sheet
  are copied from the run folder, each replaced whole (atomically) -- the run folder mirrors
  data_dir's layout, so the gallery's relative links hold in both places;
* ``manifest.csv`` last: a crash in between leaves the previous manifest, and the next run
  publishes again.

Copies, not symbolic links: the pipeline never writes, replaces or deletes through a link
(``sampler.atomic.refuse_symlinks``), and a user's ``rm -r images`` or editor cannot reach
into a run folder.  Going back to an earlier configuration copies again, without a request.
"""

from __future__ import annotations

import filecmp
import hashlib
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from sampler.atomic import atomic_path, refuse_symlinks, remove_path
from sampler.fetch.gather import image_view, read_manifest
from sampler.store import ImageStore, MissingFromStore, make_view

log = logging.getLogger(__name__)

# Copied from the run folder in this order (manifest.csv last); published items the run
# folder lacks (a report this configuration has not made) are removed: they described another.
RUN_FILES = ("attempts.csv", "fetch_summary.json")
RUN_REPORTS = ("report", "gallery", "contact_sheet.jpg", "contact_sheet")


def same_content(source: Path, target: Path) -> bool:
    """Whether ``target`` holds what ``source`` holds (a file, or a folder file by file).

    A file of the same size and mtime counts as the same (copies keep their source's mtime):
    a rerun over a large export costs a stat per file, not a read of every byte."""
    if target.is_symlink() or source.is_dir() != target.is_dir() or not target.exists():
        return False
    if not source.is_dir():
        return filecmp.cmp(source, target, shallow=True)
    names = sorted(p.relative_to(source) for p in source.rglob("*"))
    if names != sorted(p.relative_to(target) for p in target.rglob("*")):
        return False
    return all(same_content(source / name, target / name) for name in names if not (source / name).is_dir())


def set_aside_foreign(source: Path, target: Path, origins: Sequence[Path], store: ImageStore) -> None:
    """Move to ``store/quarantine/<time>-<folder>/`` (their places in it kept) the files of the
    published folder ``target`` that neither ``source`` nor any configuration's folder in
    ``origins`` holds at that place: files of the user's own (a checkpoint in export/<name>/,
    a note in report/) or an export made before the keyed layout, which replacing the folder
    whole would delete unseen.  A kill midway leaves the rest for the next publish."""
    if not target.is_dir() or target.is_symlink():
        return
    foreign = [
        path
        for path in sorted(target.rglob("*"))
        if (path.is_symlink() or not path.is_dir())
        and not any(os.path.lexists(folder / path.relative_to(target)) for folder in (source, *origins))
    ]
    if not foreign:
        return
    aside = store.quarantine_place(target.name)
    for path in foreign:
        destination = aside / path.relative_to(target)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, destination)  # a rename on one disk
    log.warning(
        "%d file(s) in %s are no configuration's output (files of your own? e.g. %s): moved to %s "
        "before the folder is replaced; the pipeline never reads them",
        len(foreign),
        target,
        foreign[0].relative_to(target),
        aside,
    )


def copy_whole(
    source: Path, target: Path, root: Path, origins: Sequence[Path] = (), store: ImageStore | None = None
) -> None:
    """Replace ``target`` by a copy of ``source`` (a file or a folder), all at once; left
    alone when it holds the same bytes already (a rerun rewrites nothing).  With a ``store``,
    files in the folder ``target`` that no configuration made (``origins``: every keyed folder
    it may be a copy of) are moved to its quarantine first, not deleted."""
    refuse_symlinks(target, root)
    if same_content(source, target):
        return
    if store is not None:
        set_aside_foreign(source, target, origins, store)
    with atomic_path(target, directory=source.is_dir()) as tmp:
        if source.is_dir():
            tmp.rmdir()
            shutil.copytree(source, tmp, symlinks=True)
        else:
            shutil.copy2(source, tmp)  # its mtime too: the view says when each output was made


def restore_from(store: ImageStore, images_dir: Path, wanted: Mapping[str, str]) -> None:
    """Put back into the store every wanted body it lacks that ``images_dir`` holds whole."""
    for name, sha256 in wanted.items():
        path = images_dir / name
        if not store.has(sha256) and path.is_file() and not path.is_symlink():
            body = path.read_bytes()
            if hashlib.sha256(body).hexdigest() == sha256:
                store.put(body, sha256)


def publish_run(store: ImageStore, run_dir: Path, data_dir: Path) -> list[dict[str, str]]:
    """Make data_dir's top level the view of the finished run in ``run_dir``; return its rows."""
    rows = read_manifest(run_dir / "manifest.csv")
    wanted = image_view(rows)
    try:
        make_view(store, data_dir / "images", wanted)
    except MissingFromStore:  # a damaged store entry, quarantined by now: the run's copy, if whole
        restore_from(store, run_dir / "images", wanted)
        make_view(store, data_dir / "images", wanted)
    for name in (*RUN_FILES, *RUN_REPORTS):
        source, target = run_dir / name, data_dir / name
        origins = [run / name for run in keyed_folders(data_dir / "runs")]
        if source.exists():
            copy_whole(source, target, data_dir, origins, store)
        elif name in RUN_REPORTS and (target.exists() or target.is_symlink()):
            refuse_symlinks(target, data_dir)
            set_aside_foreign(source, target, origins, store)
            remove_path(target)
    copy_whole(run_dir / "manifest.csv", data_dir / "manifest.csv", data_dir)
    return rows


def publish_export(export_dir: Path, published: Path, data_dir: Path) -> None:
    """``export/<name>/`` becomes a copy of the keyed export ``export_dir``."""
    store = ImageStore(data_dir / "store")
    copy_whole(export_dir, published, data_dir, keyed_folders(export_dir.parent), store)


def keyed_folders(parent: Path) -> list[Path]:
    """Every configuration's folder under ``runs/`` or ``exports/``."""
    return sorted(p for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
