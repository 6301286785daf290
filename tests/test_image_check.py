"""judge_image: real photos pass, everything a dead link serves instead fails."""

from __future__ import annotations

import hashlib
import io
import os
import random
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from sampler.image_check import (
    MAX_PIXELS,
    MIN_SIDE,
    ImageVerdict,
    is_known_placeholder,
    judge_image,
    load_placeholder_hashes,
)

REPO = Path(__file__).resolve().parents[1]
# The 1,000 JPEGs of the 2017 run (../shared beside the checkout, as in conftest.py).
REAL_IMAGES = Path(os.environ.get("SAMPLER_SHARED_DATA", REPO.parent / "shared" / "data")) / "imagen"


def encode(img: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def photo(width: int = 200, height: int = 150, mode: str = "RGB") -> Image.Image:
    rng = random.Random(width * 7 + height)
    img = Image.effect_mandelbrot((width, height), (-2.0, -1.2, 0.8, 1.2), 60).convert(mode)
    for _ in range(50):  # some detail so the scan data is not trivially short
        img.putpixel(
            (rng.randrange(width), rng.randrange(height)), (255,) * len(mode) if mode != "L" else 255
        )
    return img


JPEG = encode(photo())


def with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """Rewrite the SOF0 header's dimensions: a tiny file claiming a huge image."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[: at + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + jpeg[at + 9 :]


def test_good_jpeg() -> None:
    v = judge_image(JPEG)
    assert v == ImageVerdict("ok", 200, 150, hashlib.md5(JPEG).hexdigest(), hashlib.sha256(JPEG).hexdigest())


@pytest.mark.parametrize(
    "body",
    [
        encode(photo(), progressive=True, quality=80),
        encode(photo(mode="L")),
        encode(photo(mode="CMYK")),
        encode(photo(MIN_SIDE, MIN_SIDE)),
        encode(photo(), exif=Image.Exif()),
        JPEG + b"trailing bytes after EOI, as some cameras write",
    ],
    ids=["progressive", "grey", "cmyk", "min-side", "exif", "trailer"],
)
def test_good_variants(body: bytes) -> None:
    assert judge_image(body).outcome == "ok"


@pytest.mark.skipif(not REAL_IMAGES.is_dir(), reason="real sample images not available")
def test_every_real_sample_image_is_ok() -> None:
    files = sorted(REAL_IMAGES.glob("*.jpg"))
    assert len(files) >= 1000
    failures = {f.name: v for f in files if (v := judge_image(f.read_bytes())).outcome != "ok"}
    assert failures == {}


def test_empty() -> None:
    assert judge_image(b"") == ImageVerdict("empty", 0, 0, "", "", "empty body")


@pytest.mark.parametrize(
    "body",
    [
        encode(photo(), "PNG"),
        encode(photo().convert("P"), "GIF"),
        encode(photo(), "BMP"),
        encode(photo(), "WEBP"),
        b"<!DOCTYPE html><html><body>Not found</body></html>",
        b"\xff\xd8",  # two magic bytes only
    ],
    ids=["png", "gif", "bmp", "webp", "html", "short-magic"],
)
def test_not_jpeg_whatever_the_content_type_said(body: bytes) -> None:
    v = judge_image(body)
    assert v.outcome == "not_jpeg"
    assert v.md5 == hashlib.md5(body).hexdigest()  # hashed anyway: placeholders are found by hash


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.9, 0.99])
def test_scan_data_cut_off_is_truncated(fraction: float) -> None:
    assert judge_image(JPEG[: int(len(JPEG) * fraction)]).outcome == "truncated"


@pytest.mark.parametrize("body", [JPEG[:-1], JPEG[:-2], JPEG[:-3]], ids=["-1", "-2", "-3"])
def test_cut_at_the_very_end_is_truncated(body: bytes) -> None:
    assert judge_image(body).outcome == "truncated"


def test_truncation_is_caught_even_when_pillow_tolerates_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as some other library might
    assert judge_image(JPEG[: len(JPEG) // 2]).outcome == "truncated"


def test_cut_in_the_header() -> None:
    assert judge_image(JPEG[:200]).outcome in ("truncated", "decode_error")


def test_corrupt_data() -> None:
    assert judge_image(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8).outcome == "decode_error"
    sos = JPEG.index(b"\xff\xda")
    garbled = JPEG[: sos + 20] + b"\xff\x00" * 10 + b"\xff\xc4\x00\x03" + JPEG[sos + 60 :]
    assert judge_image(garbled).outcome in ("decode_error", "truncated")


def test_tracking_pixel_is_too_small() -> None:
    v = judge_image(encode(Image.new("RGB", (1, 1), "white")))
    assert (v.outcome, v.width, v.height) == ("too_small", 1, 1)
    assert judge_image(encode(photo(MIN_SIDE - 1, 400))).outcome == "too_small"
    assert judge_image(encode(photo(80, 60)), min_side=100).outcome == "too_small"


def test_decompression_bomb_from_header_before_decoding() -> None:
    bomb = with_size(JPEG, 8000, 8000)  # 64 MP > 50 MP: our own limit
    v = judge_image(bomb)
    assert (v.outcome, v.width, v.height) == ("decompression_bomb", 8000, 8000)
    assert judge_image(JPEG, max_pixels=200 * 150 - 1).outcome == "decompression_bomb"
    assert 8000 * 8000 > MAX_PIXELS


def test_decompression_bomb_pillow_refuses_outright() -> None:
    v = judge_image(with_size(JPEG, 65000, 65000))  # 4.2 GP: Pillow raises at open
    assert v.outcome == "decompression_bomb"


def test_placeholder_hashes_file() -> None:
    known = load_placeholder_hashes(REPO / "config" / "placeholders.csv")
    assert {
        "880a7a58e05d3e83797f27573bb6d35c",
        "596246739a83bb45e30e13437e0810d9",
        "969e595182a947c7fdaaef4a34401760",
        "af5db09e39ca35d8930b4e59962e09e5",
    } <= known
    assert is_known_placeholder("880A7A58E05D3E83797F27573BB6D35C", "", known)
    assert not is_known_placeholder(hashlib.md5(JPEG).hexdigest(), hashlib.sha256(JPEG).hexdigest(), known)


def test_placeholder_hashes_accept_sha256_and_reject_junk(tmp_path: Path) -> None:
    sha = hashlib.sha256(JPEG).hexdigest()
    good = tmp_path / "p.csv"
    good.write_text(f"md5,description\n{sha.upper()},learned\n\n# comment,x\n", encoding="utf-8")
    known = load_placeholder_hashes(good)
    assert known == {sha}
    assert is_known_placeholder("", sha, known)
    bad = tmp_path / "bad.csv"
    bad.write_text("md5,description\nnot-a-hash,x\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.csv:2"):
        load_placeholder_hashes(bad)
    with pytest.raises(ValueError, match="md5"):
        (tmp_path / "h.csv").write_text("hash,description\n", encoding="utf-8")
        load_placeholder_hashes(tmp_path / "h.csv")
