"""DownloadUrlTarball's work: fetch the URL tarball from the first mirror that works.

The original address has answered 404 since 2019, so mirrors are tried in
order.  An interrupted HTTP download resumes with a Range request from the
``.part`` file it left; a server that ignores Range simply starts over.  What
arrives is checked to be a complete gzip'd tar holding ``fall11_urls.txt``
before it takes the output's name.  Each HTTP attempt runs under a whole-download
deadline, and no mirror may send more than ``max_bytes`` (the published tarball
is 334 MB; an endless mirror would otherwise fill the disk).
"""

from __future__ import annotations

import logging
import os
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import requests
from isal import igzip

from sampler.atomic import fsync_path, remove_path
from sampler.deadline import DeadlineExceeded, deadline_guard
from sampler.progress import ProgressCallback, human_bytes, no_progress
from sampler.sources import SourceError, local_path, new_session

log = logging.getLogger(__name__)

URL_LIST_MEMBER = "fall11_urls.txt"
# The tarball's public homes: the original has answered 404 since 2019; the Internet
# Archive's raw snapshot (id_) serves the file itself.
ORIGINAL_ADDRESS = "http://image-net.org/imagenet_data/urls/imagenet_fall11_urls.tgz"
ARCHIVE_SNAPSHOT = f"http://web.archive.org/web/20190130005544id_/{ORIGINAL_ADDRESS}"
CHUNK = 1 << 20
MAX_BYTES = 1_000_000_000  # three times the published 334 MB
DEADLINE = 2 * 3600.0  # per attempt: 334 MB at 50 kB/s; an interrupted attempt resumes


class TooLarge(SourceError):
    """A mirror announced or sent more than the size cap: retrying it cannot help."""


class TarballError(RuntimeError):
    """The tarball is missing, broken or not the URL list."""


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _hostile(info: tarfile.TarInfo) -> str | None:
    """Why a member has no place in the URL tarball (nothing is ever extracted, but such a
    tarball is not the published one): a path out of the archive, a link, a device."""
    if info.name.startswith("/") or ".." in PurePosixPath(info.name).parts:
        return f"{info.name!r} points outside the archive"
    if info.issym() or info.islnk():
        return f"{info.name!r} is a link to {info.linkname!r}"
    if info.isdev():
        return f"{info.name!r} is a device or FIFO"
    return None


def verify_url_tarball(path: Path, member: str = URL_LIST_MEMBER) -> int:
    """Check that ``path`` is a complete gzip'd tar with a regular file ``member`` at its top.

    Reads the whole stream, so a truncated gzip or a bad CRC is caught.  Refuses a tar
    with members that point outside it, links or devices, and one with several files
    named ``member`` (the index would not know which to read).  Returns the member's
    size.  Raises TarballError naming the problem.
    """
    found: int | None = None
    names: list[str] = []
    hostile: list[str] = []
    same_name = 0
    try:
        with igzip.open(path, "rb") as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
            for info in tar:
                names.append(info.name)
                why = _hostile(info)
                if why is not None:
                    hostile.append(why)
                if PurePosixPath(info.name).name == member:
                    same_name += 1
                    top = info.name
                    while top.startswith("./"):
                        top = top[2:]
                    if top == member and info.isreg():
                        found = info.size
                # Draining every member is what makes gzip verify its CRC and length.
                stream = tar.extractfile(info) if info.isreg() else None
                if stream is not None:
                    while stream.read(CHUNK):
                        pass
            while gz.read(CHUNK):  # trailing padding or garbage still has to decompress cleanly
                pass
    except (OSError, EOFError, tarfile.TarError, ValueError) as error:
        raise TarballError(f"{path.name} is not a complete gzip'd tar: {error}") from error
    if hostile:
        raise TarballError(f"{path.name} is not the URL tarball: " + "; ".join(hostile[:5]))
    if found is None:
        shown = ", ".join(names[:5]) or "no members"
        raise TarballError(f"{path.name} has no regular file {member} (members: {shown})")
    if same_name > 1:
        raise TarballError(f"{path.name} holds {same_name} members named {member}")
    return found


def _copy_local(source: Path, part: Path, progress: ProgressCallback) -> None:
    if not source.is_file():
        raise SourceError(f"no such file: {source}")
    total = source.stat().st_size
    done = 0
    with source.open("rb") as src, part.open("wb") as dst:
        while chunk := src.read(CHUNK):
            dst.write(chunk)
            done += len(chunk)
            progress(100 * done / max(total, 1), f"copied {human_bytes(done)} of {human_bytes(total)}")


