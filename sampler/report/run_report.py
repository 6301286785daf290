"""The run report: what each stage did, where links were dead, what it cost in time.

``collect_run_report`` reads a finished run's files (every one optional: a
missing or partial file makes its numbers ``None``, never a crash) and
``build_run_report`` turns the values into one JSON-ready dict.  From that dict
come the short human summary (``format_summary``) and the charts, drawn as SVG
by hand (``chart_svgs``) so that neither matplotlib nor a server is needed.

Task timings come from a luigi event handler that appends one CSV line per
finished task (``append_timing``); workers in several processes append to the
same file, so a line is written with a single ``write`` and a torn last line is
skipped when reading.
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import math
import os
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sampler.atomic import atomic_write_text
from sampler.categories.words import Category
from sampler.naming import host_of

log = logging.getLogger(__name__)

TIMING_FIELDS = ["family", "task_id", "seconds", "finished"]

# Outcome classes.  A dead link is a URL whose image is gone, whatever the way it says so:
# an HTTP error, no host, no answer, or a placeholder instead of the photo (a redirect to
# "photo unavailable", known placeholder bytes, the same bytes behind another URL).
OK = "ok"
DEAD_LINK = "dead_link"
BAD_IMAGE = "bad_image"  # something came back, but not a usable JPEG
SKIPPED = "skipped"  # never requested: the URL was already a candidate of the category
OTHER = "other"  # our side's trouble (proxy, bugs) or an outcome this report does not know
CLASSES = (OK, DEAD_LINK, BAD_IMAGE, OTHER, SKIPPED)
CLASS_COLOURS = {
    OK: "#3a9e5c",
    DEAD_LINK: "#d64541",
    BAD_IMAGE: "#f0a030",
    OTHER: "#9a9a9a",
    SKIPPED: "#c8c8c8",
}
CLASS_NAMES = {
    OK: "working",
    DEAD_LINK: "dead link",
    BAD_IMAGE: "bad image",
    OTHER: "other",
    SKIPPED: "skipped",
}

_DEAD_LINK_OUTCOMES = frozenset(
    {
        "dead_host", "dead_host_known", "timeout", "ssl_error", "bad_url", "bad_scheme", "bad_redirect",
        "redirect_loop", "placeholder", "banned", "duplicate", "refused_address",
    }
)  # fmt: skip
_BAD_IMAGE_OUTCOMES = frozenset(
    {
        "empty", "not_jpeg", "truncated", "decode_error", "too_large", "too_small",
        "decompression_bomb", "bad_encoding", "implausible_size", "embedded_data",
    }
)  # fmt: skip
_SKIPPED_OUTCOMES = frozenset({"duplicate_url"})

DEFINITIONS = {
    "urls_tried": "distinct (category, URL) pairs with an outcome, the last round's outcome winning; "
    "skipped URLs (never requested) are not counted",
    "dead_link_rate": "dead links / URLs tried",
    "dead_link": "http_<status>, dead_host, timeout, ssl_error, bad_url, bad_scheme, bad_redirect, "
    "redirect_loop, placeholder, banned, duplicate (same bytes as another URL: a placeholder), "
    "refused_address (an internal address, never requested)",
    "bad_image": "empty, not_jpeg, truncated, decode_error, too_large, too_small, decompression_bomb, "
    "bad_encoding, implausible_size (fewer bytes than the declared pixels need), embedded_data "
    "(an archive, page or program after the image)",
    "skipped": "duplicate_url (the URL was already among the category's candidates)",
    "other": "anything else, e.g. proxy_error or error (a bug, recorded rather than fatal)",
    "timings": "seconds each task's run() took, from luigi's PROCESSING_TIME event (the latest run of "
    "each task id); fetch_ms: per-URL request times from attempts.csv (requests overlap, so they do "
    "not add up to wall time)",
}


def outcome_class(outcome: str) -> str:
    """ok, dead_link, bad_image, skipped or other."""
    if outcome == "ok":
        return OK
    if outcome.startswith("http_") or outcome in _DEAD_LINK_OUTCOMES:
        return DEAD_LINK
    if outcome in _BAD_IMAGE_OUTCOMES:
        return BAD_IMAGE
    if outcome in _SKIPPED_OUTCOMES:
        return SKIPPED
    return OTHER


# --- timings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    family: str
    task_id: str
    seconds: float
    finished: str = ""


def append_timing(path: Path, family: str, task_id: str, seconds: float) -> None:
    """Append one ``family,task_id,seconds,finished`` line to ``path`` (created with a header).

    One ``os.write`` on an O_APPEND descriptor: lines from concurrent worker
    processes do not interleave.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([family, task_id, f"{seconds:.3f}", time.strftime("%Y-%m-%dT%H:%M:%S%z")])
    line = buffer.getvalue().encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        line = (",".join(TIMING_FIELDS) + "\n").encode() + line
    except FileExistsError:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_timings(path: Path) -> list[Timing]:
    """Every complete line of a timings file; a torn last line (no newline yet) is ignored."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # a writer killed (or still writing) mid-line
    timings = []
    for row in csv.reader(io.StringIO(text)):
        if len(row) < 3 or row[0] == TIMING_FIELDS[0]:
            continue  # a header, wherever a race put it, or a damaged line
        try:
            seconds = float(row[2])
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            timings.append(Timing(row[0], row[1], seconds, row[3] if len(row) > 3 else ""))
    return timings


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


# --- reading a run's files -----------------------------------------------------------------


def read_json_object(path: Path) -> dict:
    """The JSON object in ``path``, or {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        log.warning("run report: cannot read %s (%s); its numbers are left out", path, error)
        return {}
    return data if isinstance(data, dict) else {}


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(encoding="utf-8", newline="") as src:
            return list(csv.DictReader(src))
    except OSError as error:
        log.warning("run report: cannot read %s (%s)", path, error)
        return []


def count_sample_urls(path: Path) -> int | None:
    """Rows of the URL sample (``image_id,url``, header optional); None when it is absent."""
    try:
        with path.open(encoding="utf-8", newline="", errors="replace") as src:
            rows = [row for row in csv.reader(src) if row and any(cell.strip() for cell in row)]
    except OSError:
        return None
    if rows and rows[0][0].strip().lower() == "image_id":
        rows = rows[1:]
    return len(rows)


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


# --- the report ----------------------------------------------------------------------------


def _tally(key: str, name: str, counts: Mapping[str, Counter]) -> dict:
    classes = Counter()
    for outcome, n in counts.items():
        classes[outcome_class(outcome)] += n
    tried = sum(n for c, n in classes.items() if c != SKIPPED)
    return {
        key: name,
        "tried": tried,
        **{c: classes.get(c, 0) for c in CLASSES},
        "dead_link_rate": round(classes[DEAD_LINK] / tried, 4) if tried else None,
        "outcomes": dict(Counter(counts).most_common()),
    }


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def build_run_report(
    *,
    categories: Sequence[Category],
    manifest: Sequence[Mapping[str, str]],
    per_category: int,
    fetch_summary: Mapping,
    attempts: Sequence[Mapping[str, str]],
    url_report: Mapping,
    sampled_urls: int | None,
    timings: Sequence[Timing],
) -> dict:
    """The report as a JSON-ready dict, from plain values (see ``collect_run_report``)."""
    labels = {c.wnid: c.label for c in categories}
    order = [c.wnid for c in categories]
    kept_by_wnid = Counter(row.get("wnid", "") for row in manifest)
    for wnid in kept_by_wnid:
        if wnid not in labels:
            order.append(wnid)
            labels[wnid] = next((r.get("label", "") for r in manifest if r.get("wnid") == wnid), "")

    # The last round's outcome of a URL wins: a top-up round replays earlier failures.
    latest: dict[tuple[str, str], Mapping[str, str]] = {}
    for row in attempts:
        wnid = row.get("wnid") or row.get("image_id", "").split("_", 1)[0]
        latest[(wnid, row.get("url", ""))] = row
    by_host: dict[str, Counter] = defaultdict(Counter)
    by_category: dict[str, Counter] = defaultdict(Counter)
    fetch_ms: dict[str, list[float]] = defaultdict(list)
    if latest:
        for (wnid, url), row in latest.items():
            outcome = row.get("outcome") or "(none)"
            by_host[host_of(url)][outcome] += 1
            by_category[wnid][outcome] += 1
        for row in attempts:
            ms = _number_or_none(_float(row.get("ms")))
            if ms:  # 0: an earlier round's outcome replayed, nothing requested
                fetch_ms[outcome_class(row.get("outcome") or "")].append(ms)
        source = "attempts.csv"
    else:  # no attempts file: FetchFives' own tallies (every attempt row, replays included)
        for host, outcomes in (fetch_summary.get("by_host") or {}).items():
            by_host[host].update({o: n for o, n in outcomes.items() if _int_or_none(n)})
        for wnid, outcomes in (fetch_summary.get("by_category") or {}).items():
            by_category[wnid].update({o: n for o, n in outcomes.items() if _int_or_none(n)})
        source = "fetch_summary.json" if by_host or by_category else None
    all_outcomes = sum(by_category.values(), Counter())
    overall = _tally("scope", "all", all_outcomes)

    shortfalls = []
    category_rows = []
    for wnid in order:
        kept = kept_by_wnid.get(wnid, 0)
        missing = max(0, per_category - kept)
        if missing:
            shortfalls.append({"wnid": wnid, "label": labels[wnid], "kept": kept, "missing": missing})
        category_rows.append(
            {
                **_tally("wnid", wnid, by_category.get(wnid, Counter())),
                "label": labels[wnid],
                "kept": kept,
                "missing": missing,
            }
        )
    hosts = sorted((_tally("host", h, c) for h, c in by_host.items()), key=lambda h: (-h["tried"], h["host"]))
    summary_short = fetch_summary.get("shortfalls")
    return {
        "schema": 1,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "per_category": per_category,
        "stages": {
            "url_list": url_list_stage(url_report),
            "categories": len(order),
            "sampled_urls": sampled_urls,
            "urls_tried": overall["tried"] if source else None,
            "attempt_rows": len(attempts) if attempts else None,
            "wanted": len(order) * per_category,
            "kept": len(manifest),
            "shortfall_categories": len(shortfalls),
            "missing_images": sum(s["missing"] for s in shortfalls),
            # FetchFives' own count, for cross-checking the manifest.
            "fetch_summary_shortfalls": len(summary_short) if isinstance(summary_short, Mapping) else None,
        },
        "shortfalls": shortfalls,
        "outcomes_source": source,
        # Every row of attempts.csv, replays and speculative fetches included: the count
        # fetch_summary.json's "outcomes" also makes, so the two files agree.
        "attempts": {
            "rows": len(attempts),
            "outcomes": dict(Counter(row.get("outcome") or "(none)" for row in attempts).most_common()),
        },
        "outcomes": overall["outcomes"],
        "outcome_classes": {c: overall[c] for c in CLASSES},
        "outcome_class_of": {o: outcome_class(o) for o in overall["outcomes"]},
        "dead_link_rate": overall["dead_link_rate"],
        "by_host": hosts,
        "by_category": category_rows,
        "timings": {
            "tasks": summarise_timings(timings),
            "url_extraction_seconds": url_list_stage(url_report)["seconds"],
            "fetch_ms": {
                c: {
                    "requests": len(v),
                    "total_seconds": round(sum(v) / 1000, 3),
                    "median_ms": round(statistics.median(v), 1),
                    "p90_ms": round(_percentile(v, 0.9), 1),
                }
                for c, v in sorted(fetch_ms.items())
            },
        },
        "definitions": DEFINITIONS,
    }


def _float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


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
        manifest=read_csv_rows(manifest),
        per_category=per_category,
        fetch_summary=read_json_object(fetch_summary),
        attempts=read_csv_rows(attempts),
        url_report=read_json_object(url_report),
        sampled_urls=count_sample_urls(sample) if sample else None,
        timings=timing_rows,
    )


