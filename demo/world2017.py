"""A demo world whose living images sit where the blog post's 2017 run found them.

The reference data holds the blog post's sample -- 100 real lines of fall11_urls.txt for
each of the 200 DET synsets, in the order it tried them (``200words100urls.csv``) -- and
the five JPEGs per synset it kept (``imagen/<image_id>_<label>.jpg``).  In this world the
URLs are those real lines; a URL is alive when its image id is among the kept files and
dead otherwise (what the blog post met before its fifth image, and what it never asked
for after).  The lines are written in an order that makes the pipeline's seeded sample
(``sampler.sampling.candidate_order``, seed ``sample_seed``) try them in the 2017 order,
so a one-at-a-time loop needs exactly the requests the blog post's run needed.

How the dead answer is drawn per host, as today's web does: Flickr's dead photos redirect
to the "photo unavailable" placeholder or answer 404/410; a site with no living image in
the list is gone for good in half the cases (its name no longer resolves), else its
images answer 404/410/403 or a broken 500.  Bodies are rendered, as in every demo world.

Run ``python -m demo.world2017 OUT_DIR [--categories N]`` (needs the reference data:
``$SAMPLER_SHARED_DATA`` or ``shared/data`` beside the checkout).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlsplit

from demo.world import (
    DEFAULT_SLOW_SECONDS,
    Lines,
    _Builder,
    _read_categories,
    _write_world,
)
from sampler.categories.words import DET200
from sampler.sampling import candidate_order

SAMPLE_CSV = Path("imagenet") / "200words100urls.csv"
KEPT_DIR = Path("imagen")

_FLICKR_DEAD = {"flickr_placeholder_redirect": 6, "http_404": 3, "http_410": 1}
_SITE_DEAD = {"http_404": 34, "http_410": 8, "http_403": 8, "server_500": 8}


def shared_data() -> Path:
    """The reference data folder, or SystemExit saying where it was looked for."""
    env = os.environ.get("SAMPLER_SHARED_DATA")
    folder = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (folder / SAMPLE_CSV).is_file() or not (folder / KEPT_DIR).is_dir():
        raise SystemExit(
            f"the 2017 world needs the reference data ({SAMPLE_CSV} and {KEPT_DIR}/) in {folder}: "
            "set SAMPLER_SHARED_DATA"
        )
    return folder


def lines_2017(data: Path) -> tuple[dict[str, list[tuple[str, str]]], set[str]]:
    """(wnid -> its 100 (image_id, url) in the order 2017 tried them, image ids kept in 2017)."""
    rows: dict[str, list[tuple[str, str]]] = defaultdict(list)
    with (data / SAMPLE_CSV).open(encoding="utf-8", newline="") as src:
        for image_id, url in csv.reader(src):
            rows[image_id.split("_", 1)[0]].append((image_id, url))
    kept = {"_".join(name.split("_", 2)[:2]) for name in os.listdir(data / KEPT_DIR) if name.endswith(".jpg")}
    return dict(rows), kept


def build_2017_world(
    out_dir: Path,
    *,
    data: Path | None = None,
    n_categories: int = 200,
    seed: int = 0,
    sample_seed: int = 0,
    categories_csv: Path = DET200,
) -> Path:
    """Write the world into ``out_dir`` and return it (deterministic, as ``build_demo_world``)."""
    rows, kept = lines_2017(data or shared_data())
    categories = [(w, label) for w, label in _read_categories(categories_csv) if w in rows][:n_categories]
    b = _Builder(seed, DEFAULT_SLOW_SECONDS)
    alive_hosts = {urlsplit(url).hostname for lines in rows.values() for i, url in lines if i in kept}
    gone: dict[str, bool] = {}  # host -> no longer resolves
    blocks: dict[str, Lines] = {}
    for wnid, _label in categories:
        tried = []
        for image_id, url in rows[wnid]:
            host = urlsplit(url).hostname or ""
            if image_id in kept:
                behaviour = "ok"
            elif host.endswith("flickr.com"):
                behaviour = b.rng.choices(list(_FLICKR_DEAD), list(_FLICKR_DEAD.values()))[0]
            else:
                if host not in gone:
                    gone[host] = host not in alive_hosts and b.rng.random() < 0.5
                    if gone[host]:
                        b.dead_modes[host] = "dns" if b.rng.random() < 0.8 else "connect"
                if gone[host]:
                    behaviour = "dead_host"
                else:
                    behaviour = b.rng.choices(list(_SITE_DEAD), list(_SITE_DEAD.values()))[0]
            tried.append((image_id, b.add(url, host, behaviour, image_id)))
        # File order such that the seeded sample tries them in 2017's order.
        order = candidate_order(sample_seed, wnid, len(tried))
        in_file: list[tuple[str, str]] = [("", "")] * len(tried)
        for position, line in zip(order, tried, strict=True):
            in_file[position] = line
        blocks[wnid] = in_file
    role_of = {wnid: "2017" for wnid in blocks}
    return _write_world(Path(out_dir), b, categories, [], blocks, role_of, list(blocks), {})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.world2017", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--categories", type=int, default=200)
    args = parser.parse_args(argv)
    out = build_2017_world(args.out_dir, n_categories=args.categories)
    print(f"2017 world in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
