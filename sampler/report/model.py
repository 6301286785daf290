"""The run report's data: a finished run's files turned into one JSON-ready dict.

``collect_run_report`` reads a run's files (every one optional: a missing or partial file
makes its numbers ``None``, never a crash) and ``build_run_report`` turns them into the
report: counts per stage, outcome classes per host and per category, shortfalls and
timings.  attempts.csv and manifest.csv are read and counted as pandas tables; what each
outcome means and which class it belongs to comes from ``sampler.outcomes``, so names
added there are counted here unchanged.  ``text`` and ``charts`` draw from the dict.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sampler.categories.words import Category
from sampler.naming import host_of
from sampler.outcomes import (
    CLASSES,
    HTTP_PREFIX,
    MEANINGS,
    Outcome,
    OutcomeClass,
    http_status,
    legacy,
    outcome_class,
)
from sampler.report.run_files import Timing, count_sample_urls, read_json_object, read_timings

log = logging.getLogger(__name__)

# Every class the report counts, in the order it lists them; plain strings, as in the JSON.
CLASS_KEYS: tuple[str, ...] = tuple(c.value for c in OutcomeClass)
NO_OUTCOME = "(none)"  # an attempts.csv row with an empty outcome cell


def class_of(name: str) -> str:
    """The class of an outcome name as recorded, as the JSON's plain string."""
    return outcome_class(name).value


def _class_members() -> dict[str, str]:
    members: dict[str, list[str]] = {key: [] for key in CLASS_KEYS}
    members[outcome_class(http_status(404)).value].append(f"{HTTP_PREFIX}<status>")
    for outcome, cls in CLASSES.items():
        members[cls.value].append(outcome.value)
    members[OutcomeClass.OTHER.value].append("any name this vocabulary does not know")
    return {key: ", ".join(names) for key, names in members.items()}


DEFINITIONS: dict[str, object] = {
    "urls_tried": "distinct (category, URL) pairs with an outcome, the last round's outcome winning; "
    "skipped URLs (never requested: already a candidate of the category) are not counted",
    "dead_link_rate": "dead links / URLs tried",
    "classes": {c.value: c.label for c in OutcomeClass},
    # Each class: the outcome names it holds (see "outcomes" for what each means).
    **_class_members(),
    "outcomes": {
        f"{HTTP_PREFIX}<status>": "an HTTP answer other than 200 (after redirects and retries)",
        **{o.value: MEANINGS[o] for o in Outcome},
    },
    "timings": "seconds each task's run() took, from luigi's PROCESSING_TIME event (the latest run of "
    "each task id); fetch_ms: per-URL request times from attempts.csv (requests overlap, so they do "
    "not add up to wall time)",
}


# --- reading the tables -------------------------------------------------------------------


# attempts.csv is read in blocks of this many rows, each cut to what the report counts as it
# comes: a dead web's run of all of ImageNet is ~1.4 M rows, and the whole file as a table
# (with attempt_table's per-row Python objects on top) peaked at 5 GB.
ATTEMPT_BLOCK_ROWS = 100_000

_READ_OPTIONS: dict[str, Any] = {
    "dtype": str,
    "keep_default_na": False,
    "encoding_errors": "replace",
    "on_bad_lines": "warn",
}


def read_table(path: Path) -> pd.DataFrame:
    """A CSV file as text cells ("" when empty); an empty table when it is missing or unreadable."""
    blocks = _read_blocks(path, None, lambda table: table)
    return blocks[0] if blocks else pd.DataFrame()


