"""FetchFives' last step: the run's outputs, written from the categories' final results.

``images/`` (a view of the store), ``manifest.csv``, ``attempts.csv`` and, last,
``fetch_summary.json``, the file whose presence (and configuration) marks the step done:
a crash anywhere in here leaves the step undone, and it is repeated whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from sampler.fetch.attempts import RequestCost
from sampler.fetch.gather import image_view, manifest_rows, write_fetch_report, write_manifest
from sampler.fetch.results import RoundResult
from sampler.store import ImageStore, make_view


def write_fetch_outputs(
    order: Sequence[str],
    current: Mapping[str, RoundResult],
    store: ImageStore,
    images_dir: Path,
    attempt_files: Sequence[Path],
    *,
    manifest: Path,
    attempts: Path,
    summary: Path,
    config: Mapping,
) -> tuple[list[dict], dict]:
    """Write the outputs for the categories of ``order`` (``current``: each one's final result)
    and return the manifest's rows and the summary written.  ``attempt_files``: every round's
    attempts of these categories (their folder may hold other category lists' too)."""
    rows = manifest_rows(order, current)
    store.sweep_temporaries()  # what killed category tasks left half-written
    # images/ first (links into the store, evicted images removed), the manifest next and
    # fetch_summary.json -- which marks the step done -- last.
    make_view(store, images_dir, image_view(rows))
    write_manifest(rows, manifest)
    written = write_fetch_report(current, attempt_files, attempts, summary, config)
    return rows, written


def closing_lines(categories: int, kept: int, summary: Mapping) -> tuple[str, str]:
    """FetchFives' last status message (counts, requests, rate limits), and the rate-limit
    line the user must see on the console ("" when no host rate limited the run)."""
    short = len(summary["shortfalls"])
    message = f"categories done {categories}/{categories}, kept {kept}, shortfalls {short}"
    cost = RequestCost.from_json(summary.get("requests"))
    if cost is not None:
        message += f"; {cost.text(kept)}"
    limited = "; ".join(limit["message"] for limit in summary.get("rate_limited", []))
    return message + (f"; {limited}" if limited else ""), limited
