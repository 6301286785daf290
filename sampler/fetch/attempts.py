"""The attempt files: one CSV row per URL a category round tried (or settled without a request).

``round<R>/<wnid>.attempts.csv`` is written whole when a round ends; its journal
(``.journal.csv``) grows row by row while the round runs, so that a killed round is replayed
instead of fetched again.  FetchFives concatenates every round's file into ``attempts.csv``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from sampler.atomic import atomic_path
from sampler.csv_fields import allow_long_fields
from sampler.outcomes import legacy

allow_long_fields()  # a URL of any length is recorded (bad_url), and read back

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
    return list(iter_attempts(path))


def iter_attempts(path: Path) -> Iterator[dict[str, str]]:
    """``read_attempts``' rows one at a time (FetchFives concatenates a whole run's)."""
    if not path.exists():
        return
    with path.open(encoding="utf-8", newline="") as src:
        for row in csv.DictReader(src):
            # A journal killed mid-line leaves a torn last row: keep only complete ones.
            if row.get("judged") in ("True", "False"):
                # Cells beyond the header's (a hand-edited line) have no name: FetchFives' one
                # attempts.csv has no column for them.
                row.pop(None, None)
                # Files written before each outcome had one name (sampler.outcomes.legacy).
                row["outcome"] = legacy(row["outcome"], sha256=row["sha256"], error=row["error"] or "")
                yield row


def requests_of(row: Mapping[str, object]) -> int:
    """HTTP requests an attempt row cost; 0 for rows written before they were counted."""
    try:
        return int(str(row.get("requests") or 0))
    except ValueError:
        return 0


@dataclass(frozen=True)
class RequestCost:
    """The load a run put on the web, from its attempt rows."""

    made: int  # HTTP requests sent: every try and redirect hop; replays and dead hosts cost none
    look_ahead_not_needed: int  # requests of look-ahead fetches that no decision used, in any round

    def per_kept(self, kept: int) -> float | None:
        return round(self.made / kept, 2) if kept else None

    def to_json(self, kept: int) -> dict[str, object]:
        return {
            "made": self.made,
            "per_kept_image": self.per_kept(kept),
            "look_ahead_not_needed": self.look_ahead_not_needed,
        }

    @classmethod
    def from_json(cls, data: object) -> RequestCost | None:
        """From ``to_json``'s dict; None for anything else (a summary written before)."""
        if not isinstance(data, Mapping):
            return None
        try:
            return cls(int(data["made"]), int(data["look_ahead_not_needed"]))
        except (KeyError, TypeError, ValueError):
            return None

    def text(self, kept: int) -> str:
        """``"48 requests (9.6 per kept image, 7 look-ahead requests not needed)"``"""
        per = self.per_kept(kept)
        per_text = f"{per:g} per kept image, " if per is not None else ""
        return (
            f"{self.made:,} requests ({per_text}{self.look_ahead_not_needed:,} look-ahead "
            f"request{'s' if self.look_ahead_not_needed != 1 else ''} not needed)"
        )


def request_cost(rows: Iterable[Mapping[str, object]]) -> RequestCost:
    """What ``rows`` (attempt rows of any rounds, as read or as written) cost.  A look-ahead
    fetch decided in a later round (a top-up replays it) was needed after all."""
    tally = RequestTally()
    for row in rows:
        tally.add(row)
    return tally.cost()


class RequestTally:
    """``request_cost`` row by row, for a run's attempts that are not held in memory: it keeps
    only the decided (image id, URL) pairs and the look-ahead fetches that cost requests."""

    def __init__(self) -> None:
        self.made = 0
        self._decided: set[str] = set()
        self._look_ahead: list[tuple[str, int]] = []

    def add(self, row: Mapping[str, object]) -> None:
        cost = requests_of(row)
        self.made += cost
        key = f"{row['image_id']}\t{row['url']}"  # (an image id holds no tab)
        if str(row["judged"]) == "True":
            self._decided.add(key)
        elif cost:
            self._look_ahead.append((key, cost))

    def cost(self) -> RequestCost:
        unneeded = sum(cost for key, cost in self._look_ahead if key not in self._decided)
        return RequestCost(self.made, unneeded)


def write_attempts(
    rows: Iterable[Mapping[str, object]], path: Path, extra: Mapping[str, object], *, clean_stale: bool = True
) -> None:
    """``clean_stale``: look for a crashed writer's temporaries beside ``path`` first (a listing
    of its folder: leave it to the run's sweep where the folder holds a file per category)."""
    fields = list(extra) + ATTEMPT_FIELDS
    with (
        atomic_path(path, clean_stale=clean_stale) as tmp,
        tmp.open("w", encoding="utf-8", newline="") as out,
    ):
        writer = csv.DictWriter(out, fields, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**extra, **row})
