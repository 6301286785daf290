"""A line of the URL list longer than the csv module's default field limit (131,072 characters).

The fetch records such a URL (``bad_url``: over ``max_url_chars``) in its category's attempts
file and journal; the sample holds it too.  Before, every reader of those files failed on it
with "field larger than field limit", and FetchFives failed on every rerun.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from sampler.fetch.attempts import read_attempts, write_attempts
from sampler.fetch.gather import write_fetch_report
from sampler.report.run_files import count_sample_urls
from sampler.sampling import read_sample_csv, write_sample_csv

CHECKOUT = Path(__file__).resolve().parents[1]
LONG_URL = "http://long.example/" + "x" * 200_000 + ".jpg"


def attempt(image_id: str, url: str, outcome: str) -> dict[str, object]:
    return {
        "image_id": image_id,
        "url": url,
        "final_url": "",
        "status": "",
        "outcome": outcome,
        "bytes": 0,
        "ms": 0,
        "md5": "",
        "sha256": "",
        "error": f"{len(url):,} characters, over 8,192" if outcome == "bad_url" else "404 Not Found",
        "requests": 0 if outcome == "bad_url" else 1,
        "judged": True,
    }


def test_an_attempt_with_a_url_of_200000_characters_is_read_back_and_gathered(tmp_path):
    path = tmp_path / "round0" / "n01000001.attempts.csv"
    path.parent.mkdir()
    rows = [
        attempt("n01000001_1", LONG_URL, "bad_url"),
        attempt("n01000001_2", "http://a.example/2.jpg", "http_404"),
    ]
    write_attempts(rows, path, {"round": 0})
    assert [row["url"] for row in read_attempts(path)] == [LONG_URL, "http://a.example/2.jpg"]
    summary = write_fetch_report({}, [path], tmp_path / "attempts.csv", tmp_path / "summary.json")
    assert summary["outcomes"] == {"bad_url": 1, "http_404": 1}
    with (tmp_path / "attempts.csv").open(encoding="utf-8", newline="") as src:
        assert [row["url"] for row in csv.DictReader(src)] == [LONG_URL, "http://a.example/2.jpg"]


def test_a_sample_with_a_url_of_200000_characters_is_read_back_and_counted(tmp_path):
    sample = tmp_path / "sample.csv"
    rows = [("n01000001_1", LONG_URL), ("n01000001_2", "http://a.example/2.jpg")]
    write_sample_csv(rows, sample)
    assert read_sample_csv(sample) == rows
    assert count_sample_urls(sample) == 2


def test_a_fresh_process_that_only_gathers_reads_the_long_url(tmp_path):
    """The limit is lifted by the readers' own modules, not by whatever a test imported first."""
    path = tmp_path / "n01000001.attempts.csv"
    write_attempts([attempt("n01000001_1", LONG_URL, "bad_url")], path, {"round": 0})
    code = (
        "import json, sys; from pathlib import Path; from sampler.fetch.attempts import read_attempts;"
        f" print(json.dumps([len(r['url']) for r in read_attempts(Path({str(path)!r}))]))"
    )
    env = {"PYTHONPATH": str(CHECKOUT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == [len(LONG_URL)]
