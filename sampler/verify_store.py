"""VerifyStore's work: every stored body read back and checked against its sha256.

A body damaged on disk (bit rot, a restore, an edit through an old hard link) keeps its
size and often its mtime: only reading it tells.  Publishing (images/, the export) and
reusing (replay, another configuration) read and check every body they touch; this pass
checks the whole store at once, for a user who wants to know.  A damaged entry is
quarantined (``store/quarantine/``), then repaired from a whole copy in images/ or in a run
folder's images/ (``runs/<run>/images/``: every configuration's, not only the published one) where
there is one; otherwise the next FetchFives run of a configuration that needs it fetches
its URL again (its category and FetchFives are incomplete once the entry is gone).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from sampler.fetch.category_round import referenced_hashes
from sampler.fetch.gather import read_manifest
from sampler.store import SUFFIX, URLS_DIR, ImageStore


@dataclass
class VerifyReport:
    checked: int = 0
    checked_bytes: int = 0
    damaged: list[str] = field(default_factory=list)  # sha256 of every damaged entry
    restored: list[str] = field(default_factory=list)  # put back whole from images/
    refetch: dict[str, str] = field(default_factory=dict)  # sha256 -> a URL that served it
    unneeded: list[str] = field(default_factory=list)  # referenced by no configuration

    def message(self) -> str:
        text = f"store: checked {self.checked} images ({self.checked_bytes:,} bytes)"
        text += f", {len(self.damaged)} damaged"
        if not self.damaged:
            return text
        text += f" (moved to store/quarantine/): {len(self.restored)} restored from images/"
        if self.refetch:
            example = next(iter(self.refetch.values())) or "its URL"
            text += (
                f"; {len(self.refetch)} not restorable here: the next FetchFives run of the "
                f"configuration that needs them fetches them again (e.g. {example}), or takes "
                "the next candidate if the URL is gone"
            )
        if self.unneeded:
            text += f"; {len(self.unneeded)} needed by no configuration (nothing to do)"
        return text


def _urls_of(store: ImageStore, wanted: set[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    urls_dir = store.root / URLS_DIR
    for path in sorted(urls_dir.glob("*.csv")) if urls_dir.is_dir() else []:
        for entry in store.stored_urls(path.stem).values():
            if entry.sha256 in wanted:
                found.setdefault(entry.sha256, entry.url)
    return found


def listed_copies(manifest: Path, images_dir: Path, runs_dir: Path | None) -> dict[str, list[Path]]:
    """sha256 -> the files that should hold that body: the published view's, then each run folder's."""
    copies: dict[str, list[Path]] = {}
    runs = (
        sorted(p for p in runs_dir.iterdir() if p.is_dir())
        if runs_dir is not None and runs_dir.is_dir()
        else []
    )
    for listed, folder in [(manifest, images_dir), *((run / "manifest.csv", run / "images") for run in runs)]:
        if listed.is_file():
            for row in read_manifest(listed):
                if row.get("sha256") and row.get("file"):
                    copies.setdefault(row["sha256"], []).append(folder / row["file"])
    return copies


def verify_store(
    store: ImageStore, fetch_root: Path, manifest: Path, images_dir: Path, runs_dir: Path | None = None
) -> VerifyReport:
    """Check every entry of ``store``; quarantine and, where possible, repair the damaged.

    A damaged entry is restored from images/ at once, not after the whole pass: killed
    in between, a rerun would find the entry gone rather than damaged, and not restore it.
    """
    report = VerifyReport()
    copies: dict[str, list[Path]] | None = None  # read at the first damaged entry
    for path in list(store.entries()):
        digest = path.name[: -len(SUFFIX)]
        try:
            report.checked_bytes += path.stat().st_size
        except FileNotFoundError:
            continue  # pruned or quarantined by another process meanwhile
        report.checked += 1
        if store.verify(digest):
            continue
        report.damaged.append(digest)
        if copies is None:
            copies = listed_copies(manifest, images_dir, runs_dir)
        for copy in copies.get(digest, []):
            try:
                body = copy.read_bytes()
            except (FileNotFoundError, IsADirectoryError):
                continue
            if hashlib.sha256(body).hexdigest() == digest:
                store.put(body, digest)
                report.restored.append(digest)
                break
    if not report.damaged:
        return report
    needed = referenced_hashes(fetch_root, manifest)
    left = []
    for digest in report.damaged:
        if digest in report.restored:
            continue
        if digest in needed:
            left.append(digest)
        else:
            report.unneeded.append(digest)
    urls = _urls_of(store, set(left))
    report.refetch = {digest: urls.get(digest, "") for digest in left}
    return report