def _read_blocks(
    path: Path, block_rows: int | None, reduce: Callable[[pd.DataFrame], pd.DataFrame]
) -> list[pd.DataFrame]:
    """``reduce`` of each block of ``block_rows`` rows of a CSV file (of the whole file when
    None), read as ``read_table`` reads it; [] when it is missing or unreadable."""
    try:
        try:
            return _reduced_blocks(path, block_rows, reduce, _READ_OPTIONS)
        except pd.errors.ParserError as error:
            # The C parser gives up on the whole file at a quote left open to its end (an
            # edited file); the python one skips the bad lines (slower: only as a fallback,
            # and on the whole file: in blocks, it fails at that quote too).
            log.warning("run report: %s: %s; reading it line by line", path, error)
            return _reduced_blocks(path, None, reduce, {**_READ_OPTIONS, "engine": "python"})
    except (OSError, ValueError) as error:  # pandas' EmptyDataError and ParserError are ValueErrors
        log.warning("run report: cannot read %s (%s)", path, error)
        return []


Reduce = Callable[[pd.DataFrame], pd.DataFrame]


def _reduced_blocks(
    path: Path, block_rows: int | None, reduce: Reduce, options: Mapping[str, Any]
) -> list[pd.DataFrame]:
    # fillna: a short row's missing cells.
    if block_rows is None:
        return [reduce(pd.read_csv(path, **options).fillna(""))]
    with pd.read_csv(path, chunksize=block_rows, **options) as reader:
        return [reduce(block.fillna("")) for block in reader]


def read_attempt_table(path: Path, block_rows: int = ATTEMPT_BLOCK_ROWS) -> pd.DataFrame:
    """``attempt_table(read_table(path))`` without its ``url`` column (its ``url_key`` stands for
    it), never holding the whole file as read: each block is cut to those columns as it comes.
    (A dead web's 1.4 M URLs are most of the file.)"""
    blocks = _read_blocks(path, block_rows, lambda block: attempt_table(block).drop(columns="url"))
    if not blocks:
        return attempt_table(pd.DataFrame()).drop(columns="url")
    return pd.concat(blocks, ignore_index=True) if len(blocks) > 1 else blocks[0]


def _column(table: pd.DataFrame, name: str) -> pd.Series:
    if name in table.columns:
        return table[name].astype(str)
    return pd.Series([""] * len(table), index=table.index, dtype=str)


# Two independent 64-bit digests of a URL: the report tells URLs apart by them (a collision
# of both within one category is a 2^-128 chance), not by holding every URL.
URL_KEYS = ("url_key", "url_key2")
_URL_HASH_KEYS = ("imagenet-sampler", "sampler-url-keys")  # siphash keys: 16 characters each


def _url_key(url: pd.Series, hash_key: str) -> pd.Series:
    return pd.util.hash_pandas_object(url, index=False, hash_key=hash_key)


def attempt_table(attempts: pd.DataFrame) -> pd.DataFrame:
    """attempts.csv as the report counts it: wnid, url (and its ``URL_KEYS``), host, outcome
    (today's name), class, ms, and the outcome as recorded."""
    image_id = _column(attempts, "image_id")
    wnid = _column(attempts, "wnid")
    wnid = wnid.where(wnid != "", image_id.str.split("_", n=1).str[0])
    url = _column(attempts, "url")
    sha256 = _column(attempts, "sha256")
    error = _column(attempts, "error")
    recorded = _column(attempts, "outcome").replace("", NO_OUTCOME)
    # A row written before the renames says "placeholder" or "truncated": a judged body (a
    # recorded digest, or the image check's message) tells which.
    outcome = [
        str(legacy(name, sha256=digest, error=text))
        for name, digest, text in zip(recorded, sha256, error, strict=True)
    ]
    ms = pd.to_numeric(_column(attempts, "ms"), errors="coerce")
    table = pd.DataFrame(
        {
            "wnid": wnid,
            "url": url,
            **{name: _url_key(url, key) for name, key in zip(URL_KEYS, _URL_HASH_KEYS, strict=True)},
            "host": url.map(host_of),
            "outcome": outcome,
            "ms": ms,
            "recorded": recorded,
        },
        index=attempts.index,
    )
    table["class"] = table["outcome"].map({name: class_of(name) for name in table["outcome"].unique()})
    return table


