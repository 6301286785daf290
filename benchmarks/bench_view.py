"""What images/ as checked copies of the store costs, beside the hard links it replaced.

    python benchmarks/bench_view.py [--images 1000] [--size 110000]

Makes a store of ``--images`` random bodies of ``--size`` bytes (a Flickr 500 px JPEG is
about 110 kB), then builds images/ twice from scratch: once as hard links (the old view,
no check) and once with ``sampler.store.make_view`` (copies, each body's sha256 checked as
it is read), and prints the wall time and the disk space of each.  The page cache is warm
in both: this measures the copy and the hash, not the disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sampler.store import ImageStore, make_view


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=110_000)
    args = parser.parse_args()
    root = Path(
        tempfile.mkdtemp(
            prefix="bench-view-", dir=Path("bench-data").resolve() if Path("bench-data").is_dir() else None
        )
    )
    try:
        store = ImageStore(root / "store")
        wanted = {f"n0000000{i % 10}_{i}_x.jpg": store.put(os.urandom(args.size)) for i in range(args.images)}
        links = root / "links"
        links.mkdir()
        started = time.perf_counter()
        for name, digest in wanted.items():
            os.link(store.path(digest), links / name)
        linked = time.perf_counter() - started
        started = time.perf_counter()
        make_view(store, root / "images", wanted)
        copied = time.perf_counter() - started
        started = time.perf_counter()
        make_view(store, root / "images", wanted)  # the rerun: every copy checked, nothing placed
        checked = time.perf_counter() - started
        total = args.images * args.size
        print(
            f"load average {os.getloadavg()[0]:.2f}; {args.images} images of {args.size:,} bytes "
            f"({total / 1e6:.0f} MB)"
        )
        print(f"hard links, no check:          {linked:7.3f} s, extra disk 0 MB")
        print(f"checked copies (make_view):    {copied:7.3f} s, extra disk {total / 1e6:.0f} MB")
        print(f"make_view again (all present): {checked:7.3f} s")
    finally:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
