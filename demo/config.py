"""The luigi configuration that points the pipeline at a served demo world.

One writer for the quickstart, the tests and the benchmarks: where the URL tarball and
words.txt are served, which category list to sample, where data goes, and short fetch
timeouts (the demo server is on loopback; its "slow" URLs must time out quickly).
Run ``python -m demo.config PATH --server URL --data-dir DIR --categories LIST``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from demo.world import URLS_TGZ, WORDS_TXT
from sampler.atomic import atomic_write_bytes

# [FetchCategory] for a world on loopback: a demo "slow" URL answers after 3 s, so it times out.
DEMO_FETCH_TIMEOUTS: Mapping[str, str] = {"connect_timeout": "2", "read_timeout": "2", "deadline": "5"}
HEADER = "# Written by demo.config: the demo world instead of the real ImageNet sources.\n"


def demo_config(
    server_url: str,
    data_dir: str | Path,
    categories: str | Path,
    *,
    fetch_timeouts: Mapping[str, str] | None = DEMO_FETCH_TIMEOUTS,
    sections: Mapping[str, Mapping[str, object]] | None = None,
) -> dict[str, dict[str, str]]:
    """The demo configuration as {section: {key: value}}.

    ``server_url``: the demo server (``demo.server``) serving the world's files;
    ``categories``: a categories CSV or a preset name (as ``[ParseSynsets] categories``);
    ``fetch_timeouts``: the ``[FetchCategory]`` timeouts, None to keep luigi.cfg's (benchmarks);
    ``sections``: more settings, merged over these ({"FetchCategory": {"deadline": 9}}).

    Paths are written absolute (resolved against the current folder), so the file works
    whichever folder a command naming it in LUIGI_CONFIG_PATH runs from.
    """
    config: dict[str, dict[str, str]] = {
        "paths": {"data_dir": absolute(data_dir)},
        "DownloadUrlTarball": {"mirrors": json.dumps([f"{server_url}/files/{URLS_TGZ}"])},
        # The demo tarball is not the published one: its size and MD5 differ by design.
        "ExtractUrls": {"compare_published": "false"},
        "ParseSynsets": {
            "words_url": f"{server_url}/files/{WORDS_TXT}",
            "categories": category_setting(categories),
        },
    }
    if fetch_timeouts is not None:
        config["FetchCategory"] = dict(fetch_timeouts)
    for name, values in (sections or {}).items():
        config.setdefault(name, {}).update({key: str(value) for key, value in values.items()})
    return config


def absolute(path: str | Path) -> str:
    return os.path.abspath(os.path.expanduser(str(path)))


def category_setting(categories: str | Path) -> str:
    """A CSV's path made absolute; a preset's name or a subtree (under:<wnid>) as it is."""
    text = str(categories)
    if isinstance(categories, Path) or text.endswith(".csv") or os.sep in text or os.path.exists(text):
        return absolute(text)
    return text


def write_demo_config(
    path: Path,
    server_url: str,
    data_dir: str | Path,
    categories: str | Path,
    *,
    fetch_timeouts: Mapping[str, str] | None = DEMO_FETCH_TIMEOUTS,
    sections: Mapping[str, Mapping[str, object]] | None = None,
) -> Path:
    """Write :func:`demo_config` as a luigi config file at ``path`` and return ``path``.

    Point ``LUIGI_CONFIG_PATH`` at it: luigi reads the project's luigi.cfg first, then this.
    """
    config = demo_config(server_url, data_dir, categories, fetch_timeouts=fetch_timeouts, sections=sections)
    text = HEADER + "".join(
        f"\n[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())
        for name, values in config.items()
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.config", description="Write the luigi configuration for a served demo world."
    )
    parser.add_argument("path", type=Path, help="the config file to write")
    parser.add_argument("--server", required=True, help="the demo server's URL, e.g. http://127.0.0.1:PORT")
    parser.add_argument("--data-dir", required=True, help="[paths] data_dir")
    parser.add_argument("--categories", required=True, help="a categories CSV or a preset name")
    args = parser.parse_args(argv)
    write_demo_config(args.path, args.server, args.data_dir, args.categories)
    return 0


if __name__ == "__main__":
    sys.exit(main())