# --- counting -----------------------------------------------------------------------------


def _tally(key: str, name: str, classes: Mapping[str, int], outcomes: Mapping[str, int]) -> dict:
    """One name's (a host's, a category's, the run's) counts: per class, and per outcome."""
    tried = sum(n for c, n in classes.items() if c != OutcomeClass.SKIPPED.value)
    dead = classes.get(OutcomeClass.DEAD_LINK.value, 0)
    return {
        key: name,
        "tried": tried,
        **{c: int(classes.get(c, 0)) for c in CLASS_KEYS},
        "dead_link_rate": round(dead / tried, 4) if tried else None,
        "outcomes": dict(outcomes),
    }


def _tallies(counts: pd.Series, key: str) -> dict[str, dict]:
    """Each name's tally, from ``counts`` (a count per (name, outcome)), in name order."""
    frame = counts.rename("n").reset_index()
    frame.columns = pd.Index(["name", "outcome", "n"])
    frame = frame[frame["n"] > 0]
    frame["class"] = frame["outcome"].map({o: class_of(o) for o in frame["outcome"].unique()})
    by_class = frame.pivot_table(index="name", columns="class", values="n", aggfunc="sum", fill_value=0)
    by_class = by_class.reindex(columns=list(CLASS_KEYS), fill_value=0)
    # The most frequent outcome first; equal counts by name, whatever the order of the rows.
    frame = frame.sort_values(["name", "n", "outcome"], ascending=[True, False, True])
    outcomes: dict[str, dict[str, int]] = defaultdict(dict)
    for name, outcome, n in zip(frame["name"], frame["outcome"], frame["n"].tolist(), strict=True):
        outcomes[str(name)][str(outcome)] = n
    return {
        str(name): _tally(key, str(name), dict(zip(CLASS_KEYS, row, strict=True)), outcomes[str(name)])
        for name, row in zip(by_class.index, by_class.itertuples(index=False, name=None), strict=True)
    }


def _counts(pairs: Sequence[tuple[str, str, int]]) -> pd.Series:
    """A count per (name, outcome), from (name, outcome, n) triples."""
    index = pd.MultiIndex.from_arrays(
        [[name for name, _, _ in pairs], [outcome for _, outcome, _ in pairs]], names=["name", "outcome"]
    )
    return pd.Series([n for _, _, n in pairs], index=index, dtype="int64").groupby(level=[0, 1]).sum()


def _summary_counts(tallies: object) -> pd.Series:
    """FetchFives' own tallies (``{name: {outcome: n}}`` in fetch_summary.json) as counts."""
    pairs = []
    if isinstance(tallies, Mapping):
        for name, outcomes in tallies.items():
            if isinstance(outcomes, Mapping):
                pairs += [(str(name), str(o), n) for o, v in outcomes.items() if (n := _int_or_none(v))]
    return _counts(pairs)


def fetch_ms_stats(table: pd.DataFrame) -> dict[str, dict]:
    """Request times per outcome class: requests, total seconds, median and 90th percentile."""
    ms = table["ms"]
    # 0: an earlier round's outcome replayed, nothing requested.
    requested = table.loc[(ms > 0) & np.isfinite(ms), ["class", "ms"]]
    stats = {}
    for cls, group in requested.groupby("class", sort=True):
        values = group["ms"]
        stats[str(cls)] = {
            "requests": len(values),
            "total_seconds": round(float(values.sum()) / 1000, 3),
            "median_ms": round(float(values.median()), 1),
            # The nearest rank at or above 90%: a time some request really took.
            "p90_ms": round(float(values.quantile(0.9, interpolation="higher")), 1),
        }
    return stats


