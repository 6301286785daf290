"""An offline, deterministic miniature of ImageNet's URL world.

The machine that runs the pipeline has no internet, so tests and benchmarks run
against this: a small ``imagenet_fall11_urls.tgz`` shaped like the real one
(one member, ``<image_id>\\t<url>`` lines grouped by synset, raw bytes with the
real file's quirks), a ``words.txt``, a ``categories.csv`` and a ``world.json``
that says how every URL behaves.  ``demo.server`` serves it all over
loopback, acting as an HTTP proxy so realistic host names reach 127.0.0.1.

Image bodies are not stored: they are rendered on demand from (seed, URL), so
the same URL always yields the same bytes and the world stays a few hundred KB.

Run ``python -m demo.world OUT_DIR [--seed N] [--categories N]``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import gzip
import hashlib
import io
import json
import random
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from PIL import Image, ImageDraw, ImageFont, ImageOps
from PIL.PngImagePlugin import PngInfo

from sampler.atomic import atomic_write_bytes
from sampler.categories.words import DET200, WORDS_URL
from sampler.download import ARCHIVE_SNAPSHOT, ORIGINAL_ADDRESS, URL_LIST_MEMBER

FORMAT = "imagenet-sampler-demo-world/1"
URLS_TGZ = "imagenet_fall11_urls.tgz"
WORDS_TXT = "words.txt"
CATEGORIES_CSV = "categories.csv"
WORLD_JSON = "world.json"

DEFAULT_SLOW_SECONDS = 3.0
RETRY_AFTER_SECONDS = 1

# Where dead Flickr photos redirected until about 2019 (the locale part varies, e.g.
# fr-fr); the gif is the ~2013 form.  The https one cannot be fetched offline (the
# proxy does not tunnel TLS): recognise it by its Location.
FLICKR_PLACEHOLDER_PNG_URL = "https://s.yimg.com/pw/images/en-us/photo_unavailable_l.png"
FLICKR_PLACEHOLDER_GIF_URL = "http://l.yimg.com/g/images/photo_unavailable.gif"
# The real tarball's public homes; the proxy serves the world's copies there too.
ARCHIVE_TGZ_URL = ARCHIVE_SNAPSHOT
ORIGINAL_TGZ_URL = ORIGINAL_ADDRESS  # 404 since 2019

FAULT_HOST = "faults.test"
# Fault behaviours addressable as http://faults.test/<behaviour>/<anything> (through the
# proxy) or http://127.0.0.1:PORT/faults/<behaviour>/<anything> (directly), with the
# outcome a careful downloader should report.
FAULT_BEHAVIOURS: dict[str, str] = {
    "ok": "jpeg",  # a good JPEG, unique per path
    "hang": "timeout",  # accepts, never answers
    "trickle": "timeout",  # 200, a JPEG header, then 1 byte per second forever
    "endless": "too_big",  # 200, no Content-Length, streams bytes forever
    "huge_length": "too_big",  # Content-Length: 2147483648, then a trickle
    "redirect_loop": "too_many_redirects",
    "redirect_file": "bad_redirect",  # 302 to file:///etc/passwd
    "bomb": "decompression_bomb",  # a JPEG whose header claims 30000x30000
    "pixel": "too_small",  # a 1x1 JPEG
    "truncated_nolength": "corrupt",  # half a JPEG, no Content-Length, then close
    "empty": "corrupt",  # 200 with an empty body
    "reset": "connection_error",  # TCP reset, no response
    "close": "connection_error",  # closed without a response
    "html": "not_image",
    # The behaviours of the URL list, so tests can pick one without reading world.json.
    "http_404": "http_error",
    "http_410": "http_error",
    "http_403": "http_error",
    "dead_host": "connection_error",
    # A proxy's own error page for an origin it cannot reach (Squid's, with X-Squid-Error).
    "squid_dns_fail": "connection_error",  # 502, X-Squid-Error: ERR_DNS_FAIL 0
    "squid_connect_fail": "connection_error",  # 503, X-Squid-Error: ERR_CONNECT_FAIL 111
    "flickr_placeholder_redirect": "placeholder",
    "redirect_ok": "jpeg",
    "jpeg_banner": "placeholder",
    "html_200": "not_image",
    "truncated_jpeg": "corrupt",  # half a JPEG with a matching Content-Length
    "png_image": "not_jpeg",
    "gif_image": "not_jpeg",
    "png_as_jpeg": "not_jpeg",  # a PNG served as image/jpeg
    "transient_500": "http_error",  # 500 is final (sampler.fetch.retry_policy)
    "transient_503": "jpeg_after_retry",
    "rate_limited_429": "jpeg_after_retry",
    "slow": "timeout",  # waits slow_seconds (?seconds=N overrides), then a good JPEG
}
# Plus http://faults.test/status/<code>/<anything>: that status with a small HTML body.

# Outcome class of each URL-list behaviour: what a careful downloader should conclude.
EXPECT: dict[str, str] = {
    "ok": "jpeg",
    "redirect_ok": "jpeg",
    # Named before the retry policy: its first answer is now a 503 or a 504, both "try again".
    "transient_500": "jpeg_after_retry",
    "rate_limited_429": "jpeg_after_retry",
    "slow": "timeout",
    "server_500": "http_error",  # a broken server: 500 every time
    "http_404": "http_error",
    "http_410": "http_error",
    "http_403": "http_error",
    "dead_host": "connection_error",
    "flickr_placeholder_redirect": "placeholder",
    "jpeg_banner": "placeholder",
    "html_200": "not_image",
    "truncated_jpeg": "corrupt",
    "png_image": "not_jpeg",
    "gif_image": "not_jpeg",
    "bad_scheme": "skipped_scheme",
}
VALID_EXPECT = frozenset({"jpeg", "jpeg_after_retry"})
# Outcomes that only fail because the client gives up; shortfall categories avoid them.
_MAYBE_VALID = frozenset({"ok", "redirect_ok", "transient_500", "rate_limited_429", "slow"})
# Outcomes that a lax downloader could mistake for a success (decodable or nearly so).
_LAX_TRAPS = frozenset({"truncated_jpeg", "png_image", "gif_image"})

FLICKR_HOSTS = [f"farm{i}.static.flickr.com" for i in range(1, 10)]
BANNER_HOST = "images.old-host.net"
# Behaviour mix per host: Flickr keeps about two thirds, other hosts about a quarter
# (a 2017 run of the real list kept about 69% of Flickr URLs tried, 23% of other hosts).
_FLICKR_PROFILE = {
    "ok": 63,
    "flickr_placeholder_redirect": 20,
    "http_404": 7,
    "http_410": 3,
    "redirect_ok": 2,
    "transient_500": 2,
    "rate_limited_429": 1,
    "truncated_jpeg": 2,
}


@dataclass(frozen=True)
class _Host:
    """A non-Flickr host of the URL list: its share of URLs, what they do, their paths."""

    weight: int
    profile: dict[str, int]  # behaviour -> weight
    paths: list[str]  # templates, see _Builder.other_url
    dead_mode: str | None = None  # a dead host's answer: "reset" (RST) or "close" (FIN)


_HOSTS: dict[str, _Host] = {
    "www.example-zoo.org": _Host(
        4,
        {
            "ok": 40,
            "http_404": 35,
            "redirect_ok": 10,
            "png_image": 5,
            "truncated_jpeg": 5,
            "transient_500": 5,
        },
        ["/animals/{slug}/{slug}{n}.jpg", "/gallery/img_{n4}.JPG", "/photos/{year}/{slug}-{n}.jpg"],
    ),
    # The host now answers every URL with one banner JPEG.
    BANNER_HOST: _Host(4, {"jpeg_banner": 1}, ["/users/{user}/pics/{n}.jpg", "/~{user}/{slug}/{hex}.jpg"]),
    "static.photo-site.com": _Host(
        3,
        {"ok": 30, "html_200": 30, "http_404": 20, "gif_image": 10, "transient_500": 10},
        ["/photos/{n6}/{hex}.jpg", "/p/{user}/{slug}_{n}.jpg"],
    ),
    "www.geocities-archive.net": _Host(
        2, {"dead_host": 1}, ["/{user}/images/{slug}{n}.jpg", "/{user}/pics/{hex}.jpg"], dead_mode="reset"
    ),
    "photos.dead-gallery.com": _Host(2, {"dead_host": 1}, ["/albums/{n}/{slug}_{n4}.jpg"], dead_mode="close"),
    "pics.travel-blog.de": _Host(
        3,
        {"ok": 25, "http_403": 40, "redirect_ok": 20, "http_404": 15},
        ["/bilder/{year}/{slug}-{n}.jpg", "/wp-content/uploads/{year}/{slug}{n}.jpg"],
    ),
    "www.museum-collection.org": _Host(
        3,
        {"ok": 35, "http_410": 25, "png_image": 15, "truncated_jpeg": 10, "http_404": 15},
        ["/collection/images/{n6}.jpeg", "/media/obj{n}_l.jpg"],
    ),
    "img.shop-catalog.co.uk": _Host(
        2,
        {"html_200": 45, "ok": 25, "truncated_jpeg": 15, "http_404": 15},
        ["/products/{n6}/large.jpg", "/img.php?id={n6}&size=l"],
    ),
    "media.news-daily.com": _Host(
        2,
        {"rate_limited_429": 25, "transient_500": 15, "ok": 25, "http_404": 35},
        ["/{year}/0{month}/{slug}-{n}.jpg"],
    ),
    "www.personal-pages.jp": _Host(
        2,
        {"ok": 30, "http_404": 50, "gif_image": 10, "html_200": 10},
        ["/~{user}/photo/{n}.jpg", "/~{user}/{slug}.jpg"],
    ),
    "archive.univ-library.edu": _Host(
        2, {"ok": 45, "slow": 20, "http_404": 35}, ["/digital/collections/{slug}/{n6}.jpg"]
    ),
}
_FLICKR_WEIGHT = 62  # vs. 29 for all other hosts together: about 68% Flickr, as in the real list
_USERS = ["jsmith", "maria", "kenji", "photoguy", "tanaka", "lisa77", "bob", "wildlife", "anna-k", "ph0t0"]

# Real words.txt labels for the first DET categories (the rest fall back to the short name).
_WORDNET_LABELS = {
    "n02672831": "accordion, piano accordion, squeeze box",
    "n02691156": "airplane, aeroplane, plane",
    "n02219486": "ant, emmet, pismire",
    "n07718747": "artichoke, globe artichoke",
    "n02764044": "ax, axe",
    "n02766320": "baby bed, baby's bed",
    "n02769748": "backpack, back pack, knapsack, packsack, rucksack, haversack",
}
# Synsets that hold URLs but are in no category list: sampling must never need them.
_DISTRACTORS = [
    ("n05258051", "forelock"),
    ("n00441073", "ski jumping"),
    ("n02388143", "pacer, pacemaker, pacesetter"),
    ("n01558765", "ring ouzel, ring blackbird, ring thrush, Turdus torquatus"),
    ("n02555863", "perch"),
    ("n07893642", "champagne, bubbly"),
    ("n01603812", "cedar waxwing, cedarbird, Bombycilla cedrorun"),
    ("n04390977", "tap, spigot"),
    ("n01851895", "wild duck"),
    ("n01570839", "common yellowthroat, Maryland yellowthroat, Geothlypis trichas"),
    ("n02426813", "eland"),
    ("n02339376", "vole, field mouse"),
    ("n01820348", "lory"),
    ("n02051845", "pelican"),
    ("n04142999", "scanner"),
    ("n02813252", "bay rum"),
    ("n07805731", "petfood, pet-food, pet food"),
    ("n03505133", "headrest"),
    ("n00288384", "piaffe"),
    ("n02028727", "pectoral sandpiper, jacksnipe, Calidris melanotos"),
    ("n13145250", "muscadine, Vitis rotundifolia"),
    ("n02307325", "tent caterpillar"),
    ("n02037110", "oystercatcher, oyster catcher"),
    ("n01321123", "hen"),
]
# In words.txt only (no URLs), like most of the real file's 82,115 records.
_WORDS_ONLY = [
    ("n00001740", "entity"),
    ("n00001930", "physical entity"),
    ("n00002137", "abstraction, abstract entity"),
    ("n00002452", "thing"),
    ("n00002684", "object, physical object"),
    ("n00003553", "whole, unit"),
    ("n00004258", "living thing, animate thing"),
    ("n00004475", "organism, being"),
    ("n00006269", "life"),
    ("n00007846", "person, individual, someone, somebody, mortal, soul"),
    ("n00015388", "animal, animate being, beast, brute, creature, fauna"),
    ("n01317541", "domestic animal, domesticated animal"),
    ("n15300051", "9/11, 9-11, September 11, Sept. 11, Sep 11"),  # the real file's last record
]


# --------------------------------------------------------------------------- URLs


def url_key(url: str) -> str:
    """The form under which the server recognises a URL.

    Clients send raw UTF-8, spaces and quotes percent-encoded (requests re-quotes
    them), so both sides are compared with percent-escapes decoded once.  A client
    that double-encodes ``%20`` into ``%2520`` therefore misses, as on the real web.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    netloc = host if port in (None, default) else f"{host}:{port}"
    path = unquote(parts.path or "/", errors="surrogateescape")
    query = unquote(parts.query, errors="surrogateescape")
    return f"{parts.scheme.lower()}://{netloc}{path}" + (f"?{query}" if query else "")