# --- the human summary -------------------------------------------------------------------


def _n(value: object) -> str:
    return "?" if value is None else f"{value:,}"


def _plural(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def _pct(rate: float | None) -> str:
    return "?" if rate is None else f"{100 * rate:.1f}%"


def format_summary(report: Mapping) -> str:
    """A dozen lines for a person: the counts per stage, what failed, where the time went."""
    stages = report.get("stages", {})
    urls = stages.get("url_list", {})
    classes = report.get("outcome_classes", {})
    lines = ["ImageNet sample: run report"]
    malformed = urls.get("malformed") or {}
    kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(malformed.items(), key=lambda kv: -kv[1]) if v)
    lines.append(
        f"  URL list:     {_n(urls.get('lines'))} lines, {_n(urls.get('synsets'))} synsets, "
        f"{_n(urls.get('urls'))} URLs, {_n(urls.get('malformed_total'))} malformed"
        + (f" ({kinds})" if kinds else "")
    )
    lines.append(
        f"  Categories:   {_n(stages.get('categories'))}, {_n(report.get('per_category'))} images wanted each"
    )
    lines.append(f"  Sampled URLs: {_n(stages.get('sampled_urls'))}")
    lines.append(
        f"  URLs tried:   {_n(stages.get('urls_tried'))}: {_n(classes.get(OK))} working, "
        f"{_n(classes.get(DEAD_LINK))} dead links ({_pct(report.get('dead_link_rate'))}), "
        f"{_n(classes.get(BAD_IMAGE))} bad images, {_n(classes.get(OTHER))} other"
        + (
            f"; {_plural(classes[SKIPPED], 'duplicate URL', 'duplicate URLs')} skipped"
            if classes.get(SKIPPED)
            else ""
        )
    )
    shortfalls = report.get("shortfalls", [])
    short_text = "no shortfalls"
    if shortfalls:
        named = ", ".join(
            f"{s['wnid']} {s['label']} ({s['kept']}/{s['kept'] + s['missing']})" for s in shortfalls[:5]
        )
        more = f" and {len(shortfalls) - 5} more" if len(shortfalls) > 5 else ""
        short_text = f"{_plural(len(shortfalls), 'category', 'categories')} short: {named}{more}"
    lines.append(
        f"  Kept:         {_n(stages.get('kept'))} of {_n(stages.get('wanted'))} images; {short_text}"
    )
    outcomes = report.get("outcomes", {})
    if outcomes:
        top = ", ".join(f"{o} {n:,}" for o, n in list(outcomes.items())[:8])
        lines.append(f"  Outcomes:     {top}" + (", ..." if len(outcomes) > 8 else ""))
    attempt_rows = report.get("attempts", {}).get("rows")
    if attempt_rows:
        lines.append(
            f"  Attempts:     {attempt_rows:,} rows in attempts.csv (replays and look-ahead fetches "
            f"included; the outcomes above count each URL once)"
        )
    dead_hosts = sorted(
        (h for h in report.get("by_host", []) if h.get(DEAD_LINK)), key=lambda h: (-h[DEAD_LINK], h["host"])
    )[:3]
    if dead_hosts:
        lines.append(
            "  Dead by host: "
            + ", ".join(
                f"{h['host']} {h[DEAD_LINK]:,}/{h['tried']:,} ({_pct(h['dead_link_rate'])})"
                for h in dead_hosts
            )
        )
    worst = sorted(
        (c for c in report.get("by_category", []) if c.get("tried")),
        key=lambda c: (-(c["dead_link_rate"] or 0), c["wnid"]),
    )[:3]
    if worst:
        lines.append(
            "  Dead by category: "
            + ", ".join(
                f"{c['wnid']} {c['label']} {_pct(c['dead_link_rate'])} of {c['tried']:,}" for c in worst
            )
        )
    tasks = report.get("timings", {}).get("tasks", [])
    if tasks:
        parts = [
            f"{t['family']} {t['seconds']:,.1f} s"
            + (f" ({t['tasks']} tasks, longest {t['max_seconds']:,.1f} s)" if t["tasks"] > 1 else "")
            for t in tasks[:5]
        ]
        lines.append("  Timings:      " + ", ".join(parts))
    elif urls.get("seconds") is not None:
        lines.append(f"  Timings:      URL extraction {urls['seconds']:,.1f} s")
    return "\n".join(lines) + "\n"


