"""Image file names: the original sample's style, and never a path outside images/."""

from __future__ import annotations

import os

import pytest

from sampler.naming import host_of, host_port, image_filename, wnid_of
from tests.conftest import shared_file


def test_names_follow_the_hand_made_sample():
    assert image_filename("n03942813_2634", "ping-pong ball") == "n03942813_2634_ping-pong_ball.jpg"
    assert image_filename("n03584254_77", "iPod") == "n03584254_77_iPod.jpg"
    assert image_filename("n03124170_5", "hat with a wide brim") == "n03124170_5_hat_with_a_wide_brim.jpg"


def test_reference_file_names_are_reproduced():
    folder = shared_file("imagen")
    labels = dict(
        line.split(",", 1) for line in shared_file("imagenet", "200words.csv").read_text().splitlines()
    )
    names = sorted(os.listdir(folder))
    assert len(names) == 1000
    for name in names:
        wnid, number = name.split("_")[:2]
        assert image_filename(f"{wnid}_{number}", labels[wnid]) == name


@pytest.mark.parametrize(
    "label", ["../../etc/passwd", "a/b", "back\\slash", "nul\x00", "new\nline", "..", "...."]
)
def test_hostile_labels_stay_one_plain_file_name(label):
    name = image_filename("n02672831_1", label)
    assert "/" not in name and "\\" not in name and ".." not in name
    assert all(ord(ch) >= 32 for ch in name)
    assert name.startswith("n02672831_1_") and name.endswith(".jpg")


def test_image_ids_are_checked():
    assert wnid_of("n02672831_12") == "n02672831"
    with pytest.raises(ValueError, match="not an ImageNet image id"):
        image_filename("../n02672831_1", "x")


@pytest.mark.parametrize(
    ("url", "host", "key"),
    [
        ("http://Photos.Example/x.jpg", "photos.example", "photos.example:80"),
        ("https://photos.example/x.jpg", "photos.example", "photos.example:443"),
        ("http://photos.example:8080/x.jpg", "photos.example", "photos.example:8080"),
        ("http://[::1]:81/x.jpg", "::1", "::1:81"),
        ("http://photos.example:99999/x.jpg", "photos.example", None),  # counted, never a server
        ("http://photos.example:abc/x.jpg", "photos.example", None),
        ("ftp://photos.example/x.jpg", "photos.example", None),
        ("http:///x.jpg", "(none)", None),
        ("http://[bad/x.jpg", "(unparsable)", None),
    ],
)
def test_one_parse_gives_the_host_for_counts_and_the_server_for_slots(url, host, key):
    assert host_of(url) == host
    assert host_port(url) == key
