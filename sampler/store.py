"""A content-addressed store of every good image body the pipeline ever fetched.

``store/<first 2 hex>/<sha256>.jpg`` holds the bytes exactly as served.  A body
that may be a good JPEG is put here as it arrives -- speculative ones too -- and
taken out again if judged otherwise (sampler.fetch.replay.StoringJudge), so that a
kill, a top-up round, another worker process or another configuration never has
to download a good image again.  ``store/urls/<wnid>.csv`` says which URL served
which body (and where its redirects ended), so that a URL is answered from the
store without a request.  ``images/`` is a view of the store made for the configuration
asked for: copies, each checked against its sha256 as it is made (not hard links: an image
edited in images/ would change the store, and a store entry rotting on disk the published
image).  A damaged entry goes to ``store/quarantine/`` and its URL is fetched again.

Why no fsync: a store entry is named by its own hash and every read checks that
hash, so an entry torn by a power cut is noticed and fetched again; against
kill -9 the rename alone is enough (the page cache outlives the process).  An
fsync per image would cost more than the download on a busy disk.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import os
import re
import shutil
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from sampler.atomic import (
    TMP_MARK,
    refuse_symlinks,
    remove_dead_temporaries,
    remove_path,
    temporary_sibling,
)

log = logging.getLogger(__name__)

SHA256 = re.compile(r"[0-9a-f]{64}")
SUFFIX = ".jpg"
URLS_DIR = "urls"
QUARANTINE_DIR = "quarantine"  # damaged entries and edited images/ files, kept for a look


@dataclass(frozen=True)
class StoredUrl:
    url: str
    final_url: str
    sha256: str


@dataclass(frozen=True)
class PruneReport:
    kept: int
    kept_bytes: int
    removed: int
    freed_bytes: int
    temporaries: int  # stale temporaries removed (left by killed writers)

    def message(self) -> str:
        return (
            f"store: removed {self.removed} unreferenced images ({self.freed_bytes:,} bytes freed), "
            f"kept {self.kept} ({self.kept_bytes:,} bytes), {self.temporaries} stale temporaries removed"
        )


def _url_check(url: str, final_url: str, sha256: str) -> str:
    # A line torn by a kill and glued to the next writer's line must not parse as a real one.
    text = "\t".join((url, final_url, sha256)).encode("utf-8", "surrogateescape")
    return f"{zlib.crc32(text):08x}"


def _url_lines(entries: Iterable[StoredUrl]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    for e in entries:
        writer.writerow([e.url, e.final_url, e.sha256, _url_check(e.url, e.final_url, e.sha256)])
    return text.getvalue().encode("utf-8", "surrogateescape")


class ImageStore:
    """The store under ``root`` (``data_dir/store``).  Safe for many threads and processes."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    # -- bodies
    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}{SUFFIX}"

    def has(self, sha256: str) -> bool:
        return bool(SHA256.fullmatch(sha256 or "")) and self.path(sha256).is_file()

    def get(self, sha256: str) -> bytes | None:
        """The body stored under ``sha256``, or None when absent or damaged (then it is removed)."""
        if not SHA256.fullmatch(sha256 or ""):
            return None
        path = self.path(sha256)
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            return None
        except IsADirectoryError:  # a folder under an entry's name: nothing can be stored there
            self.quarantine(path, f"store entry {path.name} is a folder, not an image")
            return None
        if hashlib.sha256(body).hexdigest() != sha256:
            # Torn by a power cut, rotted on disk or edited in place: its URL is fetched again.
            self.quarantine(path, f"store entry {path.name} does not hash to its name")
            return None
        return body

    def verify(self, sha256: str) -> bool:
        """Whether the entry ``sha256`` is there and whole; a damaged one is quarantined."""
        return self.get(sha256) is not None

    def quarantine_place(self, name: str) -> Path:
        """A free place in ``store/quarantine/`` for something called ``name``: stamped with
        the time, numbered when that is taken."""
        folder = self.root / QUARANTINE_DIR
        refuse_symlinks(folder, self.root)  # nothing is moved out of data_dir through a link
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        place = folder / f"{stamp}-{name}"
        for n in range(1, 1000):
            if not place.exists():
                break
            place = folder / f"{stamp}-{n}-{name}"
        return place

    def quarantine(self, path: Path, why: str) -> Path:
        """Move ``path`` to ``store/quarantine/`` (not deleted: a person may want to look) and
        log why; returns its new place."""
        dest = self.quarantine_place(path.name)
        try:
            os.replace(path, dest)
        except FileNotFoundError:
            return dest  # another process moved it first
        except OSError:  # another filesystem
            shutil.move(path, dest)
        log.warning("%s: moved to %s; it is made again from a whole copy or fetched again", why, dest)
        return dest

    def put(self, body: bytes, sha256: str | None = None) -> str:
        """Store ``body`` (atomically, once); return its sha256."""
        digest = sha256 or hashlib.sha256(body).hexdigest()
        path = self.path(digest)
        if path.is_file() and path.stat().st_size == len(body):
            return digest
        refuse_symlinks(path.parent, self.root)  # store/<xx> linked elsewhere: not written through
        path.parent.mkdir(parents=True, exist_ok=True)
        # Unique per call (host, pid, random): two threads may store the same banner at once.
        if path.is_dir():  # a folder under the entry's name: the rename below would fail for ever
            self.quarantine(path, f"store entry {path.name} is a folder, not an image")
        tmp = temporary_sibling(path)
        try:
            tmp.write_bytes(body)
            os.replace(tmp, path)
        except BaseException:
            remove_path(tmp)
            raise
        return digest

    def entries(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            if folder.is_dir() and not folder.is_symlink() and len(folder.name) == 2:
                for path in sorted(folder.iterdir()):
                    if path.name.endswith(SUFFIX) and SHA256.fullmatch(path.name[: -len(SUFFIX)]):
                        yield path

    def sweep_temporaries(self) -> int:
        """Remove what killed writers left half-written (a live writer's stay); return how many."""
        if not self.root.is_dir():
            return 0
        leftovers = [
            path
            for folder in self.root.iterdir()
            if folder.is_dir() and not folder.is_symlink()  # what a link leads to is not ours
            for path in folder.iterdir()
            if TMP_MARK in path.name
        ]
        return len(remove_dead_temporaries(leftovers))

    # -- which URL served which body
    def _urls_file(self, wnid: str) -> Path:
        return self.root / URLS_DIR / f"{wnid}.csv"

    def stored_urls(self, wnid: str) -> dict[str, StoredUrl]:
        """URL -> what it served, for every good body of synset ``wnid`` ever stored."""
        path = self._urls_file(wnid)
        found: dict[str, StoredUrl] = {}
        if not path.is_file():
            return found
        with path.open(encoding="utf-8", errors="surrogateescape", newline="") as src:
            for row in csv.reader(src):
                if len(row) != 4 or not SHA256.fullmatch(row[2]) or row[3] != _url_check(*row[:3]):
                    continue  # a torn line
                found[row[0]] = StoredUrl(row[0], row[1], row[2])
        return found

    def remember_url(self, wnid: str, url: str, final_url: str, sha256: str) -> None:
        """Record that ``url`` served the stored body ``sha256`` (after its body is stored)."""
        data = _url_lines([StoredUrl(url, final_url, sha256)])
        path = self._urls_file(wnid)
        refuse_symlinks(path.parent, self.root)
        path.parent.mkdir(parents=True, exist_ok=True)
        # One write to an O_APPEND file: lines of concurrent writers do not interleave.
        with self._lock:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    # -- bounded growth
    def prune(self, referenced: Iterable[str]) -> PruneReport:
        """Remove every entry not in ``referenced`` (and the URL lines that named it).

        Run it when no fetch is running on this data_dir: a body stored a moment ago
        and not yet named by any result would go too (it would be fetched again).
        """
        keep = set(referenced)
        kept = kept_bytes = removed = freed = 0
        temporaries = self.sweep_temporaries()
        for path in list(self.entries()):
            size = path.stat().st_size
            if path.name[: -len(SUFFIX)] in keep:
                kept, kept_bytes = kept + 1, kept_bytes + size
                continue
            path.unlink()
            removed, freed = removed + 1, freed + size
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only when empty
        urls_dir = self.root / URLS_DIR
        if urls_dir.is_dir():
            refuse_symlinks(urls_dir, self.root)
            for path in sorted(urls_dir.glob("*.csv")):
                rows = [entry for entry in self.stored_urls(path.stem).values() if entry.sha256 in keep]
                before = path.stat().st_size
                if rows:
                    tmp = temporary_sibling(path)
                    tmp.write_bytes(_url_lines(rows))
                    os.replace(tmp, path)
                else:
                    path.unlink()
                freed += before - (path.stat().st_size if path.exists() else 0)
        return PruneReport(kept, kept_bytes, removed, freed, temporaries)


# --------------------------------------------------------------------------- the images/ view


def _is_own_copy(path: Path, sha256: str) -> bool:
    """Is ``path`` a file of its own (no other hard link: not the store entry nor anyone's)
    holding the body ``sha256``?"""
    try:
        if path.is_symlink() or path.stat().st_nlink != 1:
            return False
        return hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False


def place(store: ImageStore, sha256: str, target: Path) -> bool:
    """Make ``target`` a copy of the stored body, checked against its sha256 as it is read.

    A copy, not a hard link: an image edited in images/ must not change the store, and a
    store entry rotting on disk must not change a published image.  Atomic (a temporary
    name, then a rename).  False, with nothing written, when the entry is missing or
    damaged (``ImageStore.get`` quarantines a damaged one).
    """
    body = store.get(sha256)
    if body is None:
        return False
    tmp = temporary_sibling(target)
    try:
        tmp.write_bytes(body)
        os.replace(tmp, target)
    except BaseException:
        remove_path(tmp)
        raise
    return True


def is_intact(
    path: Path, size: int, sha256: str, written_at: float | None = None, *, own_copy: bool = False
) -> bool:
    """Whether ``path`` still holds the body of ``size`` bytes and digest ``sha256``.

    ``own_copy``: a file with another hard link (images/ linked into the store by an
    earlier version) is not: it changes whenever the store entry does.

    A file of another size is not.  One modified after ``written_at`` (when the record naming
    it was written) -- edited in place, perhaps through a hard link -- is hashed; the others
    are not read, so that a task's ``complete()`` stays cheap on a large sample.
    """
    try:
        stat = path.stat()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return False
    if stat.st_size != size or (own_copy and stat.st_nlink != 1):
        return False
    if written_at is not None and stat.st_mtime > written_at:
        return hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    return True


class MissingFromStore(RuntimeError):
    """A listed image is neither in the store nor in images/: rerun to fetch it again."""


def make_view(store: ImageStore, images_dir: Path, wanted: Mapping[str, str]) -> dict[str, list[str]]:
    """Make ``images_dir`` hold exactly ``wanted`` (file name -> sha256), copied from the store.

    Every body published is checked against its sha256 on the way.  A file already there
    with the right bytes stays (and goes back into the store if the store lost it); one
    with other bytes (edited in images/) is moved to ``store/quarantine/``, not lost;
    anything else in ``images_dir`` is removed.  Returns what was placed and removed.
    Raises ``MissingFromStore`` when a wanted body is nowhere whole (a damaged store entry
    is quarantined on the way): no file with the wrong bytes stays under a wanted name.
    """
    refuse_symlinks(images_dir, images_dir.parent)  # it would clear the folder a link leads to
    images_dir.mkdir(parents=True, exist_ok=True)
    placed: list[str] = []
    missing: list[str] = []
    for name, sha256 in wanted.items():
        target = images_dir / name
        if _is_own_copy(target, sha256):
            if not store.has(sha256):
                store.put(target.read_bytes(), sha256)  # images/ outlived the store entry: keep it there too
            continue
        if target.is_file() and not target.is_symlink() and target.stat().st_nlink == 1:
            store.quarantine(target, f"{name} in {images_dir} does not hold the body the manifest names")
        elif target.is_dir() and not target.is_symlink():  # the rename below cannot replace it
            store.quarantine(target, f"{name} in {images_dir} is a folder, not the image the manifest names")
        elif target.is_file() and not store.has(sha256):
            # A hard link (an older images/ was linked into the store): the store lost its entry.
            body = target.read_bytes()
            if hashlib.sha256(body).hexdigest() == sha256:
                store.put(body, sha256)
        if place(store, sha256, target):
            placed.append(name)
        else:
            remove_path(target)  # a link to a damaged or lost body: nothing wrong is published
            missing.append(name)
    removed = []
    for path in sorted(images_dir.iterdir()):
        if path.name not in wanted:
            remove_path(path)
            removed.append(path.name)
    if missing:
        raise MissingFromStore(
            f"{len(missing)} listed images are neither in {store.root} nor in {images_dir}, whole "
            f"(e.g. {missing[0]}): rerun the same command to fetch them again"
        )
    return {"placed": placed, "removed": removed}
