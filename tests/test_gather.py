"""Cross-category placeholder detection and top-up planning."""

from __future__ import annotations

from collections.abc import Sequence

from sampler.fetch.gather import manifest_rows, plan_next_round, without_banned
from sampler.fetch.results import Attempt, KeptImage, RoundResult


def result(
    label: str,
    kept: list[tuple[str, str, str]],
    judged_extra: Sequence[tuple[str, str, str]] = (),
    needed: int = 0,
) -> RoundResult:
    """kept/judged entries are (image_id, url, sha256); ``needed`` defaults to len(kept)."""
    images = [KeptImage(i, u, u, f"{i}.jpg", h, "", 1, 64, 48) for i, u, h in kept]
    judged = [Attempt(i, u, outcome="ok", sha256=h) for i, u, h in kept]
    judged += [Attempt(i, u, outcome="http_404", sha256=h) for i, u, h in judged_extra]
    return RoundResult("n0", label, needed or len(kept), images, False, len(judged), judged)


def test_same_bytes_behind_two_urls_in_two_categories_are_placeholders_and_both_top_up():
    current = {
        "n1": result("a", [("n1_1", "http://a/1", "h1"), ("n1_2", "http://banner.com/x", "BANNER")]),
        "n2": result("b", [("n2_1", "http://banner.com/y", "BANNER"), ("n2_2", "http://b/2", "h2")]),
        "n3": result("c", [("n3_1", "http://c/1", "h3")]),
    }
    plan = plan_next_round(["n1", "n2", "n3"], {w: [r] for w, r in current.items()}, current)
    assert plan.placeholders == {"BANNER"}
    assert plan.rerun == ["n1", "n2"]


def test_a_url_listed_under_two_synsets_is_kept_by_the_first_category_only():
    shared = ("x_1", "http://shared/lemon.jpg", "LEMON")
    current = {"n1": result("lemon", [shared]), "n2": result("apple", [shared, ("n2_2", "http://b", "h2")])}
    plan = plan_next_round(["n1", "n2"], {w: [r] for w, r in current.items()}, current)
    assert plan.placeholders == set()  # one URL, so not a placeholder
    assert plan.exclude == {"n2": {"LEMON"}}
    assert plan.rerun == ["n2"]
    assert plan.banned_for("n1") == set()


def test_hashes_judged_in_earlier_rounds_still_count_and_a_clean_run_needs_no_round():
    first = result("a", [("n1_1", "http://a/1", "h1")], judged_extra=[("n1_0", "http://dead", "")])
    later = result("a", [("n1_1", "http://a/1", "h1")])
    other = result("b", [("n2_1", "http://b/1", "h2")])
    plan = plan_next_round(["n1", "n2"], {"n1": [first, later], "n2": [other]}, {"n1": later, "n2": other})
    assert plan.placeholders == set() and plan.rerun == []


def test_manifest_follows_category_order():
    current = {"n2": result("b", [("n2_1", "u2", "h2")]), "n1": result("a", [("n1_1", "u1", "h1")])}
    rows = manifest_rows(["n1", "n2"], current)
    assert [(r["wnid"], r["label"], r["image_id"]) for r in rows] == [
        ("n1", "a", "n1_1"),
        ("n2", "b", "n2_1"),
    ]


def test_when_top_up_rounds_run_out_banned_images_are_dropped_as_shortfall():
    current = {
        "n1": result("a", [("n1_1", "http://a/1", "h1"), ("n1_2", "http://x/1", "BANNER")], needed=2),
        "n2": result("b", [("n2_1", "http://x/2", "BANNER")], needed=2),
    }
    plan = plan_next_round(["n1", "n2"], {w: [r] for w, r in current.items()}, current)
    cleaned = without_banned(current, plan)
    assert [image.image_id for image in cleaned["n1"].kept] == ["n1_1"]
    assert cleaned["n1"].shortfall == 1 and cleaned["n2"].kept == [] and cleaned["n2"].shortfall == 2


def test_the_round_planner_tops_up_until_clean_without_luigi(tmp_path):
    """Round 1 reruns both categories holding a banner; when their new results are clean the
    planner stops, and each round's plan is written where FetchFives' reports read it."""
    from sampler.fetch.gather import read_round_plan
    from sampler.fetch.rounds import RoundPlanner

    first = {
        "n1": result("a", [("n1_1", "http://a/1", "h1"), ("n1_2", "http://x/1", "BANNER")]),
        "n2": result("b", [("n2_1", "http://x/2", "BANNER")]),
        "n3": result("c", [("n3_1", "http://c/1", "h3")]),
    }
    planner = RoundPlanner(["n1", "n2", "n3"], first, max_rounds=5, folder=tmp_path)
    assert planner.next_round() == (1, ["n1", "n2"])
    assert read_round_plan(tmp_path, 1).placeholders == {"BANNER"}
    planner.took("n1", result("a", [("n1_1", "http://a/1", "h1"), ("n1_3", "http://a/3", "h13")]))
    planner.took("n2", result("b", [("n2_2", "http://b/2", "h22")]))
    assert planner.next_round() is None and planner.next_round() is None
    assert [i.image_id for w in ("n1", "n2", "n3") for i in planner.current[w].kept] == [
        "n1_1", "n1_3", "n2_2", "n3_1"
    ]  # fmt: skip


def test_the_round_planner_out_of_rounds_drops_what_is_still_banned(tmp_path):
    from sampler.fetch.rounds import RoundPlanner

    first = {
        "n1": result("a", [("n1_1", "http://a/1", "h1"), ("n1_2", "http://x/1", "BANNER")], needed=2),
        "n2": result("b", [("n2_1", "http://x/2", "BANNER")], needed=2),
    }
    planner = RoundPlanner(["n1", "n2"], first, max_rounds=1, folder=tmp_path)
    assert planner.next_round() == (1, ["n1", "n2"])
    planner.took("n1", first["n1"])  # the web gave nothing better
    planner.took("n2", first["n2"])
    assert planner.next_round() is None
    assert [i.image_id for i in planner.current["n1"].kept] == ["n1_1"]
    assert planner.current["n2"].kept == [] and planner.current["n2"].shortfall == 2
    assert not (tmp_path / "round2.json").exists()
