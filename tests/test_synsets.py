"""words.txt and category lists: real data parses, bad input fails with a message naming it."""

from __future__ import annotations

import pytest

from sampler.categories.words import (
    DET200,
    Category,
    SynsetError,
    check_categories,
    parse_categories,
    parse_words,
    read_categories,
)
from tests.conftest import shared_file


def test_real_words_txt_has_every_synset_including_the_last_without_newline():
    data = shared_file("imagenet", "words.txt").read_bytes()
    assert not data.endswith(b"\n")
    words = parse_words(data)
    assert len(words) == 82_115
    assert words["n15300051"]  # the record without a trailing newline
    assert words["n02672831"] == "accordion, piano accordion, squeeze box"


def test_shipped_det200_list_matches_the_reference_and_words_txt():
    categories = read_categories(DET200)
    assert len(categories) == 200 and len({c.wnid for c in categories}) == 200
    assert Category("n03124170", "hat with a wide brim") in categories
    words = parse_words(shared_file("imagenet", "words.txt").read_bytes())
    check_categories(categories, words, {c.wnid: 1 for c in categories})
    reference = shared_file("imagenet", "200words.csv").read_text()
    assert parse_categories(reference) == categories


def test_html_instead_of_words_txt_is_named_as_such():
    with pytest.raises(SynsetError, match="HTML page"):
        parse_words(b"<!DOCTYPE html><html><body>Please log in</body></html>", "http://x/words.txt")


def test_garbage_instead_of_words_txt_is_refused():
    with pytest.raises(SynsetError, match="does not look like words.txt"):
        parse_words(b"\n".join(b"row %d,something" % i for i in range(100)))


def test_category_list_problems_are_all_named():
    text = "wnid,label\nn02672831,accordion\nn02672831,again\nn123,short id\nn02691156,\n"
    with pytest.raises(SynsetError) as error:
        parse_categories(text, "cats.csv")
    message = str(error.value)
    assert "n02672831 is listed twice" in message
    assert "'n123' is not a WordNet id" in message
    assert "n02691156 has an empty label" in message


def test_label_with_newline_or_nul_is_refused_but_slash_is_kept():
    with pytest.raises(SynsetError, match="control character"):
        parse_categories('n02672831,"two\nlines"\n')
    with pytest.raises(SynsetError, match="control character"):
        parse_categories("n02672831,nul\x00byte\n")
    assert parse_categories("n04404412,tv/monitor\n") == [Category("n04404412", "tv/monitor")]


def test_unknown_and_urlless_wnids_fail_before_any_download():
    categories = [
        Category("n02672831", "accordion"),
        Category("n99999999", "nothing"),
        Category("n02691156", "x"),
    ]
    words = {"n02672831": "accordion", "n02691156": "airplane"}
    with pytest.raises(SynsetError) as error:
        check_categories(categories, words, {"n02672831": 5})
    assert "unknown to words.txt: n99999999" in str(error.value)
    assert "absent from the URL list: n02691156" in str(error.value)
