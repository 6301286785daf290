"""Identifiers, file names, host names and CSV cells: text that leaves the pipeline.

ImageNet ids look like ``n02672831_1234`` (a WordNet id, an underscore, a
number).  Image files are named ``<image_id>_<label>.jpg`` as in the original
hand-made sample: spaces become underscores and everything else is kept, except
what is unsafe in a file name (``safe_label``, the one file-name sanitiser).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

WNID_RE = re.compile(r"n\d{8}")
IMAGE_ID_RE = re.compile(r"(n\d{8})_(\d+)")
# Path separators and their look-alikes (division, fraction and full-width slashes).
_SEPARATORS = frozenset("/\\\u2215\u2044\uff0f\uff3c\u29f8\u29f9")
MAX_LABEL_BYTES = 150  # keeps <image_id>_<label>.jpg well under the usual 255-byte limit
# A cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def unsafe_char(ch: str) -> bool:
    """Control (C0, DEL, C1, U+0085), format (bidi overrides, zero-width), surrogate,
    private-use or unassigned characters, and line/paragraph separators."""
    return unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp")


def label_problem(label: str) -> str | None:
    """Why ``label`` cannot be a category label, or None.

    Refused rather than cleaned: the label is the category's name in the manifest,
    the report and the contact sheet, so it must read the same everywhere.
    """
    bad = sorted({ch for ch in label if unsafe_char(ch)})
    if bad:
        names = ", ".join(f"U+{ord(ch):04X} {unicodedata.name(ch, '')}".strip() for ch in bad[:3])
        # "control" in the wide sense: also bidi overrides, zero-width and line-separator characters.
        return f"holds a control character ({names}): {label[:80]!r}"
    if label.startswith(_FORMULA_START):
        return (
            f"starts with {label[0]!r}, which a spreadsheet opening manifest.csv would run "
            f"as a formula: {label[:80]!r}"
        )
    return None


def spreadsheet_safe(cell: object) -> object:
    """A CSV cell a spreadsheet shows as text: ``'`` before a leading = + - @ TAB CR.

    OWASP's advice for CSV injection.  Used on text that comes from the web (URLs of
    the list, redirect targets, error messages); labels are refused at the input instead.
    """
    if isinstance(cell, str) and cell.startswith(_FORMULA_START):
        return "'" + cell
    return cell


class _Authority(NamedTuple):
    scheme: str  # lower-case
    host: str  # lower-case; "" when the URL names none
    port: int | None  # as written; None when it names none or names an invalid one
    port_valid: bool


def _authority(url: str) -> _Authority | None:
    """Where ``url`` points, or None when it cannot be parsed at all."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket: "http://[bad/x.jpg"
        return None
    try:
        port, port_valid = parts.port, True
    except ValueError:  # "host:99999", "host:abc"
        port, port_valid = None, False
    return _Authority(parts.scheme.lower(), parts.hostname or "", port, port_valid)


def host_of(url: str) -> str:
    """The host of ``url`` for per-host counts: lower-case, "(none)" or "(unparsable)"."""
    where = _authority(url)
    if where is None:
        return "(unparsable)"
    return where.host or "(none)"


def host_port(url: str) -> str | None:
    """``host:port`` of an http(s) URL (default port filled in), or None.

    The key for what is per server: hosts found dead, request slots.
    """
    where = _authority(url)
    if where is None or not where.host or not where.port_valid or where.scheme not in ("http", "https"):
        return None
    return f"{where.host}:{where.port or (443 if where.scheme == 'https' else 80)}"


def is_wnid(text: str) -> bool:
    return WNID_RE.fullmatch(text) is not None


def wnid_of(image_id: str) -> str:
    """The synset part of an image id (``n02672831_1234`` -> ``n02672831``)."""
    match = IMAGE_ID_RE.fullmatch(image_id)
    if match is None:
        raise ValueError(f"not an ImageNet image id (expected n########_#): {image_id!r}")
    return match.group(1)


def safe_label(label: str) -> str:
    """A label as it appears in a file name: ``ping-pong ball`` -> ``ping-pong_ball``.

    NFC (one spelling per name on every file system); whitespace, separators and
    control characters become ``_``; format characters (bidi overrides, zero-width)
    are dropped, so a name cannot display differently from what it is.
    """
    chars = []
    for ch in unicodedata.normalize("NFC", label.strip()):
        if unicodedata.category(ch) in ("Cf", "Cn", "Co", "Cs"):
            continue
        chars.append("_" if ch.isspace() or ch in _SEPARATORS or unsafe_char(ch) else ch)
    text = "".join(chars)
    # ".." anywhere could be read as a parent directory by careless tools downstream.
    while ".." in text:
        text = text.replace("..", "_")
    text = text.strip(".") or "unlabelled"
    encoded = text.encode("utf-8")[:MAX_LABEL_BYTES]
    return encoded.decode("utf-8", errors="ignore")


def image_files(folder: Path, label: str, named_by: Iterable[tuple[str, str]]) -> dict[str, Path]:
    """URL -> its image file in ``folder`` (``image_filename``), for (image_id, url) pairs;
    the first pair of a URL names it."""
    files: dict[str, Path] = {}
    for image_id, url in named_by:
        files.setdefault(url, folder / image_filename(image_id, label))
    return files


def image_filename(image_id: str, label: str) -> str:
    """``n03942813_2634`` + ``ping-pong ball`` -> ``n03942813_2634_ping-pong_ball.jpg``."""
    wnid_of(image_id)  # refuses anything that is not an image id, so no path tricks
    return f"{image_id}_{safe_label(label)}.jpg"
