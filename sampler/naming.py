"""Identifiers and file names.

ImageNet ids look like ``n02672831_1234`` (a WordNet id, an underscore, a
number).  Image files are named ``<image_id>_<label>.jpg`` as in the original
hand-made sample: spaces become underscores and everything else is kept, except
what is unsafe in a file name.
"""

from __future__ import annotations

import re

WNID_RE = re.compile(r"n\d{8}")
IMAGE_ID_RE = re.compile(r"(n\d{8})_(\d+)")
# Path separators, NUL and other control characters (C0, DEL, C1) never reach a file name.
_UNSAFE_CHARS = re.compile(r"[/\\\x00-\x1f\x7f-\x9f]")
MAX_LABEL_BYTES = 150  # keeps <image_id>_<label>.jpg well under the usual 255-byte limit


def is_wnid(text: str) -> bool:
    return WNID_RE.fullmatch(text) is not None


def wnid_of(image_id: str) -> str:
    """The synset part of an image id (``n02672831_1234`` -> ``n02672831``)."""
    match = IMAGE_ID_RE.fullmatch(image_id)
    if match is None:
        raise ValueError(f"not an ImageNet image id (expected n########_#): {image_id!r}")
    return match.group(1)


def safe_label(label: str) -> str:
    """A label as it appears in a file name: ``ping-pong ball`` -> ``ping-pong_ball``."""
    text = label.strip().replace(" ", "_")
    text = _UNSAFE_CHARS.sub("_", text)
    # ".." anywhere could be read as a parent directory by careless tools downstream.
    while ".." in text:
        text = text.replace("..", "_")
    text = text.strip(".") or "unlabelled"
    encoded = text.encode("utf-8")[:MAX_LABEL_BYTES]
    return encoded.decode("utf-8", errors="ignore")


def image_filename(image_id: str, label: str) -> str:
    """``n03942813_2634`` + ``ping-pong ball`` -> ``n03942813_2634_ping-pong_ball.jpg``."""
    wnid_of(image_id)  # refuses anything that is not an image id, so no path tricks
    return f"{image_id}_{safe_label(label)}.jpg"
