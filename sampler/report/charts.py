"""The run report's charts: stacked bars of outcome classes, as SVG, from the report's dict.

``chart_svgs`` draws outcome classes by host and every outcome by count; the geometry is
worked out here and the markup is the template ``templates/stacked_bar.svg`` (autoescaped:
host names and labels are hostile input).  No plotting library and no server: the SVG is
inlined in the gallery and written beside ``run_report.json``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from sampler.outcomes import OutcomeClass, outcome_class
from sampler.report.render import render

CLASS_COLOURS = {
    OutcomeClass.WORKING: "#3a9e5c",
    OutcomeClass.DEAD_LINK: "#d64541",
    OutcomeClass.BAD_IMAGE: "#f0a030",
    OutcomeClass.REFUSED: "#8e44ad",
    OutcomeClass.OTHER: "#9a9a9a",
    OutcomeClass.SKIPPED: "#c8c8c8",
}
# Every URL tried: skipped URLs (never requested) are left out of the per-host bars.
TRIED_CLASSES = tuple(c for c in OutcomeClass if c is not OutcomeClass.SKIPPED)
WIDTH, LABEL_WIDTH, BAR_HEIGHT, GAP, TOP = 760, 230, 18, 6, 52
LABEL_CHARS = 34


def _legend(classes: Sequence[OutcomeClass], x: float, y: float) -> list[dict]:
    keys = []
    for cls in classes:
        keys.append({"x": round(x), "y": round(y), "colour": CLASS_COLOURS[cls], "name": cls.label})
        x += 24 + 7.5 * len(cls.label)
    return keys


def _bar(name: str, counts: Mapping[str, int], classes: Sequence[OutcomeClass], y: int, scale: float) -> dict:
    parts = []
    x = float(LABEL_WIDTH)
    total = 0
    for cls in classes:
        n = counts.get(cls.value, 0)
        total += n
        if n:
            width = scale * n
            parts.append(
                {
                    "x": f"{x:.1f}",
                    "width": f"{max(width, 0.5):.1f}",
                    "colour": CLASS_COLOURS[cls],
                    "count": f"{n:,}",
                    "name": cls.label,
                }
            )
            x += width
    label = name if len(name) <= LABEL_CHARS else name[: LABEL_CHARS - 1] + "…"
    return {
        "name": name,
        "label": label,
        "y": y,
        "parts": parts,
        "total": f"{total:,}",
        "total_x": f"{x + 5:.1f}",
    }


def stacked_bar_svg(
    title: str,
    rows: Sequence[tuple[str, Mapping[str, int]]],
    classes: Sequence[OutcomeClass] = TRIED_CLASSES,
) -> str:
    """Horizontal bars, one per (name, {class: count}), stacked by class, scaled to the largest total."""
    plot_width = WIDTH - LABEL_WIDTH - 70
    largest = max([sum(counts.get(c.value, 0) for c in classes) for _, counts in rows] + [1])
    bars = [
        _bar(name, counts, classes, TOP + i * (BAR_HEIGHT + GAP), plot_width / largest)
        for i, (name, counts) in enumerate(rows)
    ]
    return render(
        "stacked_bar.svg",
        title=title,
        width=WIDTH,
        height=TOP + len(rows) * (BAR_HEIGHT + GAP) + 10,
        legend=_legend(classes, LABEL_WIDTH, 38),
        label_x=LABEL_WIDTH - 6,
        bar_height=BAR_HEIGHT,
        bars=bars,
    )


def chart_svgs(report: Mapping, top_hosts: int = 12) -> dict[str, str]:
    """``{file name: svg}``: outcome classes by host, and every outcome of the run by count."""
    charts: dict[str, str] = {}
    hosts = report.get("by_host", [])
    if hosts:
        rows: list[tuple[str, Mapping[str, int]]] = [(h["host"], h) for h in hosts[:top_hosts]]
        rest = hosts[top_hosts:]
        if rest:
            merged: Counter[str] = Counter()
            for h in rest:
                merged.update({c.value: h.get(c.value, 0) for c in OutcomeClass})
            rows.append((f"{len(rest):,} other hosts", merged))
        charts["outcomes_by_host.svg"] = stacked_bar_svg(
            f"Outcome classes by host (top {min(top_hosts, len(hosts))} by URLs tried)", rows
        )
    outcomes = report.get("outcomes", {})
    if outcomes:
        charts["outcomes.svg"] = stacked_bar_svg(
            "URLs tried by outcome",
            [(o, {outcome_class(o).value: n}) for o, n in outcomes.items()],
            classes=tuple(OutcomeClass),
        )
    return charts
