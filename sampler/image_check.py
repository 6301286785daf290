"""Is this body a complete, real JPEG photo?  ``judge_image(body) -> ImageVerdict``.

The bytes are judged, never the Content-Type: dead hosts serve HTML error pages
and PNG placeholders as ``image/jpeg``.  A kept image must start with the JPEG
magic bytes, decode completely with Pillow, end its scan data with an EOI
marker, be no tracking pixel and no decompression bomb.  Placeholders that
*are* valid JPEGs are caught by hash (``config/placeholders.csv``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

# Load Pillow's common format plugins now, at import: otherwise every luigi task process
# (forked per task) would import them again on its first Image.open.
Image.preinit()

OK = "ok"
EMPTY = "empty"
NOT_JPEG = "not_jpeg"  # no FF D8 FF magic (PNG, GIF, HTML...) or Pillow sees another format
TRUNCATED = "truncated"  # scan data cut off: no EOI, or Pillow ran out of data
DECODE_ERROR = "decode_error"  # corrupt data Pillow cannot decode
DECOMPRESSION_BOMB = "decompression_bomb"  # header claims more than max_pixels
TOO_SMALL = "too_small"  # min(width, height) < min_side: tracking pixels, spacers

OUTCOMES = (OK, EMPTY, NOT_JPEG, TRUNCATED, DECODE_ERROR, DECOMPRESSION_BOMB, TOO_SMALL)

# The smallest genuine images in the 2017 sample are 80x60 and 40x122 pixels, so 32
# rejects 1x1 trackers and spacer GIF-alikes with margin to spare.
MIN_SIDE = 32
# 50 MP is far above any photo of 2011 (the sample's largest is 6 MP) and bounds the
# memory of one decode to about 150 MB (RGB).
MAX_PIXELS = 50_000_000

_JPEG_MAGIC = b"\xff\xd8\xff"
_HEX = re.compile(r"^(?:[0-9a-f]{32}|[0-9a-f]{64})$")


@dataclass(frozen=True)
class ImageVerdict:
    outcome: str
    width: int
    height: int
    md5: str  # hex digests of the body; "" for an empty body
    sha256: str
    detail: str = ""  # why it was rejected, for the attempt log


def load_placeholder_hashes(path: str | Path) -> set[str]:
    """Lower-case hex digests from a CSV with header ``md5,description``.

    The ``md5`` column may also hold sha256 digests (64 hex digits), e.g. hashes
    learned from a previous run.  Blank rows and rows starting with ``#`` are skipped.
    """
    hashes: set[str] = set()
    with Path(path).open(encoding="utf-8", newline="") as src:
        reader = csv.DictReader(src)
        if not reader.fieldnames or "md5" not in reader.fieldnames:
            raise ValueError(f"{path}: expected a header with an 'md5' column, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            digest = (row.get("md5") or "").strip().lower()
            if not digest or digest.startswith("#"):
                continue
            if not _HEX.match(digest):
                raise ValueError(f"{path}:{line}: not an md5/sha256 hex digest: {digest!r}")
            hashes.add(digest)
    return hashes


def is_known_placeholder(md5: str, sha256: str, known: set[str]) -> bool:
    """True when either digest is in ``known`` (lower-case hex)."""
    return bool((md5 and md5.lower() in known) or (sha256 and sha256.lower() in known))


def _scan_has_eoi(body: bytes) -> bool:
    """Walk the marker segments to the first top-level SOS and look for EOI after it.

    Entropy-coded data cannot contain FF D9 (FF is byte-stuffed), so a file whose
    scan data was cut off has no EOI after its first scan.  Walking the segments
    skips EXIF thumbnails, which carry their own SOS/EOI inside APP1.  Trailers after
    EOI (MPO, camera data) do no harm.  This catches truncation even where Pillow
    would not (``ImageFile.LOAD_TRUNCATED_IMAGES`` set by other code).
    """
    i, n = 2, len(body)
    while i + 1 < n:
        if body[i] != 0xFF:
            i += 1  # junk between segments: decoders skip it, so do we
            continue
        marker = body[i + 1]
        if marker == 0xFF:
            i += 1  # fill byte
        elif marker == 0xDA:
            return body.find(b"\xff\xd9", i + 2) >= 0
        elif marker == 0xD9:
            return False  # EOI before any scan
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:
            i += 2  # markers without a length
        else:
            if i + 4 > n:
                return False
            i += 2 + int.from_bytes(body[i + 2 : i + 4], "big")
    return False


def judge_image(body: bytes, *, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> ImageVerdict:
    """Judge ``body`` as served; thread-safe (Pillow decodes release the GIL)."""
    if not body:
        return ImageVerdict(EMPTY, 0, 0, "", "", "empty body")
    md5 = hashlib.md5(body).hexdigest()
    sha256 = hashlib.sha256(body).hexdigest()

    def verdict(outcome: str, width: int = 0, height: int = 0, detail: str = "") -> ImageVerdict:
        return ImageVerdict(outcome, width, height, md5, sha256, detail)

    if not body.startswith(_JPEG_MAGIC):
        return verdict(NOT_JPEG, detail=f"starts with {body[:8]!r}")
    try:
        # Image.open reads only the header; Pillow raises DecompressionBombError here for
        # absurd sizes (over twice its MAX_IMAGE_PIXELS) - before any pixel is decoded.
        with Image.open(io.BytesIO(body), formats=("JPEG", "MPO")) as img:
            width, height = img.size
            if img.format not in ("JPEG", "MPO"):
                return verdict(NOT_JPEG, width, height, f"Pillow sees {img.format}")
            if width * height > max_pixels:
                return verdict(DECOMPRESSION_BOMB, width, height, f"{width}x{height} > {max_pixels} pixels")
            if min(width, height) < min_side:
                return verdict(TOO_SMALL, width, height, f"{width}x{height}, min side {min_side}")
            if not _scan_has_eoi(body):
                return verdict(TRUNCATED, width, height, "no EOI marker after the scan data")
            img.load()  # full decode: catches cut-off and corrupt scan data
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return verdict(DECOMPRESSION_BOMB, detail=str(exc)[:200])
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error...
        text = f"{type(exc).__name__}: {exc}"[:200]
        outcome = TRUNCATED if "truncated" in text.lower() else DECODE_ERROR
        return verdict(outcome, detail=text)
    return verdict(OK, width, height)
