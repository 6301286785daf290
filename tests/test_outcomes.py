"""The outcome vocabulary: one name per meaning, the table in docs/faults.md, old names read back."""

from __future__ import annotations

from pathlib import Path

import pytest

from sampler import outcomes
from sampler.outcomes import CLASSES, GOOD_BODY, MEANINGS, Outcome, OutcomeClass, legacy

REPO = Path(__file__).resolve().parents[1]


def test_the_table_in_docs_is_the_vocabulary_in_code() -> None:
    assert outcomes.vocabulary_markdown() in (REPO / "docs" / "faults.md").read_text(encoding="utf-8")


def test_every_outcome_has_a_meaning_and_a_class() -> None:
    assert set(MEANINGS) == set(CLASSES) == set(Outcome)
    assert len(set(MEANINGS.values())) == len(MEANINGS)  # no two names for one meaning
    assert GOOD_BODY <= set(Outcome)


@pytest.mark.parametrize(
    ("name", "sha256", "today"),
    [
        ("placeholder", "", "placeholder_redirect"),  # a redirect: no body was ever judged
        ("placeholder", "ab" * 32, "evicted_duplicate"),  # kept, then evicted: its body was judged
        ("truncated", "", "truncated_download"),  # cut in transit: never judged, whatever it received
        ("truncated", "ab" * 32, "truncated_jpeg"),  # downloaded whole, judged cut
        ("http_404", "", "http_404"),
        ("ok", "ab" * 32, "ok"),
        ("evicted_duplicate", "ab" * 32, "evicted_duplicate"),  # today's names pass unchanged
    ],
)
def test_old_names_are_read_as_the_meaning_their_row_records(name: str, sha256: str, today: str) -> None:
    assert legacy(name, sha256=sha256) == today
    assert legacy(legacy(name, sha256=sha256), sha256=sha256) == today


@pytest.mark.parametrize(
    ("error", "today"),
    [
        ("no EOI marker after the scan data", "truncated_jpeg"),  # the image check's own
        ("OSError: image file is truncated (3 bytes not processed)", "truncated_jpeg"),  # Pillow's
        ("got 1200 of 5000 bytes", "truncated_download"),
        (
            "ProtocolError: ('Connection broken: IncompleteRead(1112 bytes read, 888 more expected)', "
            "IncompleteRead(1112 bytes read, 888 more expected))",
            "truncated_download",
        ),
        ("", "truncated_download"),
    ],
)
def test_an_old_replayed_truncated_row_without_a_digest_is_told_by_its_error(error: str, today: str) -> None:
    # A replayed row (a top-up round, a resumed journal) records no digest; its error remains.
    assert legacy("truncated", sha256="", error=error) == today


def test_statuses_and_unknown_names_have_a_class() -> None:
    assert outcomes.outcome_class(outcomes.http_status(410)) is OutcomeClass.DEAD_LINK
    assert outcomes.outcome_class("placeholder_redirect") is OutcomeClass.DEAD_LINK
    assert outcomes.outcome_class("truncated_jpeg") is OutcomeClass.BAD_IMAGE
    assert outcomes.outcome_class("no such outcome") is OutcomeClass.OTHER