def _slug(label: str) -> str:
    return label.lower().replace(" ", "-").replace("'", "")


# --------------------------------------------------------------------------- bodies


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # The bitmap font does not depend on FreeType being present, so bytes stay stable.
    loader = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)
    return loader()


def _pattern(tag: str, salt: str, width: int, height: int) -> Image.Image:
    """A coloured pattern with ``tag`` written on it, deterministic in (tag, salt)."""
    rng = random.Random(f"{salt}|{tag}")
    c1 = tuple(rng.randrange(256) for _ in range(3))
    c2 = tuple(rng.randrange(256) for _ in range(3))
    # Colourise a tiny gradient and stretch it: much cheaper than colourising full size.
    gradient = Image.linear_gradient("L").rotate(rng.choice([0, 90, 180, 270])).resize((16, 16))
    img = ImageOps.colorize(gradient, c1, c2).resize((width, height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(3, 8)):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1 = x0 + rng.randint(4, max(5, width // 2))
        y1 = y0 + rng.randint(4, max(5, height // 2))
        fill = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=fill)
    draw.rectangle([1, 1, 4 + 6 * len(tag), 14], fill=(255, 255, 255))
    draw.text((3, 2), tag, fill=(0, 0, 0), font=_font())
    return img


@functools.lru_cache(maxsize=512)
def render_jpeg(tag: str, salt: str, width: int, height: int, quality: int) -> bytes:
    """A unique, fully decodable JPEG (the comment carries ``salt`` so bytes never repeat)."""
    buf = io.BytesIO()
    _pattern(tag, salt, width, height).save(buf, "JPEG", quality=quality, comment=f"{tag} {salt}".encode())
    return buf.getvalue()


@functools.lru_cache(maxsize=256)
def render_png(tag: str, salt: str, width: int, height: int) -> bytes:
    info = PngInfo()
    info.add_text("Comment", f"{tag} {salt}")
    buf = io.BytesIO()
    _pattern(tag, salt, width, height).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


@functools.lru_cache(maxsize=256)
def render_gif(tag: str, salt: str, width: int, height: int) -> bytes:
    buf = io.BytesIO()
    img = _pattern(tag, salt, width, height).convert("P", palette=Image.Palette.ADAPTIVE)
    img.save(buf, "GIF", comment=f"{tag} {salt}".encode())
    return buf.getvalue()


def _notice(size: tuple[int, int], lines: list[str], bg: tuple[int, int, int]) -> Image.Image:
    img = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(img)
    draw.rectangle([10, 10, size[0] - 11, size[1] - 11], outline=(120, 120, 120), width=3)
    for i, line in enumerate(lines):
        draw.text((30, 40 + 20 * i), line, fill=(60, 60, 60), font=_font())
    return img


@functools.lru_cache(maxsize=1)
def banner_jpeg() -> bytes:
    """The one JPEG that the banner host returns for every URL (seed-independent)."""
    buf = io.BytesIO()
    img = _notice(
        (500, 375),
        ["This image is no longer available.", "", "images.old-host.net", "Visit our new gallery!"],
        (235, 235, 225),
    )
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def placeholder_png() -> bytes:
    """Stand-in for Flickr's photo_unavailable PNG (not the real bytes)."""
    buf = io.BytesIO()
    _notice((500, 374), ["This photo is currently unavailable"], (210, 210, 210)).save(buf, "PNG")
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def placeholder_gif() -> bytes:
    buf = io.BytesIO()
    img = _notice((500, 375), ["This photo is currently unavailable"], (210, 210, 210))
    img.convert("P", palette=Image.Palette.ADAPTIVE).save(buf, "GIF")
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def bomb_jpeg() -> bytes:
    """A well-formed JPEG whose frame header claims 30000x30000 pixels.

    Encoding a real 900-megapixel image would take gigabytes, so a 16x16 baseline
    JPEG gets its SOF0 dimensions rewritten: the markers are valid and a decoder
    that trusts the header would allocate ~2.7 GB.  Pillow refuses it at open()
    (DecompressionBombError), as a downloader should before decoding.
    """
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (128, 64, 32)).save(buf, "JPEG", quality=75)
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    # SOF0: FFC0, length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = (30000).to_bytes(2, "big") + (30000).to_bytes(2, "big")
    return bytes(data)


@functools.lru_cache(maxsize=1)
def pixel_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (255, 255, 255)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def html_page(title: str, text: str) -> bytes:
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
        f"<body><h1>{title}</h1><p>{text}</p></body></html>\n"
    ).encode()


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --------------------------------------------------------------------------- the world


class _Builder:
    """Draws every URL and its behaviour from one seeded random stream."""

    def __init__(self, seed: int, slow_seconds: float) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.slow_seconds = slow_seconds
        self.urls: dict[str, dict[str, Any]] = {}
        self.targets: dict[str, dict[str, Any]] = {}
        self.used_numbers: dict[str, set[int]] = {}
        self.dead_modes: dict[str, str] = {}  # dead-web hosts: "dns" or "connect" (the proxy's page)
        hosts = list(_HOSTS)
        self.host_choices = FLICKR_HOSTS + hosts
        self.host_weights = [_FLICKR_WEIGHT / len(FLICKR_HOSTS)] * len(FLICKR_HOSTS) + [
            _HOSTS[h].weight for h in hosts
        ]

    # -- small draws
    def image_id(self, wnid: str) -> str:
        used = self.used_numbers.setdefault(wnid, set())
        while True:
            n = self.rng.randint(1, 4 * max(100, len(used)) + 3000)
            if n not in used:
                used.add(n)
                return f"{wnid}_{n}"

    def image_params(self) -> dict[str, int]:
        r = self.rng.random()
        if r < 0.04:
            w, h = 80, 60  # genuine small images exist: size alone cannot flag placeholders
        elif r < 0.08:
            w, h = 100, 100
        else:
            w = self.rng.randint(80, 640)
            h = max(60, min(480, int(w * self.rng.uniform(0.55, 1.0))))
        return {"w": w, "h": h, "q": self.rng.randint(60, 95)}

    def host(self) -> str:
        return self.rng.choices(self.host_choices, self.host_weights)[0]

    def behaviour_for(self, host: str, *, failing_only: bool = False, strict: bool = False) -> str:
        profile = _FLICKR_PROFILE if host in FLICKR_HOSTS else _HOSTS[host].profile
        items = [
            (b, w)
            for b, w in profile.items()
            if not (failing_only and b in _MAYBE_VALID) and not (strict and b in _LAX_TRAPS)
        ]
        if not items:
            raise LookupError(host)
        return self.rng.choices([b for b, _ in items], [w for _, w in items])[0]

    def flickr_url(self, host: str | None = None) -> str:
        host = host or self.rng.choice(FLICKR_HOSTS)
        server = self.rng.randint(1, 3999)
        photo = self.rng.randint(10_000_000, 3_999_999_999)
        secret = f"{self.rng.getrandbits(40):010x}"
        return f"http://{host}/{server}/{photo}_{secret}.jpg"

    def other_url(self, host: str, slug: str, ext: str | None = None) -> str:
        template = self.rng.choice(_HOSTS[host].paths)
        path = template.format(
            slug=slug,
            n=self.rng.randint(1, 999),
            n4=self.rng.randint(1, 9999),
            n6=self.rng.randint(1, 999_999),
            hex=f"{self.rng.getrandbits(32):08x}",
            user=self.rng.choice(_USERS),
            year=self.rng.randint(2001, 2010),
            month=self.rng.randint(1, 9),
        )
        if ext and path.endswith((".jpg", ".JPG", ".jpeg")):
            path = path.rsplit(".", 1)[0] + ext
        return f"http://{host}{path}"

    # -- one URL
    def add(self, url: str, host: str, behaviour: str, image_id: str) -> str:
        """Register ``url`` with ``behaviour``; returns the URL actually used (unique)."""
        while url in self.urls:  # a random collision: perturb rather than share by accident
            url = url.rsplit(".", 1)[0] + f"_{self.rng.randint(0, 9)}." + url.rsplit(".", 1)[1]
        entry: dict[str, Any] = {"behaviour": behaviour, "expect": EXPECT[behaviour], "host": host}
        if behaviour in ("ok", "transient_500", "rate_limited_429", "slow", "truncated_jpeg"):
            entry["image"] = self.image_params()
        entry.update(self._answer(url, host, behaviour, image_id))
        entry["valid"] = entry["expect"] in VALID_EXPECT
        entry["ids"] = [image_id]
        self.urls[url] = entry
        return url

    def _answer(self, url: str, host: str, behaviour: str, image_id: str) -> dict[str, Any]:
        """The fields that say how ``url`` answers, beyond its behaviour's name."""
        if behaviour in ("http_404", "http_410", "http_403"):
            return {"status": int(behaviour[-3:])}
        if behaviour == "dead_host":
            return {"mode": _HOSTS[host].dead_mode if host in _HOSTS else self.dead_modes[host]}
        if behaviour == "flickr_placeholder_redirect":
            return {"status": 302, "location": self._placeholder_location()}
        if behaviour == "redirect_ok":
            return self._redirect(url, host, image_id)
        if behaviour == "truncated_jpeg":
            # half: Content-Length matches the half body; none: close-delimited; full:
            # announces the whole length, sends half, closes.
            return {"length_mode": self.rng.choice(["half", "none", "full"])}
        if behaviour in ("png_image", "gif_image"):
            image = {"w": self.rng.randint(80, 400), "h": self.rng.randint(60, 300)}
            lie = self.rng.random() < 0.4
            return {"image": image, "content_type": "image/jpeg" if lie else f"image/{behaviour[:3]}"}
        if behaviour == "transient_500":
            return {"first_status": self.rng.choice([504, 503])}
        if behaviour == "slow":
            return {"seconds": self.slow_seconds}
        if behaviour == "html_200":
            return {"content_type": "text/html; charset=utf-8"}
        return {}

    def _placeholder_location(self) -> str:
        """Where a dead Flickr photo redirects: the ~2013 gif, or the later PNG in some locale."""
        if self.rng.random() < 0.25:
            return FLICKR_PLACEHOLDER_GIF_URL
        locale = self.rng.choices(["en-us", "fr-fr", "de-de", "es-us"], [85, 5, 5, 5])[0]
        return FLICKR_PLACEHOLDER_PNG_URL.replace("en-us", locale)

    def _redirect(self, url: str, host: str, image_id: str) -> dict[str, Any]:
        """A moved image: the redirect's fields, its target registered as a good JPEG."""
        flickr = host in FLICKR_HOSTS
        if flickr:
            target = "http://live.staticflickr.com/" + url.split("/", 3)[3]
        else:
            target = f"http://{host}/moved/{self.rng.getrandbits(32):08x}/{url.rsplit('/', 1)[1]}"
        while target in self.targets or target in self.urls:
            target += "x"
        if flickr:
            status, location = 301, target
        else:
            # Some servers send a relative Location; clients must resolve it.
            status = 302
            location = target[len(f"http://{host}") :] if self.rng.random() < 0.4 else target
        self.targets[target] = {
            "behaviour": "ok",
            "expect": "jpeg",
            "host": urlsplit(target).hostname,
            "image": self.image_params(),
            "ids": [image_id],
            "redirected_from": url,
        }
        return {"status": status, "location": location, "target": target}

    def random_line(
        self,
        wnid: str,
        slug: str,
        *,
        failing_only: bool = False,
        strict: bool = False,
        host: str | None = None,
    ) -> tuple[str, str]:
        while True:
            h = host or self.host()
            try:
                behaviour = self.behaviour_for(h, failing_only=failing_only, strict=strict)
                break
            except LookupError:
                continue
        ext = None
        if behaviour in ("png_image", "gif_image") and self.rng.random() < 0.7:
            ext = "." + behaviour[:3]
        url = self.flickr_url(h) if h in FLICKR_HOSTS else self.other_url(h, slug, ext)
        image_id = self.image_id(wnid)
        return image_id, self.add(url, h, behaviour, image_id)

    def ok_flickr_line(self, wnid: str) -> tuple[str, str]:
        host = self.rng.choice(FLICKR_HOSTS)
        image_id = self.image_id(wnid)
        return image_id, self.add(self.flickr_url(host), host, "ok", image_id)


# The dead web (build_demo_world(dead_web=True)): what a dead URL does, by weight.
_DEAD_WEB_DEAD = {
    "http_404": 34,
    "http_410": 8,
    "http_403": 8,
    "dead_host": 26,  # through the proxy: Squid's 502 ERR_DNS_FAIL or 503 ERR_CONNECT_FAIL
    "server_500": 8,
    "flickr_placeholder_redirect": 9,
    "jpeg_banner": 2,
    "html_200": 2,
    "truncated_jpeg": 1,
    "png_image": 1,
    "gif_image": 1,
}
_DEAD_WEB_HOSTS = 400  # dead domains, shared by all categories: a few hold many URLs, most a handful
_DEAD_WEB_WORDS = ["photos", "gallery", "pics", "images", "members", "home", "web", "album", "foto", "img"]


def _dead_web_host(b: _Builder) -> str:
    """One of the world's dead domains, the first ones more often (a few hold most URLs)."""
    n = int((b.rng.paretovariate(0.8) - 1) * 10) % _DEAD_WEB_HOSTS
    host = f"{_DEAD_WEB_WORDS[n % len(_DEAD_WEB_WORDS)]}.dead-site-{n:03d}.com"
    if host not in b.dead_modes:
        b.dead_modes[host] = "dns" if n % 5 else "connect"
    return host


# The host mix of the real 2011 list (reference data: 200words100urls.csv): about 64% of
# the URLs on five Flickr hosts, farm1 and farm4 the busiest; the rest over thousands of
# sites, most of them with a URL or two.
_FARM_MIX = {
    "farm1.static.flickr.com": 40,
    "farm4.static.flickr.com": 36,
    "farm3.static.flickr.com": 27,
    "farm2.static.flickr.com": 15,
    "static.flickr.com": 9,
}
_SMALL_SITES = 3000


def _small_site(b: _Builder) -> str:
    """One of thousands of small sites, each holding few of the list's URLs."""
    n = b.rng.randrange(_SMALL_SITES)
    return f"www.{_DEAD_WEB_WORDS[n % len(_DEAD_WEB_WORDS)]}-{n:04d}.net"


def _farm(b: _Builder) -> str:
    return b.rng.choices(list(_FARM_MIX), list(_FARM_MIX.values()))[0]


def _dead_web_lines(
    b: _Builder, wnid: str, slug: str, *, worst: bool, flickr_mix: bool = False
) -> list[tuple[str, str]]:
    """100 URLs of one category on today's web: 5 alive in the worst case, else 5-12.

    ``flickr_mix``: the real list's host mix (``_FARM_MIX``) instead of nine equal farms and
    one busy zoo site: about 70% of the URLs on five Flickr hosts, the rest over many small
    sites."""
    alive = 5 if worst else b.rng.randint(5, 12)
    lines: list[tuple[str, str]] = []
    for i in range(alive):
        if i == 0 and b.rng.random() < 0.4:
            host = "media.news-daily.com"  # a few transient 429/503 before a good JPEG
            behaviour = b.rng.choice(["rate_limited_429", "transient_500"])
        elif flickr_mix:
            host = _farm(b) if b.rng.random() < 0.7 else _small_site(b)
            behaviour = "ok"
            if host not in _FARM_MIX:
                url = f"http://{host}/{b.rng.choice(_USERS)}/{slug}_{b.rng.randint(1, 99999)}.jpg"
                image_id = b.image_id(wnid)
                lines.append((image_id, b.add(url, host, behaviour, image_id)))
                continue
        else:
            host = b.rng.choice(FLICKR_HOSTS) if b.rng.random() < 0.7 else "www.example-zoo.org"
            behaviour = "ok"
        url = b.flickr_url(host) if host in FLICKR_HOSTS or host in _FARM_MIX else b.other_url(host, slug)
        image_id = b.image_id(wnid)
        lines.append((image_id, b.add(url, host, behaviour, image_id)))
    kinds, weights = list(_DEAD_WEB_DEAD), list(_DEAD_WEB_DEAD.values())
    for _ in range(100 - alive):
        behaviour = b.rng.choices(kinds, weights)[0]
        if behaviour == "dead_host":
            host = _dead_web_host(b)
            url = f"http://{host}/{b.rng.choice(_USERS)}/{slug}{b.rng.randint(1, 9999)}.jpg"
        elif behaviour == "jpeg_banner":
            host, url = BANNER_HOST, b.other_url(BANNER_HOST, slug)
        elif behaviour in ("flickr_placeholder_redirect", "http_404", "http_410") and b.rng.random() < 0.7:
            host = _farm(b) if flickr_mix else b.rng.choice(FLICKR_HOSTS)
            url = b.flickr_url(host)
        elif flickr_mix:
            host = _small_site(b)
            ext = ".png" if behaviour == "png_image" else ".gif" if behaviour == "gif_image" else ".jpg"
            url = f"http://{host}/{b.rng.choice(_USERS)}/{slug}_{b.rng.randint(1, 99999)}{ext}"
        else:
            # Still up, the image gone: a long tail of small sites, as in the real list.
            n = int((b.rng.paretovariate(0.8) - 1) * 10) % _DEAD_WEB_HOSTS
            host = f"www.{_DEAD_WEB_WORDS[(n + 3) % len(_DEAD_WEB_WORDS)]}-site-{n:03d}.org"
            ext = ".png" if behaviour == "png_image" else ".gif" if behaviour == "gif_image" else ".jpg"
            url = f"http://{host}/{b.rng.choice(_USERS)}/{slug}_{b.rng.randint(1, 99999)}{ext}"
        image_id = b.image_id(wnid)
        lines.append((image_id, b.add(url, host, behaviour, image_id)))
    b.rng.shuffle(lines)
    return lines


def _read_categories(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [(row["wnid"], row["label"]) for row in csv.DictReader(fh)]


def _special_urls(slug: str, n: int) -> list[tuple[str, str]]:
    """(host, URL) pairs with the real list's awkward characters; all serve good JPEGs."""
    return [
        ("www.example-zoo.org", f"http://www.example-zoo.org/photos/big cats/{slug} {n:02d}.jpg"),
        ("static.photo-site.com", f"http://static.photo-site.com/albums/2008,summer,{slug},{n}.jpg"),
        ("www.museum-collection.org", f'http://www.museum-collection.org/collection/"{slug}" no{n}.jpg'),
        ("www.personal-pages.jp", f"http://www.personal-pages.jp/写真/{slug}_{n}.jpg"),
        ("pics.travel-blog.de", f"http://pics.travel-blog.de/bilder/München/straße_{slug}_{n}.jpg"),
        ("www.example-zoo.org", f"http://www.example-zoo.org/photos/red%20{slug}_{n}.jpg"),
    ]


_N_SPECIAL = len(_special_urls("x", 0))

_BAD_SCHEME_URLS = [
    "ftp://ftp.example-zoo.org/pub/images/{slug}_01.jpg",
    "file:///C:/Documents%20and%20Settings/owner/My%20Documents/My%20Pictures/{slug}.jpg",
    "javascript:popUp('http://www.example-zoo.org/popup.php?img={slug}')",
]


Lines = list[tuple[str, str]]  # (image_id, url) in file order
# The roles of the first categories of the list, in order; the rest are "normal".
_ROLES = ["big", "shortfall", "dead_first", "banner"]
# Roles whose valid-JPEG count is set by design: no banner or valid JPEG is added to them.
_FIXED_ROLES = frozenset({"shortfall", "worst", "dead"})
_MALFORMED_KINDS = ["no_tab", "empty", "empty_id", "bad_id", "bad_id", "non_utf8", "extra_field"]


def build_demo_world(
    out_dir: Path,
    *,
    seed: int = 0,
    n_categories: int = 10,
    n_distractors: int = 20,
    slow_seconds: float = DEFAULT_SLOW_SECONDS,
    categories_csv: Path = DET200,
    dead_web: bool = False,
    all_worst: bool = False,
    flickr_mix: bool = False,
) -> Path:
    """Write the demo world into ``out_dir`` and return ``out_dir``.

    Deterministic: the same arguments give byte-identical files.  Category roles,
    in order of the category list: 0 ``big`` (140 URLs, more than a 100-URL
    sample), 1 ``shortfall`` (3 valid JPEGs in 30 URLs), 2 ``dead_first`` (80%
    dead, the first 6 in file order dead), 3 ``banner`` (half are the banner
    host, the first line too), the rest ``normal`` (30-120 URLs).

    ``dead_web``: the URL list as it may answer today instead (see ``_dead_web_lines``):
    every category 100 URLs of which 5 to 12 are alive (exactly 5 in every third,
    role ``worst``; else ``dead``), the rest 404/410/403, hosts that a proxy reports
    dead (Squid's 502/503 pages), permanent 500s, placeholders and a few 429/503.
    ``all_worst`` (with ``dead_web``): every category is ``worst``, a web 95% dead.
    ``flickr_mix`` (with ``dead_web``): the real list's host mix, most URLs on five Flickr
    hosts and the rest over thousands of small sites (``_dead_web_lines``).
    """
    out_dir = Path(out_dir)
    all_categories = _read_categories(categories_csv)
    if not 1 <= n_categories <= len(all_categories):
        raise ValueError(f"n_categories must be 1..{len(all_categories)}, got {n_categories}")
    if not 0 <= n_distractors <= len(_DISTRACTORS):
        raise ValueError(f"n_distractors must be 0..{len(_DISTRACTORS)}, got {n_distractors}")
    categories = all_categories[:n_categories]
    distractors = _DISTRACTORS[:n_distractors]
    b = _Builder(seed, slow_seconds)
    # Every draw comes from b.rng, so these steps must stay in this order.
    blocks, role_of = _category_blocks(
        b, categories, dead_web=dead_web, all_worst=all_worst, flickr_mix=flickr_mix
    )
    _top_up(b, blocks, role_of, categories)
    _add_special_urls(b, blocks, role_of, categories)
    _add_bad_scheme_urls(b, blocks, categories)
    for wnid, label in distractors:
        slug = _slug(label.split(",")[0])
        if dead_web:
            blocks[wnid] = _dead_web_lines(b, wnid, slug, worst=False, flickr_mix=flickr_mix)
        else:
            blocks[wnid] = [b.random_line(wnid, slug) for _ in range(b.rng.randint(30, 80))]
        role_of[wnid] = "distractor"
    _share_one_url(b, blocks, role_of, categories, distractors)
    # File order: blocks in a seeded order, one distractor first so sampling must skip it.
    order = list(blocks)
    b.rng.shuffle(order)
    if distractors:
        order.remove(distractors[0][0])
        order.insert(0, distractors[0][0])
    junk = _malformed_lines(b, blocks, order, dict(categories + distractors))
    return _write_world(out_dir, b, categories, distractors, blocks, role_of, order, junk)


def _write_world(
    out_dir: Path,
    b: _Builder,
    categories: list[tuple[str, str]],
    distractors: list[tuple[str, str]],
    blocks: dict[str, Lines],
    role_of: dict[str, str],
    order: list[str],
    junk: dict[str, list[tuple[int, str, bytes]]],
) -> Path:
    """Write the files of a world whose lines are drawn (``blocks`` in file ``order``)."""
    urls_txt, malformed = _url_list(b, blocks, order, junk)

    files = {
        URLS_TGZ: _tgz(urls_txt),
        WORDS_TXT: _words_txt(categories, distractors),
        CATEGORIES_CSV: _categories_csv(categories),
    }
    world = {
        "format": FORMAT,
        "seed": b.seed,
        "settings": {"slow_seconds": b.slow_seconds, "retry_after_seconds": RETRY_AFTER_SECONDS},
        "files": _files_record(files, urls_txt),
        "mirrors": {ARCHIVE_TGZ_URL: URLS_TGZ, WORDS_URL: WORDS_TXT, ORIGINAL_TGZ_URL: None},
        "placeholders": _placeholders_record(),
        "hosts": _hosts_record(b),
        "categories": [_category_record(b, w, label, role_of[w], blocks[w]) for w, label in categories],
        "distractors": [{"wnid": w, "label": lab, "n_urls": len(blocks[w])} for w, lab in distractors],
        "malformed_lines": malformed,
        "fault_host": FAULT_HOST,
        "fault_behaviours": FAULT_BEHAVIOURS,
        "urls": b.urls,
        "redirect_targets": b.targets,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        atomic_write_bytes(out_dir / name, data)
    world_bytes = (json.dumps(world, ensure_ascii=False, indent=1) + "\n").encode()
    atomic_write_bytes(out_dir / WORLD_JSON, world_bytes)  # last: its presence means the world is complete
    return out_dir


def _category_blocks(
    b: _Builder,
    categories: list[tuple[str, str]],
    *,
    dead_web: bool,
    all_worst: bool,
    flickr_mix: bool = False,
) -> tuple[dict[str, Lines], dict[str, str]]:
    """Each category's lines and its role (see build_demo_world)."""
    blocks: dict[str, Lines] = {}
    role_of: dict[str, str] = {}
    for i, (wnid, label) in enumerate(categories):
        if dead_web:
            role_of[wnid] = "worst" if all_worst or i % 3 == 1 else "dead"
            worst = role_of[wnid] == "worst"
            blocks[wnid] = _dead_web_lines(b, wnid, _slug(label), worst=worst, flickr_mix=flickr_mix)
        else:
            role_of[wnid] = _ROLES[i] if i < len(_ROLES) else "normal"
            blocks[wnid] = _role_lines(b, role_of[wnid], wnid, _slug(label))
    return blocks, role_of


def _role_lines(b: _Builder, role: str, wnid: str, slug: str) -> Lines:
    """The lines of one category of the half-alive world, shaped by its role."""
    if role == "shortfall":
        # Only clear failures besides 3 good JPEGs and one banner: even a lax
        # downloader cannot reach 5, so the shortfall is genuine.
        lines = [b.random_line(wnid, slug, failing_only=True, strict=True) for _ in range(25)]
        lines += [b.ok_flickr_line(wnid) for _ in range(3)]
        lines.append(b.random_line(wnid, slug, host=BANNER_HOST))
        lines.append(b.random_line(wnid, slug, failing_only=True, strict=True))
        head, tail = lines[:1], lines[1:]
        b.rng.shuffle(tail)
        return head + tail
    if role == "dead_first":
        dead = [b.random_line(wnid, slug, failing_only=True) for _ in range(48)]
        good = [b.ok_flickr_line(wnid) for _ in range(12)]
        rest = dead[6:] + good
        b.rng.shuffle(rest)
        return dead[:6] + rest
    if role == "banner":
        # Half banners: whatever the sample order, one comes before the 5th good JPEG.
        banners = [b.random_line(wnid, slug, host=BANNER_HOST) for _ in range(24)]
        others = [b.random_line(wnid, slug) for _ in range(26)]
        rest = banners[1:] + others
        b.rng.shuffle(rest)
        return banners[:1] + rest
    n = 140 if role == "big" else b.rng.randint(30, 120)
    return [b.random_line(wnid, slug) for _ in range(n)]


def _insert_somewhere(b: _Builder, lines: Lines, line: tuple[str, str]) -> None:
    """Put ``line`` at a seeded place in ``lines``, never first (the first line is set by role)."""
    lines.insert(b.rng.randrange(1, len(lines) + 1), line)


def _top_up(
    b: _Builder, blocks: dict[str, Lines], role_of: dict[str, str], categories: list[tuple[str, str]]
) -> None:
    """Every category whose counts are not fixed by its role gets at least one banner URL
    (the banner spans categories) and at least 8 valid JPEGs."""
    labels = dict(categories)
    for wnid, lines in blocks.items():
        if role_of[wnid] in _FIXED_ROLES:
            continue
        if not any(b.urls[u]["behaviour"] == "jpeg_banner" for _, u in lines):
            pos = b.rng.randrange(1, len(lines))
            lines.insert(pos, b.random_line(wnid, _slug(labels[wnid]), host=BANNER_HOST))
        while sum(b.urls[u]["valid"] for _, u in lines) < 8:
            lines.insert(b.rng.randrange(len(lines) + 1), b.ok_flickr_line(wnid))


def _add_special_urls(
    b: _Builder, blocks: dict[str, Lines], role_of: dict[str, str], categories: list[tuple[str, str]]
) -> None:
    """URLs with spaces, commas, a quote, raw UTF-8 and %20, spread over the categories
    that are neither shortfall nor dead_first (they are valid JPEGs, so they count)."""
    labels = dict(categories)
    special_cats = [w for w, _ in categories if role_of[w] in ("normal", "big", "banner")]
    special_cats = special_cats or [categories[0][0]]
    for j in range(_N_SPECIAL):
        wnid = special_cats[j % len(special_cats)]
        host, url = _special_urls(_slug(labels[wnid]), b.rng.randint(1, 99))[j]
        image_id = b.image_id(wnid)
        _insert_somewhere(b, blocks[wnid], (image_id, b.add(url, host, "ok", image_id)))


def _add_bad_scheme_urls(b: _Builder, blocks: dict[str, Lines], categories: list[tuple[str, str]]) -> None:
    """Non-http schemes: well-formed lines that must never be fetched."""
    for j, template in enumerate(_BAD_SCHEME_URLS):
        wnid, label = categories[(j * 2) % len(categories)]
        url = template.format(slug=_slug(label))
        image_id = b.image_id(wnid)
        b.urls[url] = {
            "behaviour": "bad_scheme",
            "expect": "skipped_scheme",
            "host": urlsplit(url).hostname or "",
            "valid": False,
            "ids": [image_id],
        }
        _insert_somewhere(b, blocks[wnid], (image_id, url))


def _share_one_url(
    b: _Builder,
    blocks: dict[str, Lines],
    role_of: dict[str, str],
    categories: list[tuple[str, str]],
    distractors: list[tuple[str, str]],
) -> None:
    """The same URL under two synsets (real: lemon n07749582_846 and apple n07739125_973)."""
    first = categories[0][0]
    shared = next(
        u for _, u in blocks[first] if b.urls[u]["behaviour"] == "ok" and u.startswith("http://farm")
    )
    # Partner: the 5th category (apple, as in the real list) or the nearest one that is
    # not the shortfall category, whose valid count must stay fixed.
    candidates = [w for w, _ in categories[1:] if role_of[w] != "shortfall"]
    partners = [candidates[min(2, len(candidates) - 1)]] if candidates else []
    partners += [distractors[0][0]] if distractors else []
    for wnid in partners:
        image_id = b.image_id(wnid)
        b.urls[shared]["ids"].append(image_id)
        _insert_somewhere(b, blocks[wnid], (image_id, shared))


def _malformed_lines(
    b: _Builder, blocks: dict[str, Lines], order: list[str], labels: dict[str, str]
) -> dict[str, list[tuple[int, str, bytes]]]:
    """Malformed lines, scattered inside blocks (never only at the end): wnid -> [(the
    index in its block to stand before, kind, raw line)]."""
    junk_blocks = b.rng.sample(range(len(order)), min(len(order), len(_MALFORMED_KINDS)))
    extra_lines: dict[str, list[tuple[int, str, bytes]]] = {}
    for kind, block_index in zip(_MALFORMED_KINDS, junk_blocks, strict=False):
        wnid = order[block_index]
        url = b.flickr_url().encode()  # unknown to the server: a lenient reader gets a 404
        bad_wnid = wnid[:-1]  # seven digits
        label_id = labels[wnid].split(",")[0].replace(" ", "_")
        line = {
            "no_tab": f"{b.image_id(wnid)} ".encode() + url,
            "empty": b"",
            "empty_id": b"\t" + url,
            "bad_id": (
                f"{bad_wnid}_{b.rng.randint(1, 999)}\t".encode()
                if b.rng.random() < 0.5
                else f"{label_id}_5\t".encode()
            )
            + url,
            "non_utf8": f"{b.image_id(wnid)}\t".encode() + url[:-4] + b"\xe9t\xe9\xff.jpg",
            "extra_field": f"{b.image_id(wnid)}\t".encode() + url + b"\t" + b"1",
        }[kind]
        pos = b.rng.randrange(1, len(blocks[wnid]))
        extra_lines.setdefault(wnid, []).append((pos, kind, line))
    return extra_lines


def _url_list(
    b: _Builder,
    blocks: dict[str, Lines],
    order: list[str],
    extra_lines: dict[str, list[tuple[int, str, bytes]]],
) -> tuple[bytes, list[dict[str, Any]]]:
    """fall11_urls.txt's bytes and its malformed lines; every URL entry learns its line numbers."""
    out = io.BytesIO()
    line_no = 0
    malformed: list[dict[str, Any]] = []
    line_of: dict[tuple[str, str], int] = {}
    for wnid in order:
        junk = sorted(extra_lines.get(wnid, []), key=lambda t: t[0])
        for pos, (image_id, url) in enumerate(blocks[wnid]):
            while junk and junk[0][0] == pos:
                _, kind, raw = junk.pop(0)
                line_no += 1
                out.write(raw + b"\n")
                text = raw.decode("utf-8", "backslashreplace")
                malformed.append({"line": line_no, "kind": kind, "synset_block": wnid, "text": text})
            line_no += 1
            out.write(f"{image_id}\t{url}\n".encode())
            line_of[(image_id, url)] = line_no
    # Per-URL line numbers (helps tests point at a line).
    for wnid in order:
        for image_id, url in blocks[wnid]:
            b.urls[url].setdefault("lines", []).append(line_of[(image_id, url)])
    return out.getvalue(), malformed


def _files_record(files: dict[str, bytes], urls_txt: bytes) -> dict[str, Any]:
    tgz, words, cats_csv = files[URLS_TGZ], files[WORDS_TXT], files[CATEGORIES_CSV]
    return {
        URLS_TGZ: {
            "bytes": len(tgz),
            "md5": md5_hex(tgz),
            "member": URL_LIST_MEMBER,
            "member_bytes": len(urls_txt),
            "member_lines": urls_txt.count(b"\n"),
            "member_md5": md5_hex(urls_txt),
        },
        WORDS_TXT: {"bytes": len(words), "md5": md5_hex(words), "records": words.count(b"\n") + 1},
        CATEGORIES_CSV: {"bytes": len(cats_csv), "md5": md5_hex(cats_csv)},
    }


def _placeholders_record() -> dict[str, Any]:
    banner = banner_jpeg()
    return {
        "banner_md5": md5_hex(banner),
        "banner_bytes": len(banner),
        "banner_size": [500, 375],
        "banner_host": BANNER_HOST,
        "flickr_png_url": FLICKR_PLACEHOLDER_PNG_URL,
        "flickr_png_md5": md5_hex(placeholder_png()),
        "flickr_gif_url": FLICKR_PLACEHOLDER_GIF_URL,
        "flickr_gif_md5": md5_hex(placeholder_gif()),
    }


def _hosts_record(b: _Builder) -> dict[str, Any]:
    return {
        h: {
            "flickr": h in FLICKR_HOSTS,
            "dead": (h in _HOSTS and _HOSTS[h].dead_mode is not None) or h in b.dead_modes,
            "urls": sum(1 for e in b.urls.values() if e["host"] == h),
        }
        for h in sorted({e["host"] for e in b.urls.values()})
    }


def _category_record(b: _Builder, wnid: str, label: str, role: str, entries: Lines) -> dict[str, Any]:
    valid_urls = [u for _, u in entries if b.urls[u]["valid"]]
    return {
        "wnid": wnid,
        "label": label,
        "role": role,
        "n_urls": len(entries),
        "n_valid": len(valid_urls),
        "shortfall": len(valid_urls) < 5,
        "entries": [[i, u] for i, u in entries],
        "valid_urls": valid_urls,
        "first_try_urls": [u for u in valid_urls if b.urls[u]["expect"] == "jpeg"],
        "slow_urls": [u for _, u in entries if b.urls[u]["behaviour"] == "slow"],
        "banner_urls": [u for _, u in entries if b.urls[u]["behaviour"] == "jpeg_banner"],
    }


def _tgz(member: bytes) -> bytes:
    """A gzip'd tar with one top-level member, free of timestamps and owner names."""
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(URL_LIST_MEMBER)
        info.size, info.mtime, info.mode = len(member), 1318000000, 0o644  # fall 2011
        tar.addfile(info, io.BytesIO(member))
    gz_buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz_buf, mtime=0, compresslevel=6) as gz:
        gz.write(tar_buf.getvalue())
    return gz_buf.getvalue()


def _words_txt(categories: list[tuple[str, str]], distractors: list[tuple[str, str]]) -> bytes:
    records = {w: _WORDNET_LABELS.get(w, label) for w, label in categories}
    records.update(distractors)
    records.update(_WORDS_ONLY)
    # Sorted like the real file; the last record has no trailing newline, as in the real one.
    return "\n".join(f"{w}\t{records[w]}" for w in sorted(records)).encode()


def _categories_csv(categories: list[tuple[str, str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["wnid", "label"])
    writer.writerows(categories)
    return buf.getvalue().encode()


def load_world(world_dir: Path) -> dict[str, Any]:
    """The parsed ``world.json`` of a built world."""
    return json.loads((Path(world_dir) / WORLD_JSON).read_text(encoding="utf-8"))


def entry_jpeg(seed: int, url: str, entry: dict[str, Any]) -> bytes:
    """The good JPEG behind a world entry that has an ``image`` (the whole one, even
    for ``truncated_jpeg``, which is served cut in half)."""
    image = entry["image"]
    tag = (entry.get("ids") or ["image"])[0]
    return render_jpeg(tag, f"{seed}|{url}", image["w"], image["h"], image["q"])


def expected_jpeg(world: dict[str, Any], url: str) -> bytes | None:
    """The bytes a downloader should end up with for ``url`` of the URL list, or None
    when the URL yields no valid JPEG.  Lets tests compare kept files byte for byte."""
    entry = world["urls"].get(url)
    if entry is None or not entry["valid"]:
        return None
    if entry["behaviour"] == "redirect_ok":
        url = entry["target"]
        entry = world["redirect_targets"][url]
    return entry_jpeg(world["seed"], url, entry)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.world", description="Build the offline demo world.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--categories", type=int, default=10, help="first N rows of the category list")
    parser.add_argument(
        "--category-list",
        type=Path,
        default=DET200,
        help="a `wnid,label` CSV with a header, e.g. a preset in config/sets/ (default: config/det200.csv)",
    )
    parser.add_argument("--distractors", type=int, default=20)
    parser.add_argument("--slow-seconds", type=float, default=DEFAULT_SLOW_SECONDS)
    parser.add_argument("--dead-web", action="store_true", help="a >=90%% dead URL list (today's web)")
    args = parser.parse_args(argv)
    out = build_demo_world(
        args.out_dir,
        seed=args.seed,
        n_categories=args.categories,
        n_distractors=args.distractors,
        slow_seconds=args.slow_seconds,
        dead_web=args.dead_web,
        categories_csv=args.category_list,
    )
    world = load_world(out)
    print(
        f"demo world in {out}: {len(world['urls'])} URLs, {len(world['categories'])} categories, "
        f"{len(world['distractors'])} distractor synsets"
    )
    for cat in world["categories"]:
        print(
            f"  {cat['wnid']} {cat['label']:<24} {cat['role']:<10} "
            f"urls={cat['n_urls']:<4} valid={cat['n_valid']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
