"""The run report as a dozen lines for a person: counts per stage, what failed, where the time went.

``format_summary`` reads the dict ``model.build_run_report`` makes; it is printed at the end
of a run and written as ``report/summary.txt``.
"""

from __future__ import annotations

from collections.abc import Mapping

from sampler.outcomes import OutcomeClass

WORKING = OutcomeClass.WORKING.value
DEAD_LINK = OutcomeClass.DEAD_LINK.value
BAD_IMAGE = OutcomeClass.BAD_IMAGE.value
REFUSED = OutcomeClass.REFUSED.value
SKIPPED = OutcomeClass.SKIPPED.value
OTHER = OutcomeClass.OTHER.value


def _n(value: object) -> str:
    return "?" if value is None else f"{value:,}"


def _plural(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def _pct(rate: float | None) -> str:
    return "?" if rate is None else f"{100 * rate:.1f}%"


def _url_list_line(urls: Mapping) -> str:
    malformed = urls.get("malformed") or {}
    kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(malformed.items(), key=lambda kv: -kv[1]) if v)
    return (
        f"  URL list:     {_n(urls.get('lines'))} lines, {_n(urls.get('synsets'))} synsets, "
        f"{_n(urls.get('urls'))} URLs, {_n(urls.get('malformed_total'))} malformed"
        + (f" ({kinds})" if kinds else "")
    )


def _tried_line(report: Mapping) -> str:
    classes = report.get("outcome_classes", {})
    refused = classes.get(REFUSED)
    skipped = classes.get(SKIPPED)
    tried = report.get("stages", {}).get("urls_tried")
    return (
        f"  URLs tried:   {_n(tried)}: {_n(classes.get(WORKING))} working, "
        f"{_n(classes.get(DEAD_LINK))} dead links ({_pct(report.get('dead_link_rate'))}), "
        f"{_n(classes.get(BAD_IMAGE))} bad images, "
        + (f"{_plural(refused, 'internal address', 'internal addresses')} refused, " if refused else "")
        + f"{_n(classes.get(OTHER))} other"
        + (f"; {_plural(skipped, 'duplicate URL', 'duplicate URLs')} skipped" if skipped else "")
    )


def _kept_line(report: Mapping) -> str:
    stages = report.get("stages", {})
    shortfalls = report.get("shortfalls", [])
    short_text = "no shortfalls"
    if shortfalls:
        named = ", ".join(
            f"{s['wnid']} {s['label']} ({s['kept']}/{s['kept'] + s['missing']})" for s in shortfalls[:5]
        )
        more = f" and {len(shortfalls) - 5} more" if len(shortfalls) > 5 else ""
        short_text = f"{_plural(len(shortfalls), 'category', 'categories')} short: {named}{more}"
    return f"  Kept:         {_n(stages.get('kept'))} of {_n(stages.get('wanted'))} images; {short_text}"


def _dead_lines(report: Mapping) -> list[str]:
    lines = []
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
    return lines


def _timings_line(report: Mapping) -> list[str]:
    tasks = report.get("timings", {}).get("tasks", [])
    if tasks:
        parts = [
            f"{t['family']} {t['seconds']:,.1f} s"
            + (f" ({t['tasks']} tasks, longest {t['max_seconds']:,.1f} s)" if t["tasks"] > 1 else "")
            for t in tasks[:5]
        ]
        return ["  Timings:      " + ", ".join(parts)]
    seconds = report.get("stages", {}).get("url_list", {}).get("seconds")
    return [f"  Timings:      URL extraction {seconds:,.1f} s"] if seconds is not None else []


def _requests_line(report: Mapping) -> list[str]:
    """The load on the web: requests sent, per kept image, look-ahead ones not needed."""
    cost = report.get("requests")
    if not isinstance(cost, Mapping):
        return []
    per = cost.get("per_kept_image")
    per_text = f"{per:g} per kept image, " if isinstance(per, int | float) else ""
    return [
        f"  Requests:     {_n(cost.get('made'))} to the web ({per_text}"
        f"{_n(cost.get('look_ahead_not_needed'))} look-ahead requests not needed)"
    ]


def format_summary(report: Mapping) -> str:
    """A dozen lines for a person: the counts per stage, what failed, where the time went."""
    stages = report.get("stages", {})
    lines = ["ImageNet sample: run report", _url_list_line(stages.get("url_list", {}))]
    lines.append(
        f"  Categories:   {_n(stages.get('categories'))}, {_n(report.get('per_category'))} images wanted each"
    )
    lines.append(f"  Sampled URLs: {_n(stages.get('sampled_urls'))}")
    lines.append(_tried_line(report))
    lines.append(_kept_line(report))
    lines += _requests_line(report)
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
    lines += _dead_lines(report)
    lines += _timings_line(report)
    return "\n".join(lines) + "\n"
