"""A run's small files, read leniently, and the task timings file.

Light on purpose (the standard library only): ``tasks.report`` reads JSON objects with it
when luigi asks whether a report is complete, and luigi's PROCESSING_TIME handler appends
a timing with it in every task's process.

Task timings come from a luigi event handler that appends one CSV line per finished task
(``append_timing``); workers in several processes append to the same file, so a line is
written with a single ``write`` and a torn last line is skipped when reading.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from sampler.csv_fields import allow_long_fields

log = logging.getLogger(__name__)
allow_long_fields()  # the sample's URLs, however long

TIMING_FIELDS = ["family", "task_id", "seconds", "finished"]


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


def read_json_object(path: str | os.PathLike[str]) -> dict:
    """The JSON object in ``path``, or {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        log.warning("cannot read %s (%s): taken as empty", path, error)
        return {}
    return data if isinstance(data, dict) else {}


def count_sample_urls(path: Path) -> int | None:
    """Rows of the URL sample (``image_id,url``, header optional); None when it is absent."""
    count = 0
    header = False
    try:
        with path.open(encoding="utf-8", newline="", errors="replace") as src:
            # Counted, not held: all of ImageNet x 100 is 2.2 M rows (686 MB as lists).
            for row in csv.reader(src):
                if row and any(cell.strip() for cell in row):
                    if count == 0:
                        header = row[0].strip().lower() == "image_id"
                    count += 1
    except OSError:
        return None
    return count - header