def _download_http(
    url: str,
    part: Path,
    progress: ProgressCallback,
    *,
    timeout: float,
    session: requests.Session,
    max_bytes: int = MAX_BYTES,
) -> None:
    """Download ``url`` into ``part``, resuming from its current size when the server allows."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416 and have:
            if response.headers.get("Content-Range", "").strip() == f"bytes */{have}":
                # Complete already (a run killed while verifying it): verify, do not download again.
                log.info("%s: the partial download is already complete (%s)", url, human_bytes(have))
                return None
            # Our partial file is longer than the resource: start over.
            log.info("%s refused range %d-: starting over", url, have)
            part.unlink()
            return _download_http(url, part, progress, timeout=timeout, session=session, max_bytes=max_bytes)
        if response.status_code == 206 and have:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {have}-"):
                raise SourceError(f"{url} answered a range we did not ask for: {content_range!r}")
            mode = "ab"
            size = content_range.rsplit("/", 1)[-1]
            total = int(size) if size.isdigit() else None  # "bytes N-M/*": size unknown
            log.info("resuming %s at %s", url, human_bytes(have))
        elif response.status_code == 200:
            if have:
                log.info("%s ignores Range: downloading from the start", url)
            have, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        else:
            raise SourceError(f"{url} answered HTTP {response.status_code}")
        if total is not None and total > max_bytes:
            raise TooLarge(f"{url} announces {total:,} bytes, over the {max_bytes:,}-byte cap")
        done = have
        with part.open(mode) as out:
            for chunk in response.iter_content(CHUNK):
                out.write(chunk)
                done += len(chunk)
                if done > max_bytes:
                    raise TooLarge(f"{url} sent more than the {max_bytes:,}-byte cap")
                if total:
                    progress(100 * done / total, f"downloaded {human_bytes(done)} of {human_bytes(total)}")
                else:  # size unknown: progress against the cap, so an endless mirror shows
                    progress(
                        100 * done / max_bytes,
                        f"downloaded {human_bytes(done)} (cap {human_bytes(max_bytes)})",
                    )
        if total is not None and done < total:
            raise SourceError(f"{url} stopped after {done:,} of {total:,} bytes")


def _download_within(
    url: str, part: Path, progress: ProgressCallback, timeout: float, deadline: float, max_bytes: int
) -> None:
    """One HTTP attempt under a whole-download deadline (what arrived stays in ``part``)."""
    late = SourceError(f"{url}: not downloaded within {deadline:g} s")
    with deadline_guard(deadline) as guard:
        try:
            with new_session() as session:
                _download_http(url, part, progress, timeout=timeout, session=session, max_bytes=max_bytes)
        except (requests.RequestException, DeadlineExceeded) as error:
            if guard.expired:
                raise late from error
            raise
        if guard.expired:  # the deadline's shutdown ends a close-delimited body like EOF
            raise late


def download_url_tarball(
    mirrors: Sequence[str],
    dest: Path,
    *,
    progress: ProgressCallback = no_progress,
    timeout: float = 60.0,
    deadline: float = DEADLINE,
    max_bytes: int = MAX_BYTES,
    attempts_per_mirror: int = 3,
    retry_pause: float = 2.0,
) -> str:
    """Fetch the tarball from the first mirror that yields a valid one; return that mirror.

    The output appears at ``dest`` only once verified.  A ``.part`` file next to
    it carries an interrupted HTTP download over to the next attempt, mirror or
    run (mirrors serve the same bytes; verification catches any that do not).
    """
    if not mirrors:
        raise TarballError("no mirrors configured for the URL tarball")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(dest)
    failures: list[str] = []
    for mirror in mirrors:
        try:
            path = local_path(mirror)
        except SourceError as error:
            failures.append(str(error))
            continue
        for attempt in range(1, attempts_per_mirror + 1):
            resumed = path is None and part.exists() and part.stat().st_size > 0
            try:
                if path is not None:
                    _copy_local(path, part, progress)
                else:
                    _download_within(mirror, part, progress, timeout, deadline, max_bytes)
                progress(100, "verifying the tarball")
                verify_url_tarball(part)
                fsync_path(part)
                os.replace(part, dest)
                return mirror
            except TarballError as error:
                remove_path(part)
                if resumed and attempt < attempts_per_mirror:
                    # A stale or damaged partial file from an earlier run: download it whole once.
                    log.warning("mirror %s: resumed download is broken (%s); starting over", mirror, error)
                    continue
                # Complete but wrong bytes from the start: retrying this mirror cannot help.
                failures.append(f"{mirror}: {error}")
                break
            except (SourceError, requests.RequestException, OSError) as error:
                log.warning("mirror %s, attempt %d: %s", mirror, attempt, error)
                if isinstance(error, TooLarge):
                    remove_path(part)  # never keep (nor resume) an endless download
                if (
                    path is not None
                    or isinstance(error, TooLarge)
                    or (isinstance(error, SourceError) and "answered HTTP 4" in str(error))
                ):
                    failures.append(f"{mirror}: {error}")
                    break  # a local file or a 4xx will not get better by retrying
                if attempt == attempts_per_mirror:
                    failures.append(f"{mirror}: {error}")
                else:
                    time.sleep(retry_pause * attempt)
    raise TarballError("no mirror gave a valid URL tarball:\n  " + "\n  ".join(failures))


__all__ = ["TarballError", "download_url_tarball", "partial_path", "verify_url_tarball"]
