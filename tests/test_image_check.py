"""judge_image: real photos pass, everything a dead link serves instead fails."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from sampler.fetch.image_check import (
    MAX_PIXELS,
    MIN_SIDE,
    ImageVerdict,
    judge_image,
    load_placeholder_hashes,
)
from tests.conftest import REPO, optional_shared_file, shared_file


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


def test_every_real_sample_image_is_ok() -> None:
    files = sorted(shared_file("imagen").glob("*.jpg"))  # the 1,000 JPEGs of the 2017 run
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
    assert judge_image(JPEG[: int(len(JPEG) * fraction)]).outcome == "truncated_jpeg"


@pytest.mark.parametrize("body", [JPEG[:-1], JPEG[:-2], JPEG[:-3]], ids=["-1", "-2", "-3"])
def test_cut_at_the_very_end_is_truncated(body: bytes) -> None:
    assert judge_image(body).outcome == "truncated_jpeg"


def test_truncation_is_caught_even_when_pillow_tolerates_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as some other library might
    assert judge_image(JPEG[: len(JPEG) // 2]).outcome == "truncated_jpeg"


def test_cut_in_the_header() -> None:
    assert judge_image(JPEG[:200]).outcome in ("truncated_jpeg", "decode_error")


def test_corrupt_data() -> None:
    assert judge_image(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8).outcome == "decode_error"
    sos = JPEG.index(b"\xff\xda")
    garbled = JPEG[: sos + 20] + b"\xff\x00" * 10 + b"\xff\xc4\x00\x03" + JPEG[sos + 60 :]
    assert judge_image(garbled).outcome in ("decode_error", "truncated_jpeg")


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
    assert not {hashlib.md5(JPEG).hexdigest(), hashlib.sha256(JPEG).hexdigest()} & known


def test_placeholder_hashes_accept_sha256_and_reject_junk(tmp_path: Path) -> None:
    sha = hashlib.sha256(JPEG).hexdigest()
    good = tmp_path / "p.csv"
    good.write_text(f"md5,description\n{sha.upper()},learned\n\n# comment,x\n", encoding="utf-8")
    known = load_placeholder_hashes(good)
    assert known == {sha}  # lower-cased: digests are compared in lower case
    bad = tmp_path / "bad.csv"
    bad.write_text("md5,description\nnot-a-hash,x\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.csv:2"):
        load_placeholder_hashes(bad)
    with pytest.raises(ValueError, match="md5"):
        (tmp_path / "h.csv").write_text("hash,description\n", encoding="utf-8")
        load_placeholder_hashes(tmp_path / "h.csv")


# --- a hostile JPEG corpus: what a 2026 web serves under a 2011 photo's URL ---------------


@pytest.fixture(scope="module")
def real_photo() -> bytes:
    """A 640x480 photo-like JPEG: a real sample image when there is one, else the Mandelbrot
    photo.  A fixture, not a module constant, so that missing data under REQUIRE_SHARED_DATA
    fails the tests that use it rather than the whole file's collection."""
    sample = optional_shared_file("imagen", "n02815834_42_beaker.jpg")
    if sample is not None:
        with Image.open(sample) as img:
            return encode(img.convert("RGB").resize((640, 480)), quality=85)
    return encode(photo(640, 480), quality=85)


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.6, 0.95])
def test_truncated_with_an_eoi_appended_is_rejected(fraction: float, real_photo: bytes) -> None:
    # Pillow decodes this to a grey lower part without raising: libjpeg only warns.
    body = real_photo[: int(len(real_photo) * fraction)] + b"\xff\xd9"
    with Image.open(io.BytesIO(body)) as img:
        img.load()  # what the old check relied on: no error
    assert judge_image(body).outcome in ("truncated_jpeg", "decode_error")


@pytest.mark.parametrize("seed", range(8))
def test_corrupted_scan_data_is_rejected(seed: int, real_photo: bytes) -> None:
    rng = random.Random(seed)
    body = bytearray(real_photo)
    start = real_photo.index(b"\xff\xda") + 20
    for _ in range(200):  # 200 bytes garbled, none of them a marker byte
        at = rng.randrange(start, len(body) - 2)
        if body[at] != 0xFF and body[at - 1] != 0xFF:
            body[at] = rng.randrange(0, 0xFF)
    assert judge_image(bytes(body)).outcome in ("decode_error", "truncated_jpeg")


@pytest.mark.parametrize("size", [(7000, 7000), (5000, 3000), (3000, 3000)])
def test_declared_dimensions_the_bytes_cannot_fill_are_rejected(size: tuple[int, int]) -> None:
    body = with_size(encode(photo(40, 40)), *size)  # ~1 kB claiming megapixels
    v = judge_image(body)
    assert (v.outcome, v.width, v.height) == ("implausible_size", *size)


