"""The attempt files: one CSV row per URL a category round tried (or settled without a request).

``round<R>/<wnid>.attempts.csv`` is written whole when a round ends; its journal
(``.journal.csv``) grows row by row while the round runs, so that a killed round is replayed
instead of fetched again.  FetchFives concatenates every round's file into ``attempts.csv``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path

from sampler.atomic import atomic_path
from sampler.outcomes import legacy

ATTEMPT_FIELDS = [
    "image_id",
    "url",
    "final_url",
    "status",
    "outcome",
    "bytes",
    "ms",
    "md5",
    "sha256",
    "error",
    "requests",  # HTTP requests the URL cost (retries, redirect hops); 0 when replayed or settled
    "judged",  # last: a row cut short by a kill has no judged cell and is dropped
]


def read_attempts(path: Path) -> list[dict[str, str]]:
    """The complete rows of an attempts file or journal, outcomes in today's vocabulary."""
    if not path.exists():
        return []
    rows = []
    with path.open(encoding="utf-8", newline="") as src:
        for row in csv.DictReader(src):
            # A journal killed mid-line leaves a torn last row: keep only complete ones.
            if row.get("judged") in ("True", "False"):
                # Files written before each outcome had one name (sampler.outcomes.legacy).
                row["outcome"] = legacy(row["outcome"], sha256=row["sha256"], error=row["error"] or "")
                rows.append(row)
    return rows


def requests_of(row: Mapping[str, str | None]) -> int:
    """HTTP requests an attempt row cost; 0 for rows written before they were counted."""
    try:
        return int(row.get("requests") or 0)
    except ValueError:
        return 0


def write_attempts(rows: Iterable[Mapping[str, object]], path: Path, extra: Mapping[str, object]) -> None:
    fields = list(extra) + ATTEMPT_FIELDS
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fields, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**extra, **row})
