"""Atomic outputs: nothing half-written ever carries an output's name.

Modelled on luigi's ``LocalTarget.temporary_path``: write to a sibling temporary
name, rename into place on success, delete on failure.  Unlike luigi's, the
temporary name has a recognisable mark and names its owner (host and process id),
so that a rerun after a crash (kill -9 leaves no chance to clean up) can find and
remove the leftovers of dead processes, and only those: another process writing
into the same data_dir keeps its temporaries.  Another machine's process is judged by
its leases (``sampler.lease``): its host's temporaries stay while any process of that
host renews a lease in the data_dir.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from sampler.lease import host_name, may_still_write

TMP_MARK = ".tmp-"
_HOST = host_name()


def temporary_sibling(path: Path) -> Path:
    """A temporary name next to ``path`` (same filesystem, so rename is atomic), unique to
    this process and this call: ``<name>.tmp-<host>-<pid>-<random>``."""
    return path.with_name(f"{path.name}{TMP_MARK}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")


def owner_is_alive(temporary: Path) -> bool:
    """Whether the process that made ``temporary`` may still be writing it (its name names
    the owner; ``sampler.lease`` judges whether that process may still write)."""
    owner = temporary.name.rpartition(TMP_MARK)[2]
    parts = owner.split("-")
    if len(parts) == 3:
        host, pid = parts[0], parts[1]
    elif len(parts) == 1:  # the older <pid>-only form: this host's
        host, pid = _HOST, parts[0]
    else:
        return False
    return may_still_write(temporary, host, int(pid) if pid.isdigit() else None)


def remove_dead_temporaries(paths: list[Path]) -> list[Path]:
    """Remove those of ``paths`` (temporaries) whose owner is no longer alive."""
    removed = []
    for leftover in paths:
        if not owner_is_alive(leftover):
            remove_path(leftover)
            removed.append(leftover)
    return removed


# Every folder the pipeline writes, clears or replaces directly under data_dir.
OUTPUT_FOLDERS = (
    "download", "urls", "synsets", "sample", "fetch", "store", "images", "export",
    "report", "gallery", "contact_sheet", "request-slots", ".locks", ".leases", "runs", "exports",
)  # fmt: skip


class SymlinkedOutput(OSError):
    """An output folder (or a folder between it and data_dir) is a symbolic link."""


def refuse_symlinks(path: Path, root: Path) -> None:
    """Raise ``SymlinkedOutput`` if ``path`` or a folder between ``root`` and it is a link.

    ``root`` (data_dir) may itself be a link (``/data -> /mnt/big``): only what lies under
    it is checked.  The pipeline writes, clears and replaces its output folders; through a
    link it would delete files that are not its own, outside data_dir.
    """
    path, root = Path(path), Path(root)
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        raise SymlinkedOutput(f"{path} is not under data_dir {root}: nothing is written there") from None
    current = root
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise SymlinkedOutput(
                f"{current} is a symbolic link (to {os.readlink(current)}): the pipeline writes, "
                "replaces and deletes files in its output folders and will not do so through a "
                "link out of data_dir. Replace the link by a real folder; to keep the outputs "
                "on another disk, point --paths-data-dir ([paths] data_dir in luigi.cfg) at a "
                "folder there instead (data_dir itself may be a link)"
            )


# Output folders whose subfolders the pipeline writes into too (store/<xx>/, store/urls/,
# store/quarantine/, fetch/<configuration>/round<N>/, request-slots/limit/): a link among them leads out of
# data_dir as surely as a linked output folder.  images/ and store/<xx>/ hold files only (each
# replaced by a rename, never written through), so their thousands are not listed.  export/
# is not either: a user's export/latest -> <name> harms nothing, and the export being written
# is refused by atomic_path(directory=True) if it is a link.
# runs/<run>/ and its report/, images/...: FetchFives and the reports write a configuration's
# files there (a linked run folder had its manifest, images/ and report rewritten out there).
NESTED_OUTPUT_FOLDERS = {"store": 1, "fetch": 3, "request-slots": 1, "runs": 2}  # name -> how deep to look


def _linked_subfolder(folder: Path, depth: int) -> Path | None:
    """The first symbolic link among ``folder``'s entries down to ``depth`` levels, if any."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:  # absent, not a folder: nothing written there through a link yet
        return None
    for entry in entries:
        if entry.is_symlink():
            return Path(entry.path)
        if depth > 1 and entry.is_dir(follow_symlinks=False):
            found = _linked_subfolder(Path(entry.path), depth - 1)
            if found is not None:
                return found
    return None