def zip_of(name: str, data: bytes) -> bytes:
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(name, data)
    return out.getvalue()


@pytest.mark.parametrize(
    "trailer",
    [
        zip_of("payload.txt", b"hello"),
        b"<!DOCTYPE html><html><script>alert(1)</script></html>",
        b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n",
        b"\r\n" * 10 + b"<?php system($_GET['c']); ?>",
        gzip.compress(b"x" * 1000),
        b"\x7fELF\x02\x01\x01" + bytes(100),
        bytes(70_000),  # a large unknown blob
    ],
    ids=["zip", "html", "pdf", "php", "gzip", "elf", "blob"],
)
def test_polyglots_are_rejected_with_their_own_outcome(trailer: bytes, real_photo: bytes) -> None:
    v = judge_image(real_photo + trailer)
    assert v.outcome == "embedded_data", v
    assert v.width == 640


@pytest.mark.parametrize(
    "trailer", [b"\n", b"\r\n", b"\0" * 32, b"camera junk 123"], ids=["lf", "crlf", "nul", "text"]
)
def test_a_few_bytes_after_eoi_are_fine(trailer: bytes, real_photo: bytes) -> None:
    assert judge_image(real_photo + trailer).outcome == "ok"


def test_a_second_image_after_the_first_mpo_style_is_fine(real_photo: bytes) -> None:
    assert judge_image(real_photo + JPEG).outcome == "ok"


def test_giant_exif_and_icc_blocks_are_fine() -> None:
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000  # ImageDescription: one APP1 near its 64 kB limit
    icc = bytes(range(256)) * 4000  # a 1 MB "ICC profile", split over 16 APP2 segments
    body = encode(photo(), exif=exif, icc_profile=icc)
    assert len(body) > 1_000_000
    assert judge_image(body).outcome == "ok"


def test_cmyk_and_progressive_photos_are_fine(real_photo: bytes) -> None:
    with Image.open(io.BytesIO(real_photo)) as img:
        assert judge_image(encode(img.convert("CMYK"))).outcome == "ok"
        assert judge_image(encode(img, progressive=True)).outcome == "ok"
        assert judge_image(encode(img.convert("L"), progressive=True)).outcome == "ok"


def test_a_huge_progressive_jpeg_is_refused_before_its_coefficients_are_allocated() -> None:
    small = encode(photo(), progressive=True)
    at = small.index(b"\xff\xc2")  # SOF2: rewrite its size to 9000x5000 (45 MP, under MAX_PIXELS)
    body = small[: at + 5] + (5000).to_bytes(2, "big") + (9000).to_bytes(2, "big") + small[at + 9 :]
    comment = b"\xff\xfe" + (65535).to_bytes(2, "big") + bytes(65533)
    body = body[:2] + comment * 4 + body[2:]  # padded so that its size looks plausible
    v = judge_image(body)
    assert (v.outcome, v.width, v.height) == ("decompression_bomb", 9000, 5000)
    assert "progressive" in v.detail


# The peak resident memory of this process (VmHWM: its own, unlike ru_maxrss, which a
# process started by a big one like pytest inherits across exec).
CHECK_MEMORY = """
import sys
from sampler.fetch.image_check import judge_image


def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise SystemExit("no VmHWM")


body = open(sys.argv[1], "rb").read()
judge_image(open(sys.argv[2], "rb").read())  # warm up: libraries loaded, first allocations done
before = peak()
verdict = judge_image(body)
print(verdict.outcome, peak() - before)
"""


@pytest.mark.parametrize("size", [(6000, 4000), (7000, 7000)], ids=["24mp-photo", "49mp-claim"])
def test_a_check_allocates_no_more_than_about_50_mb(tmp_path: Path, size: tuple[int, int]) -> None:
    import subprocess
    import sys

    width, height = size
    if size == (7000, 7000):
        body = with_size(encode(photo(40, 40)), width, height)  # 700 bytes claiming 49 MP
    else:
        img = Image.effect_noise((width // 4, height // 4), 40).resize(size).convert("RGB")
        body = encode(img, quality=70)  # a plausible 24 MP photo: 72 MB as RGB
    if not Path("/proc/self/status").is_file():
        pytest.skip("no /proc/self/status to read the peak memory from")
    path, small = tmp_path / "big.jpg", tmp_path / "small.jpg"
    path.write_bytes(body)
    small.write_bytes(JPEG)
    done = subprocess.run(
        [sys.executable, "-c", CHECK_MEMORY, str(path), str(small)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    outcome, grown = done.stdout.split()
    assert outcome == ("ok" if size == (6000, 4000) else "implausible_size")
    # A full decode of the 24 MP photo takes 72 MB (RGB), plus libjpeg's buffers.
    assert int(grown) < 50_000_000, f"{int(grown):,} bytes for one check"
