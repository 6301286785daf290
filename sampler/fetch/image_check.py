"""Is this body a complete, real JPEG photo?  ``judge_image(body) -> ImageVerdict``.

The bytes are judged, never the Content-Type: dead hosts serve HTML error pages
and PNG placeholders as ``image/jpeg``.  A kept image must start with the JPEG
magic bytes, end its scan data with an EOI marker, be no tracking pixel and no
decompression bomb, declare no more pixels than its bytes can plausibly fill,
carry no archive, page or program after its EOI, and decode without a single
libjpeg warning.  Placeholders that *are* valid JPEGs are caught by hash
(``config/placeholders.csv``).  The body itself is never changed: what is kept
is byte for byte what was served.

Why simplejpeg (libjpeg-turbo) decodes instead of Pillow: Pillow treats libjpeg's
warnings ("Premature end of JPEG file", "Corrupt JPEG data") as success, so a
photo cut at 10% with FF D9 appended decodes to flat grey and passes; simplejpeg's
``strict`` mode turns every warning into an error.  It also decodes at 1/8 scale
(libjpeg's DCT scaling, what Pillow's draft mode uses), which still reads every
entropy-coded byte but allocates 1/64 of the pixels.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import simplejpeg
from PIL import Image

from sampler.outcomes import NO_EOI_MESSAGE, Outcome, decoder_says_cut

# Load Pillow's common format plugins now, at import: otherwise every luigi task process
# (forked per task) would import them again on its first Image.open.
Image.preinit()

# The smallest genuine images in the 2017 sample are 80x60 and 40x122 pixels, so 32
# rejects 1x1 trackers and spacer GIF-alikes with margin to spare.
MIN_SIDE = 32
# 50 MP is far above any photo of 2011 (the sample's largest is 6 MP) and bounds the
# memory of one decode to about 150 MB (RGB).
MAX_PIXELS = 50_000_000

# The sparsest real photo among 1,000 ImageNet JPEGs has 0.041 bytes per pixel; a JPEG
# cannot code a 16x16 colour block (one MCU) in much under a byte.  1/256 byte per
# pixel is 10x below the sparsest photo; a 700-byte file claiming 7000x7000 has 1/70,000.
MIN_BYTES_PER_PIXEL = 1 / 256
# What one check may allocate: a progressive JPEG's decoder holds every DCT coefficient
# (2 bytes each) whatever the output scale; baseline decodes at 1/8 need far less.
MAX_CHECK_BYTES = 50_000_000
# Bytes after EOI: CR/LF or padding from old tools is common (2 of the 1,000 photos);
# more than this without a known signature is still no photo's business.
MAX_TRAILER = 64 * 1024
# Signatures of things that make a JPEG a polyglot (name, bytes); lower-case ones in any case.
_EMBEDDED_SIGNATURES = (
    ("ZIP", b"PK\x03\x04"), ("ZIP", b"PK\x05\x06"), ("RAR", b"Rar!\x1a\x07"), ("7z", b"7z\xbc\xaf\x27\x1c"),
    ("gzip", b"\x1f\x8b\x08"), ("xz", b"\xfd7zXZ\x00"), ("PDF", b"%pdf-"), ("HTML", b"<html"),
    ("HTML", b"<!doctype"), ("HTML", b"<script"), ("HTML", b"<body"), ("PHP", b"<?php"), ("XML", b"<?xml"),
    ("SVG", b"<svg"), ("ELF", b"\x7felf"), ("PNG", b"\x89png"), ("GIF", b"gif89a"), ("GIF", b"gif87a"),
    ("tar", b"ustar"),
)  # fmt: skip

_JPEG_MAGIC = b"\xff\xd8\xff"
_HEX = re.compile(r"^(?:[0-9a-f]{32}|[0-9a-f]{64})$")


@dataclass(frozen=True)
class ImageVerdict:
    outcome: Outcome
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


@dataclass
class _Structure:
    end: int | None = None  # offset just past the EOI that ends the image; None: no EOI after a scan
    progressive: bool = False
    coefficient_bytes: int = 0  # what a decoder holding every DCT coefficient needs


def _walk(body: bytes, start: int = 2) -> _Structure:
    """Walk the marker segments and scans of the JPEG that starts at ``start - 2``.

    Entropy-coded data cannot contain FF followed by anything but 00 (stuffing) or
    D0-D7 (restart markers), so the first other marker after a scan ends it; the
    first EOI after a scan ends the image.  Walking the segments skips EXIF
    thumbnails, which carry their own SOS/EOI inside APP1.  This catches truncation
    even where a decoder would not (``ImageFile.LOAD_TRUNCATED_IMAGES`` set by other code).
    Written by hand because no library reports where a JPEG ends.
    """
    found = _Structure()
    i, n = start, len(body)
    scanned = False
    while i + 1 < n:
        if body[i] != 0xFF:
            i += 1  # junk between segments: decoders skip it (and strict decoding refuses it)
            continue
        marker = body[i + 1]
        if marker == 0xFF:
            i += 1  # fill byte
        elif marker == 0xD9:
            if scanned:
                found.end = i + 2
            return found
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:
            i += 2  # markers without a length
        else:
            if i + 4 > n:
                return found
            length = int.from_bytes(body[i + 2 : i + 4], "big")
            if marker in (0xC2, 0xC6, 0xCA, 0xCE):
                found.progressive = True
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and i + 10 <= n:
                found.coefficient_bytes = _coefficient_bytes(body[i + 4 : i + 2 + length])
            i += 2 + length
            if marker == 0xDA:
                scanned = True
                while True:  # to the first FF that starts a marker (bytes.find: C speed)
                    i = body.find(b"\xff", i)
                    if i < 0 or i + 1 >= n:
                        return found
                    following = body[i + 1]
                    if following not in (0x00, 0xFF) and not 0xD0 <= following <= 0xD7:
                        break
                    i += 1
    return found


def _coefficient_bytes(sof: bytes) -> int:
    """DCT coefficient memory (2 bytes each) of the frame a SOF segment's payload declares."""
    if len(sof) < 6:
        return 0
    height, width, count = int.from_bytes(sof[1:3], "big"), int.from_bytes(sof[3:5], "big"), sof[5]
    factors = [(sof[7 + 3 * k] >> 4, sof[7 + 3 * k] & 15) for k in range(count) if 8 + 3 * k <= len(sof)]
    if not factors:
        return 0
    hmax, vmax = max(max(h for h, _ in factors), 1), max(max(v for _, v in factors), 1)
    total = 0
    for h, v in factors:
        blocks_x = -(-width * h // (8 * hmax))
        blocks_y = -(-height * v // (8 * vmax))
        total += blocks_x * blocks_y * 64 * 2
    return total


def _embedded(trailer: bytes) -> str | None:
    """What a trailer after EOI carries that a photo must not (a ZIP, HTML...), or None."""
    while trailer.startswith(_JPEG_MAGIC):  # MPO: further JPEGs (camera previews) are fine
        following = _walk(trailer)
        if following.end is None:
            break
        trailer = trailer[following.end :]
    lowered = trailer.lower()
    for name, signature in _EMBEDDED_SIGNATURES:
        if signature in trailer or signature in lowered:  # binary as is, text (lower-case) in any case
            return f"{name} data after the image ({len(trailer):,} bytes after EOI)"
    if lowered[:2] == b"mz":
        return f"a Windows program after the image ({len(trailer):,} bytes after EOI)"
    if len(trailer) > MAX_TRAILER:
        return f"{len(trailer):,} bytes of unknown data after the image"
    return None


# Colour spaces (as decode_jpeg_header names them) that libjpeg-turbo cannot convert to RGB.
_DECODE_AS = {"Gray": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}


def judge_image(body: bytes, *, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> ImageVerdict:
    """Judge ``body`` as served; thread-safe (decodes release the GIL)."""
    if not body:
        return ImageVerdict(Outcome.EMPTY, 0, 0, "", "", "empty body")
    md5 = hashlib.md5(body).hexdigest()
    sha256 = hashlib.sha256(body).hexdigest()

    def verdict(outcome: Outcome, width: int = 0, height: int = 0, detail: str = "") -> ImageVerdict:
        return ImageVerdict(outcome, width, height, md5, sha256, detail)

    if not body.startswith(_JPEG_MAGIC):
        return verdict(Outcome.NOT_JPEG, detail=f"starts with {body[:8]!r}")
    width = height = 0
    try:
        # Image.open reads only the header; Pillow raises DecompressionBombError here for
        # absurd sizes (over twice its MAX_IMAGE_PIXELS) - before any pixel is decoded.
        with Image.open(io.BytesIO(body), formats=("JPEG", "MPO")) as img:
            width, height = img.size
            if img.format not in ("JPEG", "MPO"):
                return verdict(Outcome.NOT_JPEG, width, height, f"Pillow sees {img.format}")
        if width * height > max_pixels:
            detail = f"{width}x{height} > {max_pixels} pixels"
            return verdict(Outcome.DECOMPRESSION_BOMB, width, height, detail)
        if min(width, height) < min_side:
            return verdict(Outcome.TOO_SMALL, width, height, f"{width}x{height}, min side {min_side}")
        if len(body) < width * height * MIN_BYTES_PER_PIXEL:
            return verdict(
                Outcome.IMPLAUSIBLE_SIZE,
                width,
                height,
                f"{width}x{height} declared in {len(body):,} bytes: too few to be a photo",
            )
        structure = _walk(body)
        if structure.end is None:
            return verdict(Outcome.TRUNCATED_JPEG, width, height, NO_EOI_MESSAGE)
        embedded = _embedded(body[structure.end :])
        if embedded is not None:
            return verdict(Outcome.EMBEDDED_DATA, width, height, embedded)
        if structure.progressive and structure.coefficient_bytes > MAX_CHECK_BYTES:
            return verdict(
                Outcome.DECOMPRESSION_BOMB,
                width,
                height,
                f"progressive {width}x{height}: {structure.coefficient_bytes:,} bytes to check, "
                f"over {MAX_CHECK_BYTES:,}",
            )
        colorspace = simplejpeg.decode_jpeg_header(body)[2]
        # strict: every libjpeg warning (premature end, corrupt data) is an error.  The smallest
        # scale at least 1x1 px and at least 8x smaller (min_factor alone does not scale): 1/8,
        # reading all the entropy-coded data all the same.
        simplejpeg.decode_jpeg(
            body,
            colorspace=_DECODE_AS.get(colorspace, "RGB"),
            min_height=1,
            min_width=1,
            min_factor=8,
            strict=True,
        )
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return verdict(Outcome.DECOMPRESSION_BOMB, detail=str(exc)[:200])
    except Exception as exc:  # Pillow/simplejpeg raise OSError, ValueError, SyntaxError, struct.error...
        text = f"{type(exc).__name__}: {exc}"[:200]
        outcome = Outcome.TRUNCATED_JPEG if decoder_says_cut(text) else Outcome.DECODE_ERROR
        return verdict(outcome, width, height, text)
    return verdict(Outcome.OK, width, height)
