"""Generate a full-scale synthetic ``imagenet_fall11_urls.tgz`` for benchmarks.

The real tarball is no longer published, so the index benchmark runs on a
look-alike: one member ``fall11_urls.txt`` of ``<image_id>\\t<url>\\n`` lines,
grouped by synset, with the real per-synset counts (from the reference data's
``classes_in_imagenet.csv``, or an approximation with ``--approximate``), realistic URL shapes (half Flickr,
the rest varied hosts, some raw UTF-8, spaces, commas, quotes, ``%20``) and 8
malformed lines, about 1.13 GB uncompressed.

Usage: python benchmarks/make_full_scale_tarball.py OUT.tgz [--lines 14197122] [--seed 0]
         [--classes CSV | --approximate]
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import tarfile
import time
from pathlib import Path

import isal.igzip_threaded
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sampler.download import URL_LIST_MEMBER  # after the path to the checkout

PUBLISHED_LINES = 14_197_122
# The real per-synset URL counts (synid,urls,flickr_urls,...) in the reference data beside the
# checkout, found as the tests find it (SAMPLER_SHARED_DATA, else ../shared/data).
CHECKOUT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SAMPLER_SHARED_DATA", CHECKOUT.parent / "shared" / "data"))
CLASSES_CSV = SHARED_DATA / "imagenet" / "classes_in_imagenet.csv"

# Malformed lines, one of each kind the indexer counts (plus a second no_tab and
# bad_id): 8 in all, like the real list.  They are extra lines, so the
# well-formed URLs still add up to the per-synset counts.
MALFORMED_LINES = [
    b"n01440764_99999 http://farm1.static.flickr.com/1/space_instead_of_tab.jpg",  # no_tab
    b"n01440764_99998",  # no_tab
    b"",  # empty_line
    b"\thttp://example.com/no_id.jpg",  # empty_id
    b"n0144_12\thttp://example.com/short_wnid.jpg",  # bad_id
    b"<html>\thttp://example.com/markup.jpg",  # bad_id
    b"n01440764_99997\thttp://example.com/latin1_caf\xe9.jpg",  # not_utf8
    b"n01440764_99996\t",  # empty_url
]

HOSTS = [
    "www.istockphoto.com/file_thumbview_approve/{n}/2/istockphoto_{n}-{w}.jpg",
    "ecx.images-amazon.com/images/I/{a}._SL500_AA280_.jpg",
    "{w}.blogspot.com/_{a}/{a}/AAAAAAAA{h}/{a}/s400/{w}.jpg",
    "upload.wikimedia.org/wikipedia/commons/{h1}/{h2}/{W}_{n}.jpg",
    "i{d}.photobucket.com/albums/{a}/{w}/{w}{n}.jpg",
    "img{d}.imageshack.us/img{d}/{n}/{w}{n}.jpg",
    "www.{w}.co.uk/images/products/{w}/{n}.jpg",
    "www.{w}{d}.com/images/{w}/{W}-{n}.jpg",
    "www.{w}.de/bilder/{w}/{n}_{w}.JPG",
    "lh{d}.ggpht.com/_{a}/{a}/AAAAAAAAA{h}/{a}/{W}.JPG",
    "i.ebayimg.com/{d}{d}/i/000/{h1}/{h2}/{a}_1.JPG",
    "www.made-in-china.com/image/2f0j00{a}/{W}-{w}.jpg",
    "{w}.files.wordpress.com/{y}/0{d}/{w}-{n}.jpg",
    "www.{w}.org/gallery/{w}/{n}.gif",
    "www.{w}.net/pics/{w}_{n}.png",
    "www.{w}.com/~{w}/photos/{W}%20{n}.jpg",
    "sc0{d}.alicdn.com/photo/{a}/{W}_{n}.jpg",
    "www.{w}.jp/{w}/{n}.bmp",
]
WORDS = (
    "koala banana accordion airplane lemon apple guitar violin bicycle camera piano table chair "
    "lamp turtle tiger zebra dog cat horse bird flower garden museum travel photo gallery image "
    "nature wildlife ocean harbor bridge castle church market coffee bread cheese summer winter"
).split()
RAW_UTF8 = ["口琴小品", "飞机", "más", "ñandú", "Ölbild", "фото", "café", "東京タワー"]
# Directories put after the host of half the non-Flickr URLs, to reach the real average length.
DIRS = ["images", "uploads/2008/05", "photos", "img/products", "pictures/gallery", "wp-content/uploads"]


def synset_counts(lines: int, seed: int, classes: Path | None) -> list[tuple[str, int, int]]:
    """(wnid, urls, flickr_urls) per synset, sorted by wnid, adding up to ``lines - 8`` URLs:
    the shape of ``classes`` (classes_in_imagenet.csv), or an approximation where it is None."""
    if classes is not None:
        with classes.open(newline="", encoding="utf-8") as f:
            table = [(r["synid"], int(r["urls"]), int(r["flickr_urls"])) for r in csv.DictReader(f)]
    else:
        # An approximation of the real shape: 21,841 synsets, heavy-tailed counts, half Flickr.
        rng = np.random.default_rng(seed)
        wnids = sorted({f"n{x:08d}" for x in rng.integers(1_000_000, 15_500_000, 30_000)})[:21_841]
        raw = np.minimum(rng.lognormal(6.2, 0.9, len(wnids)), 3047)
        table = [(w, max(1, int(c)), int(c) // 2) for w, c in zip(wnids, raw, strict=True)]
    target = max(1, lines - len(MALFORMED_LINES))
    total = sum(c for _, c, _ in table)
    if total != target:
        scale = target / total
        scaled = [(w, int(c * scale), f * scale / c if c else 0.0) for w, c, f in table]
        scaled = [s for s in scaled if s[1] > 0] or [(table[0][0], 0, 0.5)]
        missing = target - sum(c for _, c, _ in scaled)
        # Hand the rounding remainder to the synsets in turn.
        i = 0
        while missing > 0:
            w, c, fr = scaled[i % len(scaled)]
            scaled[i % len(scaled)] = (w, c + 1, fr)
            missing -= 1
            i += 1
        table = [(w, c, round(c * fr)) for w, c, fr in scaled]
    return table


def synset_block(rng: random.Random, nrng: np.random.Generator, wnid: str, count: int, flickr: int) -> bytes:
    """All lines of one synset (in random image-id order, like the real list)."""
    ids = nrng.permutation(np.arange(1, count * 2 + 1))[:count].tolist()
    is_flickr = nrng.permutation(np.r_[np.ones(flickr, bool), np.zeros(count - flickr, bool)]).tolist()
    farms = nrng.integers(1, 5, count).tolist()
    servers = nrng.integers(1, 4000, count).tolist()
    photos = nrng.integers(10_000_000, 5_000_000_000, count).tolist()
    secrets = nrng.integers(0, 1 << 40, count).tolist()
    out = []
    for k in range(count):
        if is_flickr[k]:
            url = f"http://farm{farms[k]}.static.flickr.com/{servers[k]}/{photos[k]}_{secrets[k]:010x}.jpg"
        else:
            url = "http://" + rng.choice(HOSTS).format(
                n=photos[k] % 10_000_000,
                w=rng.choice(WORDS),
                W=rng.choice(WORDS).capitalize(),
                a=f"{secrets[k]:x}"[:11],
                h=f"{servers[k]:x}",
                h1=f"{secrets[k] & 15:x}",
                h2=f"{secrets[k] & 255:02x}",
                d=farms[k],
                y=2005 + farms[k],
            )
            roll = rng.random()
            if roll > 0.5:
                host_end = url.index("/", 7)
                url = url[:host_end] + "/" + rng.choice(DIRS) + url[host_end:]
            if roll < 0.005:
                url = url[: url.rfind("/") + 1] + rng.choice(RAW_UTF8) + url[url.rfind("/") + 1 :]
            elif roll < 0.008:
                url = url[: url.rfind("/") + 1] + "My Photo " + url[url.rfind("/") + 1 :]
            elif roll < 0.0115:
                url = url[: url.rfind("/") + 1] + "img,large," + url[url.rfind("/") + 1 :]
            elif roll < 0.0117:
                url = url[: url.rfind("/") + 1] + 'say "cheese"' + url[url.rfind("/") + 1 :]
            elif roll < 0.02:
                url = url.replace("/", "/photos%20of%20", 3).replace("/photos%20of%20", "/", 2)
        out.append(f"{wnid}_{ids[k]}\t{url}\n")
    return "".join(out).encode("utf-8")


def generate(lines: int, seed: int, classes: Path | None) -> list[bytes]:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    table = synset_counts(lines, seed, classes)
    blocks = [synset_block(rng, nrng, w, c, min(f, c)) for w, c, f in table]
    # Put the malformed lines between synsets and inside a few synsets, at fixed places.
    spots = sorted(rng.sample(range(len(blocks)), min(len(MALFORMED_LINES), len(blocks))))
    for spot, bad in zip(spots, MALFORMED_LINES[: len(spots)], strict=True):
        block = blocks[spot]
        cut = block.find(b"\n", len(block) // 2) + 1
        blocks[spot] = block[:cut] + bad + b"\n" + block[cut:]
    # One URL keeps a tab inside it: an extra field, still a well-formed line.
    block = blocks[len(blocks) // 2]
    tab = block.find(b"\t")
    nl = block.find(b"\n", tab)
    blocks[len(blocks) // 2] = block[:nl] + b"\textra-field" + block[nl:]
    return blocks


def write_tarball(out: Path, blocks: list[bytes]) -> int:
    size = sum(len(b) for b in blocks)
    info = tarfile.TarInfo(URL_LIST_MEMBER)
    info.size = size
    info.mtime = 1_318_000_000  # autumn 2011, like the original
    info.mode = 0o644
    tmp = out.with_name(out.name + ".part")
    with open(tmp, "wb") as raw, isal.igzip_threaded.open(raw, "wb", compresslevel=1, threads=2) as gz:
        gz.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        for b in blocks:
            gz.write(b)
        gz.write(b"\0" * (-size % tarfile.BLOCKSIZE))
        # End-of-archive marker and record padding, as tarfile writes them.
        written = tarfile.BLOCKSIZE + size + (-size % tarfile.BLOCKSIZE) + 2 * tarfile.BLOCKSIZE
        gz.write(b"\0" * (2 * tarfile.BLOCKSIZE + (-written % tarfile.RECORDSIZE)))
    tmp.replace(out)
    return size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="the .tgz to write")
    parser.add_argument("--lines", type=int, default=PUBLISHED_LINES, help="lines in fall11_urls.txt")
    parser.add_argument("--seed", type=int, default=0)
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument(
        "--classes",
        type=Path,
        default=CLASSES_CSV,
        help="ImageNet's per-synset URL counts, classes_in_imagenet.csv (default: %(default)s)",
    )
    shape.add_argument(
        "--approximate",
        action="store_true",
        help="no counts file: a synthetic heavy-tailed shape (21,841 synsets, half Flickr) instead",
    )
    args = parser.parse_args(argv)
    classes = None if args.approximate else args.classes
    if classes is not None and not classes.is_file():
        # No silent fall-back to the approximation: its timings would not compare with real-shape ones.
        parser.error(
            f"per-synset counts {classes} not found: pass --classes PATH to classes_in_imagenet.csv "
            "(or set SAMPLER_SHARED_DATA to the reference data), or --approximate for a synthetic shape"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    blocks = generate(args.lines, args.seed, classes)
    t1 = time.perf_counter()
    size = write_tarball(args.out, blocks)
    t2 = time.perf_counter()
    n = sum(b.count(b"\n") for b in blocks)
    print(
        f"{args.out}: {n:,} lines, {size:,} bytes uncompressed, "
        f"{args.out.stat().st_size:,} bytes compressed; "
        f"generated in {t1 - t0:.1f} s, compressed in {t2 - t1:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