def summarise_timings(timings: Sequence[Timing]) -> list[dict]:
    """Per task family: tasks, total and longest seconds (the latest line of each task id wins)."""
    latest = {t.task_id: t for t in timings}
    by_family: dict[str, list[Timing]] = defaultdict(list)
    for timing in latest.values():
        by_family[timing.family].append(timing)
    summary = [
        {
            "family": family,
            "tasks": len(items),
            "seconds": round(sum(t.seconds for t in items), 3),
            "max_seconds": round(max(t.seconds for t in items), 3),
            "slowest": max(items, key=lambda t: t.seconds).task_id,
        }
        for family, items in by_family.items()
    ]
    return sorted(summary, key=lambda s: -s["seconds"])


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return None


def _number_or_none(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def url_list_stage(url_report: Mapping) -> dict:
    """ExtractUrls' counts; a key the report lacks becomes None."""
    malformed_raw = url_report.get("malformed")
    # Counts only: the report may also keep example lines next to them.
    malformed = (
        {str(k): v for k, v in malformed_raw.items() if _int_or_none(v) is not None}
        if isinstance(malformed_raw, Mapping)
        else {}
    )
    return {
        "lines": _int_or_none(url_report.get("lines")),
        "bytes": _int_or_none(url_report.get("bytes")),
        "synsets": _int_or_none(url_report.get("synsets")),
        "urls": _int_or_none(url_report.get("urls")),
        "malformed": malformed,
        "malformed_total": sum(malformed.values()) if isinstance(malformed_raw, Mapping) else None,
        "seconds": _number_or_none(url_report.get("seconds")),
    }


# --- the report ---------------------------------------------------------------------------


def _categories(categories: Sequence[Category], manifest: pd.DataFrame) -> tuple[list[str], dict[str, str]]:
    """The category order and labels: the list's, then any wnid only the manifest knows."""
    labels = {c.wnid: c.label for c in categories}
    order = [c.wnid for c in categories]
    firsts = pd.DataFrame({"wnid": _column(manifest, "wnid"), "label": _column(manifest, "label")})
    for wnid, label in firsts.drop_duplicates("wnid").itertuples(index=False):
        if wnid not in labels:
            order.append(wnid)
            labels[wnid] = label
    return order, labels


def _requests(fetch_summary: Mapping) -> dict | None:
    cost = fetch_summary.get("requests")
    if not isinstance(cost, Mapping) or not isinstance(cost.get("made"), int):
        return None
    return {k: cost.get(k) for k in ("made", "per_kept_image", "look_ahead_not_needed")}


def _outcome_counts(table: pd.DataFrame, fetch_summary: Mapping) -> tuple[pd.Series, pd.Series, str | None]:
    """Counts per (host, outcome) and per (wnid, outcome), and the file they come from."""
    if len(table):
        # The last round's outcome of a URL wins: a top-up round replays earlier failures.
        latest = table.drop_duplicates(["wnid", *URL_KEYS], keep="last")[["wnid", "host", "outcome"]]
        by_host = latest.groupby(["host", "outcome"]).size()
        by_category = latest.groupby(["wnid", "outcome"]).size()
        return by_host, by_category, "attempts.csv"
    # No attempts file: FetchFives' own tallies (every attempt row, replays included).
    by_host = _summary_counts(fetch_summary.get("by_host"))
    by_category = _summary_counts(fetch_summary.get("by_category"))
    return by_host, by_category, "fetch_summary.json" if len(by_host) or len(by_category) else None


def build_run_report(
    *,
    categories: Sequence[Category],
    manifest: pd.DataFrame,
    per_category: int,
    fetch_summary: Mapping,
    attempts: pd.DataFrame,
    url_report: Mapping,
    sampled_urls: int | None,
    timings: Sequence[Timing],
) -> dict:
    """The report as a JSON-ready dict, from the run's tables and values (see ``collect_run_report``);
    ``attempts`` is attempts.csv as ``attempt_table`` counts it."""
    order, labels = _categories(categories, manifest)
    kept_by_wnid = _column(manifest, "wnid").value_counts()
    table = attempts
    by_host, by_category, source = _outcome_counts(table, fetch_summary)
    every_url = by_category.groupby(level=1).sum()
    overall = _tallies(pd.concat({"all": every_url}), "scope").get("all") or _tally("scope", "all", {}, {})
    category_tallies = _tallies(by_category, "wnid")

    shortfalls = []
    category_rows = []
    for wnid in order:
        kept = int(kept_by_wnid.get(wnid, 0))
        missing = max(0, per_category - kept)
        if missing:
            shortfalls.append({"wnid": wnid, "label": labels[wnid], "kept": kept, "missing": missing})
        tally = category_tallies.get(wnid) or _tally("wnid", wnid, {}, {})
        category_rows.append({**tally, "label": labels[wnid], "kept": kept, "missing": missing})
    hosts = sorted(_tallies(by_host, "host").values(), key=lambda h: (-h["tried"], h["host"]))
    summary_short = fetch_summary.get("shortfalls")
    every_row = table["recorded"].value_counts().sort_index().sort_values(ascending=False, kind="stable")
    url_stage = url_list_stage(url_report)
    return {
        "schema": 1,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "per_category": per_category,
        "stages": {
            "url_list": url_stage,
            "categories": len(order),
            "sampled_urls": sampled_urls,
            "urls_tried": overall["tried"] if source else None,
            "attempt_rows": len(table) or None,
            "wanted": len(order) * per_category,
            "kept": len(manifest),
            "shortfall_categories": len(shortfalls),
            "missing_images": sum(s["missing"] for s in shortfalls),
            # FetchFives' own count, for cross-checking the manifest.
            "fetch_summary_shortfalls": len(summary_short) if isinstance(summary_short, Mapping) else None,
        },
        "shortfalls": shortfalls,
        # The load the run put on the web (FetchFives' count: requests sent, per kept image,
        # look-ahead requests no decision needed); None when fetch_summary.json predates it.
        "requests": _requests(fetch_summary),
        "outcomes_source": source,
        # Every row of attempts.csv, replays and speculative fetches included, by the name
        # recorded: the count fetch_summary.json's "outcomes" also makes, so the two files
        # agree (even when they predate today's names).
        "attempts": {
            "rows": len(table),
            "outcomes": {str(o): int(n) for o, n in every_row.items()},
        },
        "outcomes": overall["outcomes"],
        "outcome_classes": {c: overall[c] for c in CLASS_KEYS},
        "outcome_class_of": {o: class_of(o) for o in overall["outcomes"]},
        "dead_link_rate": overall["dead_link_rate"],
        "by_host": hosts,
        "by_category": category_rows,
        "timings": {
            "tasks": summarise_timings(timings),
            "url_extraction_seconds": url_stage["seconds"],
            "fetch_ms": fetch_ms_stats(table),
        },
        "definitions": DEFINITIONS,
    }


def collect_run_report(
    *,
    categories: Sequence[Category],
    per_category: int,
    manifest: Path,
    fetch_summary: Path,
    attempts: Path,
    url_report: Path,
    sample: Path | None,
    timings: Path,
    task_ids: Collection[str] | None = None,
) -> dict:
    """Read a run's files and build its report; absent files leave their numbers out.

    ``task_ids``: the tasks of this configuration; timings of other configurations' tasks
    (which share the timings file of a data_dir) are left out.
    """
    timing_rows = read_timings(timings)
    if task_ids is not None:
        timing_rows = [t for t in timing_rows if t.task_id in task_ids]
    return build_run_report(
        categories=categories,
        manifest=read_table(manifest),
        per_category=per_category,
        fetch_summary=read_json_object(fetch_summary),
        attempts=read_attempt_table(attempts),
        url_report=read_json_object(url_report),
        sampled_urls=count_sample_urls(sample) if sample else None,
        timings=timing_rows,
    )
