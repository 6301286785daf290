"""FetchFives' work once every category is in: cross-category checks and the manifest.

A placeholder that is on no list still gives itself away: the same bytes come
back for different URLs.  Inside one category ``fetch_category`` sees that; across
categories only a step that sees every category can.  Each category records the
hashes of every image it judged, so this step finds bytes seen behind two or more
URLs, bans them and names the categories that kept such an image (they are
topped up in another round).  An URL listed under two synsets is kept by the
first category only, so no two kept images are byte-identical.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sampler.atomic import atomic_path, atomic_write_text
from sampler.fetch import rate_limits
from sampler.fetch.attempts import RequestTally, iter_attempts
from sampler.fetch.results import RoundResult
from sampler.naming import host_of, image_filename, spreadsheet_safe
from sampler.store import is_intact

MANIFEST_FIELDS = [
    "image_id",
    "wnid",
    "label",
    "url",
    "final_url",
    "file",
    "sha256",
    "md5",
    "bytes",
    "width",
    "height",
]


@dataclass
class RoundPlan:
    """What the next round must do: bytes banned everywhere, bytes refused per category, who reruns."""

    placeholders: set[str] = field(default_factory=set)
    exclude: dict[str, set[str]] = field(default_factory=dict)
    rerun: list[str] = field(default_factory=list)

    def banned_for(self, wnid: str) -> set[str]:
        return self.placeholders | self.exclude.get(wnid, set())

    def to_json(self) -> dict:
        return {
            "placeholders": sorted(self.placeholders),
            "exclude": {w: sorted(s) for w, s in sorted(self.exclude.items())},
            "rerun": self.rerun,
        }

    @classmethod
    def from_json(cls, data: Mapping) -> RoundPlan:
        return cls(
            set(data.get("placeholders", [])),
            {w: set(s) for w, s in data.get("exclude", {}).items()},
            list(data.get("rerun", [])),
        )


def round_plan_path(folder: Path, round_: int) -> Path:
    """``fetch/<configuration>/round<R>.json``: what top-up round R reruns and bans."""
    return folder / f"round{round_}.json"


def write_round_plan(folder: Path, round_: int, plan: RoundPlan) -> None:
    atomic_write_text(round_plan_path(folder, round_), json.dumps(plan.to_json(), indent=1) + "\n")


def read_round_plan(folder: Path, round_: int) -> RoundPlan:
    return RoundPlan.from_json(json.loads(round_plan_path(folder, round_).read_text(encoding="utf-8")))


def round_plans(folder: Path) -> dict[int, RoundPlan]:
    """Every top-up round's plan in a configuration's folder; an unreadable one is left out."""
    plans = {}
    for path in folder.glob("round*.json"):
        number = path.stem.removeprefix("round")
        if number.isdigit():
            try:
                plans[int(number)] = read_round_plan(folder, int(number))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
    return plans


def plan_next_round(
    order: Sequence[str],
    history: Mapping[str, Sequence[RoundResult]],
    current: Mapping[str, RoundResult],
    previous: RoundPlan | None = None,
) -> RoundPlan:
    """Find cross-category placeholders and the categories that must be topped up.

    ``order``: the wnids in category-list order; ``history``: every result each
    category produced so far (all rounds); ``current``: its latest result.
    """
    plan = RoundPlan(
        set(previous.placeholders) if previous else set(),
        {w: set(s) for w, s in previous.exclude.items()} if previous else {},
    )
    urls_by_hash: dict[str, set[str]] = defaultdict(set)
    for results in history.values():
        for result in results:
            for judged in result.judged:
                if judged.sha256:
                    urls_by_hash[judged.sha256].add(judged.url)
    plan.placeholders |= {digest for digest, urls in urls_by_hash.items() if len(urls) > 1}
    owner: dict[str, str] = {}
    for wnid in order:
        for image in current[wnid].kept:
            first = owner.setdefault(image.sha256, wnid)
            if first != wnid:
                plan.exclude.setdefault(wnid, set()).add(image.sha256)
    plan.rerun = [
        wnid for wnid in order if any(image.sha256 in plan.banned_for(wnid) for image in current[wnid].kept)
    ]
    return plan


def without_banned(current: Mapping[str, RoundResult], plan: RoundPlan) -> dict[str, RoundResult]:
    """Drop kept images the plan bans, counting them as shortfall (when top-up rounds run out)."""
    cleaned = {}
    for wnid, result in current.items():
        banned = plan.banned_for(wnid)
        kept = [image for image in result.kept if image.sha256 not in banned]
        cleaned[wnid] = dataclasses.replace(result, kept=kept)
    return cleaned


def relabelled(current: Mapping[str, RoundResult], labels: Mapping[str, str]) -> dict[str, RoundResult]:
    """The results under the labels of the list asked for, kept files renamed to match.

    A category's result is stored per wnid, so a list that only renames a category reuses
    the result made under its old label (its images are the same): the manifest and
    images/ must still carry the label the list gives now.
    """
    renamed = {}
    for wnid, result in current.items():
        label = labels.get(wnid, result.label)
        if label == result.label:
            renamed[wnid] = result
            continue
        kept = [
            dataclasses.replace(image, file=image_filename(image.image_id, label)) for image in result.kept
        ]
        renamed[wnid] = dataclasses.replace(result, label=label, kept=kept)
    return renamed


def manifest_rows(order: Sequence[str], current: Mapping[str, RoundResult]) -> list[dict]:
    """The manifest's rows (MANIFEST_FIELDS): every kept image, in category-list order."""
    rows = []
    for wnid in order:
        result = current[wnid]
        for image in result.kept:
            rows.append({**dataclasses.asdict(image), "wnid": wnid, "label": result.label})
    return rows