def refuse_symlinked_outputs(data_dir: Path | str) -> None:
    """``refuse_symlinks`` for every folder in ``OUTPUT_FOLDERS`` and the subfolders of
    ``NESTED_OUTPUT_FOLDERS`` (a few lstat calls and directory listings)."""
    root = Path(data_dir)
    if root.is_symlink() and not root.exists():  # mkdir would say "File exists", or loop
        raise SymlinkedOutput(
            f"data_dir {root} is a symbolic link to {os.readlink(root)}, which does not exist (or "
            "leads round in a loop): make that folder, or point --paths-data-dir ([paths] data_dir "
            "in luigi.cfg) at a real one"
        )
    for name in OUTPUT_FOLDERS:
        refuse_symlinks(Path(data_dir, name), Path(data_dir))
    for name, depth in NESTED_OUTPUT_FOLDERS.items():
        linked = _linked_subfolder(Path(data_dir, name), depth)
        if linked is not None:
            refuse_symlinks(linked, Path(data_dir))


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete temporaries that a crashed earlier attempt at ``path`` left behind (a live
    process's temporaries stay: it may be writing ``path`` right now)."""
    if not path.parent.is_dir():
        return []
    return remove_dead_temporaries(list(path.parent.glob(f"{path.name}{TMP_MARK}*")))


# The whole name's tail as temporary_sibling writes it (<host>-<pid>-<8 hex>), or the older
# <pid>-only form: a file whose name merely contains ".tmp-" (a label) is not a temporary.
_TEMPORARY_NAME = re.compile(re.escape(TMP_MARK) + r"(?:[^-/]+-\d+-[0-9a-f]{8}|\d+)$")


def is_temporary(path: Path) -> bool:
    """Whether ``path``'s name is one that ``temporary_sibling`` makes."""
    return _TEMPORARY_NAME.search(path.name) is not None


# What the pipeline writes directly in data_dir besides OUTPUT_FOLDERS.
OUTPUT_FILES = ("manifest.csv", "attempts.csv", "fetch_summary.json", "contact_sheet.jpg")


def sweep_dead_temporaries(root: Path) -> list[Path]:
    """Remove every temporary the pipeline left under ``root`` (data_dir) whose owner is dead.

    A temporary is removed whole and never entered; symlinks are not followed (what a link
    points to is not under ``root``), and a live owner's temporaries stay.  For a rerun after
    a crash: a kill -9 leaves its temporaries anywhere, including beside outputs that no
    later run asks for.  Only the pipeline's own places are searched, at any depth: its
    output folders and the temporaries of its outputs directly in ``root``.  data_dir may
    also hold the user's files, and a name that merely ends like a temporary's
    (``notes.tmp-2024``) is not a crashed run's leftover.
    """
    found: list[Path] = []
    folders: list[Path] = []
    for entry in _entries(root):
        path = Path(entry.path)
        if is_temporary(path):
            if path.name.rpartition(TMP_MARK)[0] in OUTPUT_FOLDERS + OUTPUT_FILES:
                found.append(path)
        elif entry.name in OUTPUT_FOLDERS and entry.is_dir(follow_symlinks=False):
            folders.append(path)
    while folders:
        for entry in _entries(folders.pop()):
            path = Path(entry.path)
            if is_temporary(path):
                found.append(path)
            elif entry.is_dir(follow_symlinks=False):
                folders.append(path)
    return remove_dead_temporaries(found)


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path | str, *, directory: bool = False, clean_stale: bool = True) -> Iterator[Path]:
    """Yield a temporary path; on success it is renamed to ``path``.

    With ``directory=True`` the temporary is created as an empty directory and
    the whole directory appears at once.  An existing ``path`` is replaced.
    """
    path = Path(path)
    if directory and path.is_symlink():  # the folder it leads to is not ours to replace
        refuse_symlinks(path, path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    if clean_stale:  # callers writing many files to one folder sweep it once instead
        remove_stale_temporaries(path)
    tmp = temporary_sibling(path)
    remove_path(tmp)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        if directory:
            for child in tmp.iterdir():
                if child.is_file():
                    fsync_path(child)
            # A folder cannot replace a non-empty one in one rename: move the old one aside
            # (one rename, under a temporary name a later write sweeps if we die), then
            # delete it.  Deleting it in place let a kill leave it half-deleted under its name.
            if path.exists():
                aside = temporary_sibling(path)
                os.replace(path, aside)
                try:
                    os.replace(tmp, path)
                except BaseException:
                    os.replace(aside, path)  # the old one back, whole
                    raise
                remove_path(aside)
                return
        else:
            fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise


def atomic_write_bytes(path: Path | str, data: bytes, *, clean_stale: bool = True) -> None:
    with atomic_path(path, clean_stale=clean_stale) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
