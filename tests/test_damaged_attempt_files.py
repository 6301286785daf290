"""A category's attempts file with a line of more cells than its header (edited by hand, or
damaged): FetchFives' closing step still writes attempts.csv.  Since it streams the rows
(issue 24), the columns come from each file's first row; a later row's extra cells made it
fail with "dict contains fields not in fieldnames: None", on every rerun."""

from __future__ import annotations

import csv

from sampler.fetch.attempts import ATTEMPT_FIELDS, write_attempts
from sampler.fetch.gather import write_fetch_report


def row(image_id: str, url: str) -> dict[str, object]:
    return {"image_id": image_id, "url": url, "outcome": "http_404", "ms": 5, "requests": 1, "judged": True}


def test_a_line_with_extra_cells_is_gathered_without_them(tmp_path):
    first = tmp_path / "n01000001.attempts.csv"
    second = tmp_path / "n01000002.attempts.csv"
    write_attempts([row("n01000001_1", "http://a.example/1.jpg")], first, {"round": 0})
    write_attempts([row("n01000002_1", "http://a.example/2.jpg")], second, {"round": 0})
    with second.open("a", encoding="utf-8") as out:
        out.write("0,n01000002_2,http://a.example/3.jpg,,404,http_404,0,7,,,,1,True,EXTRA,MORE\n")
    summary = write_fetch_report({}, [first, second], tmp_path / "attempts.csv", tmp_path / "summary.json")
    assert summary["outcomes"] == {"http_404": 3}
    with (tmp_path / "attempts.csv").open(encoding="utf-8", newline="") as src:
        reader = csv.DictReader(src)
        assert reader.fieldnames == ["wnid", "round", *ATTEMPT_FIELDS]
        rows = list(reader)
    assert [r["url"] for r in rows] == ["http://a.example/1.jpg", "http://a.example/2.jpg", "http://a.example/3.jpg"]
    assert all(None not in r for r in rows)  # no cell beyond the header