def write_manifest(rows: Sequence[Mapping], path: Path) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, MANIFEST_FIELDS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(_spreadsheet_safe_row(row) for row in rows)


def _spreadsheet_safe_row(row: Mapping) -> dict:
    # URLs and error messages come from the web: none may run as a spreadsheet formula.
    return {name: spreadsheet_safe(value) for name, value in row.items()}


def read_manifest(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    with Path(path).open(encoding="utf-8", newline="") as src:
        return list(csv.DictReader(src))


def image_view(rows: Sequence[Mapping]) -> dict[str, str]:
    """What images/ must hold for these manifest rows: file name -> sha256 of its store entry."""
    return {row["file"]: row["sha256"] for row in rows}


def missing_images(rows: Sequence[Mapping], images_dir: Path, written_at: float | None = None) -> list[str]:
    """Manifest files absent from images/, of another size, or changed since: images/ needs repair.

    ``written_at``: the manifest's mtime (sampler.store.is_intact).
    """
    missing = []
    for row in rows:
        try:
            size = int(row["bytes"])
        except ValueError:
            missing.append(row["file"])
            continue
        if not is_intact(images_dir / row["file"], size, row["sha256"], written_at, own_copy=True):
            missing.append(row["file"])
    return missing


def write_fetch_report(
    current: Mapping[str, RoundResult],
    attempt_files: Sequence[Path],
    attempts_out: Path,
    summary_out: Path,
    config: Mapping | None = None,
) -> dict:
    """Every attempt of every round in one CSV, and outcome counts per category and per host.

    One pass with the csv module, not pandas: this is the last step of FetchFives, on the
    critical path of every run, and importing pandas alone cost 0.43 s there (FetchFives
    0.17 s -> 0.60 s on a 60-category dead web) for a concatenation and two counts.
    The rows are written as they are read, not held: all of ImageNet on a dead web is
    millions of attempts."""
    by_category: dict[str, Counter] = defaultdict(Counter)
    by_host: dict[str, Counter] = defaultdict(Counter)
    fields: list[str] = ["wnid"]
    for path in attempt_files:  # the columns first (every file's first complete row names them)
        for row in iter_attempts(path):
            fields += [name for name in row if name not in fields]
            break
    tally = RequestTally()
    limited: dict[str, Mapping[str, str]] = {}  # URL -> its latest row, while that is a 429
    with atomic_path(attempts_out) as tmp, tmp.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fields, lineterminator="\n")
        writer.writeheader()
        for path in attempt_files:
            for row in iter_attempts(path):  # outcomes in today's names, whatever version wrote them
                row["wnid"] = row["image_id"].split("_", 1)[0]
                writer.writerow(_spreadsheet_safe_row(row))
                by_category[row["wnid"]][row["outcome"]] += 1
                by_host[host_of(row["url"])][row["outcome"]] += 1
                tally.add(row)
                limited.pop(row["url"], None)  # (the latest row of a URL counts)
                if row["outcome"] == rate_limits.RATE_LIMITED:
                    limited[row["url"]] = row
    # URLs answered 429 that a category decided on (speculative ones do not matter): FetchFives
    # is done only until the first of them may be asked again.
    decided = [judged.url for result in current.values() for judged in result.judged]
    limits = rate_limits.host_limits(limited.values(), decided)
    kept = sum(len(r.kept) for r in current.values())
    summary = {
        "config": dict(config or {}),
        "rate_limited": [limit.to_json() for limit in limits],
        "categories": len(current),
        "kept": kept,
        # The load on the web: requests sent, per kept image, and the look-ahead's waste.
        "requests": tally.cost().to_json(kept),
        "shortfalls": {w: r.shortfall for w, r in current.items() if r.shortfall},
        "outcomes": dict(sum(by_category.values(), Counter()).most_common()),
        "by_category": {w: dict(c.most_common()) for w, c in sorted(by_category.items())},
        "by_host": {h: dict(c.most_common()) for h, c in sorted(by_host.items())},
    }
    atomic_write_text(summary_out, json.dumps(summary, indent=1) + "\n")
    return summary