# --- charts ------------------------------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _legend(classes: Iterable[str], x: float, y: float) -> list[str]:
    parts = []
    for name in classes:
        parts.append(
            f'<rect x="{x:.0f}" y="{y - 10:.0f}" width="12" height="12" fill="{CLASS_COLOURS[name]}"/>'
        )
        parts.append(f'<text x="{x + 16:.0f}" y="{y:.0f}">{_e(CLASS_NAMES[name])}</text>')
        x += 24 + 7.5 * len(CLASS_NAMES[name])
    return parts


def stacked_bar_svg(
    title: str,
    rows: Sequence[tuple[str, Mapping[str, int]]],
    classes: Sequence[str] = (OK, DEAD_LINK, BAD_IMAGE, OTHER),
) -> str:
    """Horizontal bars, one per (name, {class: count}), stacked by class, scaled to the largest total."""
    width, label_w, bar_h, gap, top = 760, 230, 18, 6, 52
    plot_w = width - label_w - 70
    height = top + len(rows) * (bar_h + gap) + 10
    largest = max([sum(counts.get(c, 0) for c in classes) for _, counts in rows] + [1])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" font-family="sans-serif" font-size="12">',
        f"<title>{_e(title)}</title>",
        f'<text x="0" y="16" font-size="14" font-weight="bold">{_e(title)}</text>',
        *_legend(classes, label_w, 38),
    ]
    for i, (name, counts) in enumerate(rows):
        y = top + i * (bar_h + gap)
        shown = name if len(name) <= 34 else name[:33] + "…"
        parts.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{_e(shown)}</text>')
        x = float(label_w)
        total = 0
        for cls in classes:
            n = counts.get(cls, 0)
            total += n
            if n:
                w = plot_w * n / largest
                parts.append(
                    f'<rect x="{x:.1f}" y="{y}" width="{max(w, 0.5):.1f}" height="{bar_h}" '
                    f'fill="{CLASS_COLOURS[cls]}">'
                    f"<title>{_e(name)}: {n:,} {_e(CLASS_NAMES[cls])}</title></rect>"
                )
                x += w
        parts.append(f'<text x="{x + 5:.1f}" y="{y + 13}" fill="#555">{total:,}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def chart_svgs(report: Mapping, top_hosts: int = 12) -> dict[str, str]:
    """``{file name: svg}``: outcome classes by host, and every outcome of the run by count."""
    charts: dict[str, str] = {}
    hosts = report.get("by_host", [])
    if hosts:
        rows = [(h["host"], h) for h in hosts[:top_hosts]]
        rest = hosts[top_hosts:]
        if rest:
            merged = Counter()
            for h in rest:
                merged.update({c: h.get(c, 0) for c in CLASSES})
            rows.append((f"{len(rest):,} other hosts", merged))
        charts["outcomes_by_host.svg"] = stacked_bar_svg(
            f"Outcome classes by host (top {min(top_hosts, len(hosts))} by URLs tried)", rows
        )
    outcomes = report.get("outcomes", {})
    if outcomes:
        rows = [(o, {outcome_class(o): n}) for o, n in outcomes.items()]
        charts["outcomes.svg"] = stacked_bar_svg(
            "URLs tried by outcome", rows, classes=(OK, DEAD_LINK, BAD_IMAGE, OTHER, SKIPPED)
        )
    return charts


def write_run_report(report: Mapping, out_dir: Path) -> dict[str, Path]:
    """Charts, ``summary.txt`` and, last (it marks the report complete), ``run_report.json``."""
    written = {}
    for name, svg in chart_svgs(report).items():
        atomic_write_text(out_dir / name, svg + "\n")
        written[name] = out_dir / name
    atomic_write_text(out_dir / "summary.txt", format_summary(report))
    written["summary.txt"] = out_dir / "summary.txt"
    atomic_write_text(out_dir / "run_report.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    written["run_report.json"] = out_dir / "run_report.json"
    return written
