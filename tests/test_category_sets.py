"""Category sets by name: presets against the published lists, subtrees, what a set selected."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from sampler.categories.sets import (
    NO_URLS_REASON,
    PRESETS,
    CategorySpec,
    labels_from_words,
    parse_is_a,
    parse_spec,
    read_preset,
    read_wnid_list,
    select,
    select_all,
    select_listed,
    select_subtree,
    subtree,
)
from sampler.categories.words import Category, SynsetError, parse_words
from sampler.naming import safe_label
from tests.conftest import REPO, pipeline_env, shared_file, write_demo_config

# Preset -> the reference list in ../shared/data/imagenet/sets/ (see its sources there).
REFERENCE_LISTS = {
    "imagenette": "imagenette_10.txt",
    "imagewoof": "imagewoof_10.txt",
    "mini-imagenet": "mini_imagenet_100.txt",
    "imagenet-a": "imagenet_a_200.txt",
    "imagenet-r": "imagenet_r_200.txt",
    "ilsvrc2012": "ilsvrc2012_1k.txt",
}
SIZES = {"imagenette": 10, "imagewoof": 10, "mini-imagenet": 100, "imagenet-a": 200, "imagenet-r": 200}
TEDDY = "n04399382"


def shared_words() -> dict[str, str]:
    return parse_words(shared_file("imagenet", "words.txt").read_bytes())


def shared_url_counts() -> dict[str, int]:
    with shared_file("imagenet", "classes_in_imagenet.csv").open(encoding="utf-8", newline="") as src:
        return {row["synid"]: int(row["urls"]) for row in csv.DictReader(src)}


@pytest.mark.parametrize("name", sorted(REFERENCE_LISTS))
def test_a_preset_is_its_published_list_in_order_with_words_txt_labels(name):
    reference = read_wnid_list(
        shared_file("imagenet", "sets", REFERENCE_LISTS[name]).read_text(encoding="utf-8").splitlines()
    )
    shipped = read_preset(parse_spec(name))
    assert [c.wnid for c in shipped] == reference
    assert len(shipped) == SIZES.get(name, 1000)
    # Labels: words.txt's first lemma (made unique), exactly as derived from the real words.txt.
    assert shipped == labels_from_words(reference, shared_words())


def test_det200_preset_is_the_shipped_list_with_its_short_names():
    det200 = read_preset(parse_spec("det200"))
    assert len(det200) == 200
    assert Category("n03797390", "cup or mug") in det200
    reference = shared_file("imagenet", "200words.csv").read_text(encoding="utf-8")
    assert {row[0] for row in csv.reader(reference.splitlines()) if row} == {c.wnid for c in det200}


def test_preset_labels_are_short_unique_and_file_safe():
    for name in PRESETS:
        labels = [c.label for c in read_preset(parse_spec(name))]
        folders = [safe_label(label) for label in labels]
        assert len({f.lower() for f in folders}) == len(labels), name
        assert all(len(label) <= 40 and label == label.strip() for label in labels), name
        assert all(f == label.replace(" ", "_") for f, label in zip(folders, labels, strict=True)), name
    ilsvrc = {c.wnid: c.label for c in read_preset(parse_spec("ilsvrc2012"))}
    # The two cranes and the two maillots of ILSVRC-2012 stay apart.
    assert ilsvrc["n02012849"] == "crane" and ilsvrc["n03126707"] == "crane (n03126707)"
    assert ilsvrc["n03710637"] == "maillot" and ilsvrc["n03710721"] == "tank suit"
    assert ilsvrc[TEDDY] == "teddy"


def test_the_spec_says_what_kind_of_set_is_meant(tmp_path):
    assert parse_spec("imagenette") == CategorySpec("preset", "imagenette")
    assert parse_spec("under:n02084071") == CategorySpec("under", "n02084071")
    assert parse_spec("under:n02084071").stem == "under-n02084071"
    assert parse_spec("my/list.csv") == CategorySpec("csv", "my/list.csv")
    with pytest.raises(SynsetError, match="under:<wnid>"):
        parse_spec("under:dog")
    with pytest.raises(SynsetError, match="neither a preset"):
        parse_spec("imagenet-z")


def test_ilsvrc2012_keeps_teddy_bear_as_a_shortfall_with_its_reason():
    selection = select_listed(
        "ilsvrc2012", read_preset(parse_spec("ilsvrc2012")), shared_words(), shared_url_counts()
    )
    assert len(selection.categories) == 1000  # the run goes on with all of them
    assert [c.wnid for c in selection.without_urls] == [TEDDY]
    report = selection.to_json()
    assert report["synsets"] == 1000 and report["synsets_with_urls"] == 999
    assert report["without_urls"] == [{"wnid": TEDDY, "label": "teddy", "reason": NO_URLS_REASON}]
    counts = shared_url_counts()
    assert report["urls"] == sum(counts.get(c.wnid, 0) for c in selection.categories) > 999_000
    assert "no URLs in fall11_urls.txt" in selection.summary() and TEDDY in selection.summary()


def test_an_unknown_wnid_in_a_preset_is_an_error_not_a_shortfall():
    with pytest.raises(SynsetError, match="unknown to words.txt: n09999999"):
        select_listed("x", [Category("n09999999", "nothing")], {"n01440764": "tench"}, {"n01440764": 3})


def test_select_reads_the_hierarchy_for_a_subtree_only_and_wants_a_csv_exact():
    """ParseSynsets calls one select(spec): each kind of set picks its rule."""
    words = {"n00000001": "animal", "n00000002": "dog", "n00000003": "cat"}
    counts = {"n00000002": 5, "n00000003": 0}
    listed = [Category("n00000002", "dog"), Category("n00000003", "cat")]

    def no_hierarchy() -> dict:
        raise AssertionError("the hierarchy is read only for a subtree")

    preset = select(parse_spec("imagenette"), lambda: listed, words, counts, no_hierarchy)
    assert [c.wnid for c in preset.without_urls] == ["n00000003"]  # a shortfall, not an error
    with pytest.raises(SynsetError, match="absent from the URL list: n00000003"):
        select(CategorySpec("csv", "mine.csv"), lambda: listed, words, counts, no_hierarchy)
    tree = {"n00000001": ["n00000002", "n00000003"]}
    under = select(parse_spec("under:n00000001"), lambda: [], words, counts, lambda: tree)
    assert [c.wnid for c in under.categories] == ["n00000002"]


def test_a_subtree_is_every_synset_below_with_urls_from_the_real_hierarchy():
    children = parse_is_a(shared_file("imagenet", "wordnet.is_a.txt").read_bytes())
    words, counts = shared_words(), shared_url_counts()
    dogs = select_subtree("n02084071", children, words, counts)
    wnids = [c.wnid for c in dogs.categories]
    woof = read_preset(parse_spec("imagewoof"))
    # Every Imagewoof breed is a domestic dog, but the dingo (a wild dog, n02115641).
    assert {c.wnid for c in woof} - set(wnids) == {"n02115641"}
    assert "n02084071" in wnids  # the root itself has URLs and is included
    assert wnids == sorted(set(wnids))
    assert all(counts[w] > 0 for w in wnids)
    assert all(counts.get(c.wnid, 0) == 0 for c in dogs.without_urls)
    assert dogs.urls == sum(counts[w] for w in wnids)
    # Every synset below, each once, although the hierarchy is a DAG.
    assert len(wnids) + len(dogs.without_urls) == len(subtree(children, "n02084071"))


def test_a_subtree_counts_synsets_with_two_parents_once():
    children = parse_is_a(
        b"n00000001 n00000002\nn00000001 n00000003\nn00000002 n00000004\nn00000003 n00000004\n"
    )
    assert subtree(children, "n00000001") == ["n00000001", "n00000002", "n00000003", "n00000004"]


def test_a_subtree_without_urls_fails_clearly():
    children = parse_is_a(b"n00000001 n00000002\nn00000009 n00000008\n")
    words = {"n00000001": "thing, object", "n00000002": "widget", "n00000008": "gadget", "n00000009": "x"}
    with pytest.raises(SynsetError, match=r"under:n00000001 \(thing\): none of its 2 synsets has URLs"):
        select_subtree("n00000001", children, words, {"n00000008": 12})
    selection = select_subtree("n00000009", children, words, {"n00000008": 12})
    assert [c.wnid for c in selection.categories] == ["n00000008"]
    assert [c.wnid for c in selection.without_urls] == ["n00000009"]


def test_the_hierarchy_refuses_what_is_not_wordnet_is_a():
    with pytest.raises(SynsetError, match="HTML page"):
        parse_is_a(b"<!DOCTYPE html><html><body>Not found</body></html>")
    with pytest.raises(SynsetError, match="does not look like"):
        parse_is_a(b"n00000001 n00000002\n" + b"garbage line\n" * 20)


def test_absent_reference_data_skips_for_users_and_fails_where_required(monkeypatch):
    monkeypatch.delenv("REQUIRE_SHARED_DATA", raising=False)
    with pytest.raises(pytest.skip.Exception):
        shared_file("imagenet", "no-such-list.txt")
    monkeypatch.setenv("REQUIRE_SHARED_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match="REQUIRE_SHARED_DATA is set"):
        shared_file("imagenet", "no-such-list.txt")


def test_labels_from_words_are_short_and_hold_no_path_separator():
    words = {
        "n00000001": "read/write head, head",
        "n00000002": "American Federation of Labor and Congress of Industrial Organizations, AFL-CIO",
        "n00000003": "blood-oxygenation level dependent functional magnetic resonance imaging",
    }
    labels = [c.label for c in labels_from_words(sorted(words), words)]
    assert labels == ["read-write head", "AFL-CIO", "blood-oxygenation level dependent functi"]


def test_every_words_txt_label_is_short_and_unique_in_a_subtree_of_everything():
    words = shared_words()
    labels = [c.label for c in labels_from_words(sorted(words), words)]
    assert max(map(len, labels)) <= 40 and not any("/" in label for label in labels)
    assert len({safe_label(label).lower() for label in labels}) == len(labels)


def test_all_is_every_synset_with_urls_the_same_as_the_subtree_of_entity():
    """``all`` needs no hierarchy: the URL index's counts and words.txt.  On the real list it
    is ImageNet-21k, 21,841 synsets: ``under:n00001740`` (entity) selects 21,837 of them, the
    other 4 (the sun and three people) have URLs but no parent in wordnet.is_a.txt."""
    assert parse_spec("all") == CategorySpec("all", "all") and parse_spec("all").stem == "all"
    words, counts = shared_words(), shared_url_counts()
    everything = select_all(words, counts)
    assert len(everything.categories) == 21841 and everything.without_urls == []
    children = parse_is_a(shared_file("imagenet", "wordnet.is_a.txt").read_bytes())
    entity = select_subtree("n00001740", children, words, counts)
    orphans = {c.wnid for c in everything.categories} - {c.wnid for c in entity.categories}
    assert orphans == {"n09450163", "n10994097", "n11196627", "n11318824"}
    assert len(entity.categories) == 21837 and not any(orphans & set(kids) for kids in children.values())
    assert everything.urls == sum(counts.values())
    # A synset with URLs that words.txt does not know is kept, labelled with its wnid.
    odd = select_all({"n00000001": "thing"}, {"n00000001": 3, "n09999999": 1, "n00000002": 0})
    assert [(c.wnid, c.label) for c in odd.categories] == [("n00000001", "thing"), ("n09999999", "n09999999")]
    with pytest.raises(SynsetError, match="no synset with URLs"):
        select_all(words, {})


def test_all_is_resolved_first_then_planned_and_fetched_without_the_hierarchy(
    tmp_path, demo_world, demo_server
):
    dead_mirror = f"{demo_server.url}/files/no-such-wordnet.is_a.txt"
    config = write_demo_config(
        tmp_path, demo_world, demo_server, ParseSynsets={"hierarchy_mirrors": json.dumps([dead_mirror])}
    )
    run = subprocess.run(
        [sys.executable, "-m", "pipeline", "FetchFives", "--ParseSynsets-categories", "all",
         "--local-scheduler", "--FetchFives-per-category", "1"],
        cwd=REPO, env=pipeline_env(config, demo_server), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    data = tmp_path / "data"
    with (data / "urls" / "counts.csv").open(encoding="utf-8", newline="") as src:
        listed = {row["wnid"] for row in csv.DictReader(src) if int(row["urls"]) > 0}
    (selection,) = (data / "synsets").glob("all-*.selection.json")
    assert json.loads(selection.read_text())["synsets_with_urls"] == len(listed) == 30
    with (data / "manifest.csv").open(encoding="utf-8", newline="") as src:
        assert {row["wnid"] for row in csv.DictReader(src)} <= listed
