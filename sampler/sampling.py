"""Reproducible per-category samples of URLs.

Each category's candidates are a permutation of its rows in the index that
depends only on (seed, wnid, number of rows): not on worker count, on the order
categories are processed in, or on which other categories are sampled.  The
first ``per_category`` candidates are the sample; the rest, in the same order,
are the continuation a downloader draws from when some candidates fail.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from sampler.csv_fields import allow_long_fields
from sampler.index.read import UrlIndex

allow_long_fields()  # a sample holds the URL list's lines, however long

SAMPLE_HEADER = ("image_id", "url")


def candidate_order(seed: int, wnid: str, n: int) -> list[int]:
    """A permutation of ``range(n)`` determined by ``(seed, wnid, n)`` alone."""
    # A string seed is hashed with SHA-512 by random.Random: stable across runs,
    # platforms and Python versions (unlike hash()).
    order = list(range(n))
    random.Random(f"{seed}:{wnid}").shuffle(order)
    return order


def sample_urls(
    index: UrlIndex, wnids: Sequence[str], per_category: int, seed: int
) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """``per_category`` (image_id, url) rows per wnid, in ``wnids`` order, each in candidate order.

    Returns the rows and, for every wnid with fewer than ``per_category`` URLs
    (all of which are then in the sample), its count.  A wnid listed twice is
    sampled once.  (``iter_sample_urls`` gives the same rows one category at a time.)
    """
    short: dict[str, int] = {}
    rows = list(iter_sample_urls(index, wnids, per_category, seed, short))
    return rows, short


def iter_sample_urls(
    index: UrlIndex, wnids: Sequence[str], per_category: int, seed: int, short: dict[str, int] | None = None
) -> Iterator[tuple[str, str]]:
    """``sample_urls``' rows, one category at a time: all of ImageNet's 21,841 synsets x 100
    is 2.2 M rows, written as they come instead of held.  ``short`` (when given) is filled
    with each wnid that has fewer than ``per_category`` URLs, and its count."""
    if per_category < 0:
        raise ValueError(f"per_category must be >= 0, not {per_category}")
    for wnid in dict.fromkeys(wnids):
        n = index.count(wnid)
        if n < per_category and short is not None:
            short[wnid] = n
        positions = candidate_order(seed, wnid, n)[:per_category]
        yield from index.rows(wnid, positions)


def iter_candidates(index: UrlIndex, wnid: str, seed: int, start: int = 0) -> Iterator[tuple[str, str]]:
    """The candidates of ``wnid`` in candidate order from position ``start``.

    Nothing is read until the first candidate is asked for; then the synset's
    rows (a few thousand at most) are read once.
    """
    order = candidate_order(seed, wnid, index.count(wnid))
    if start >= len(order):
        return
    rows = index.rows(wnid)
    for position in order[max(0, start) :]:
        yield rows[position]


def write_sample_csv(rows: Iterable[tuple[str, str]], path: Path) -> None:
    """Write ``image_id,url`` rows as UTF-8 CSV (quoted where needed: URLs hold commas and quotes)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        # QUOTE_MINIMAL only quotes the characters of the line terminator, so a bare \r
        # would be written raw and read back as a line break: quote such rows fully.
        quote_all = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerow(SAMPLE_HEADER)
        for row in rows:
            (quote_all if any("\r" in field for field in row) else writer).writerow(row)


def read_sample_csv(path: Path) -> list[tuple[str, str]]:
    """Read a file written by ``write_sample_csv``."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != SAMPLE_HEADER:
            raise ValueError(f"{path}: expected the header {','.join(SAMPLE_HEADER)!r}, found {header!r}")
        rows = []
        for line_no, record in enumerate(reader, start=2):
            if len(record) != 2:
                raise ValueError(f"{path}:{line_no}: expected 2 fields (image_id,url), found {len(record)}")
            rows.append((record[0], record[1]))
        return rows
