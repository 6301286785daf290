"""Hostile things in the fetch's shared state folders (hit-rates/, request-slots/): a link out
of data_dir, a FIFO, a device, a folder, a value that is not a number.  They may cost time,
never hang a fetch, never be written through, never raise a cap, never change a decision."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from sampler.fetch.hit_rates import RunHitRates
from sampler.fetch.http_fetch import FetchMachineryError, FetchOutcome
from sampler.fetch.image_check import judge_image
from sampler.fetch.request_slots import HostLimits, RequestSlots, _digest
from sampler.fetch.sample_order import fetch_category
from sampler.outcomes import Outcome
from tests.test_fetch_attacks import jpeg


def returns_within(seconds: float, call: Callable[[], object]) -> bool:
    """Does ``call()`` return within ``seconds``?  (A hang guard, not a speed test.)"""
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()


def test_a_fifo_or_a_link_among_the_rate_files_is_ignored_not_waited_on(tmp_path: Path) -> None:
    folder = tmp_path / "hit-rates"
    folder.mkdir()
    os.mkfifo(folder / "a-round0.rate")  # open() would wait for a writer for ever
    outside = tmp_path / "outside.txt"
    outside.write_text("0 99\n")
    (folder / "b-round0.rate").symlink_to(outside)
    (folder / "c-round0.rate").symlink_to("/dev/zero")
    (folder / "d-round0.rate").mkdir()
    (folder / "e-round0.rate").write_text("49 99\n")
    rates = RunHitRates(folder, "me-round0")
    seen: list[float | None] = []
    assert returns_within(20, lambda: seen.append(rates.others()))
    assert seen == [pytest.approx(0.495)]


def test_a_rate_file_is_never_written_through_a_planted_link(tmp_path: Path) -> None:
    folder = tmp_path / "hit-rates"
    folder.mkdir()
    rates = RunHitRates(folder, "me-round0")
    outside = tmp_path / "outside.txt"
    tmp = folder / f".{rates.path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.symlink_to(outside)
    rates.add(True)
    rates.close()
    assert not outside.exists()
    assert rates.path.read_text() == "1 1\n"


def test_a_limit_file_that_is_a_link_a_device_or_nan_neither_hangs_nor_blinds(tmp_path: Path) -> None:
    folder = tmp_path / "limit"
    folder.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("16.000 0\n")
    (folder / _digest("linked:80")).symlink_to(outside)  # must not raise the cap
    (folder / _digest("zero:80")).symlink_to("/dev/zero")  # read whole, it never ends
    (folder / _digest("nan:80")).write_text("nan 0\n")
    limits = HostLimits(folder, start=4, most=16, refresh=0.0)
    seen: list[int] = []
    hosts = ("linked:80", "zero:80", "nan:80")
    assert returns_within(20, lambda: seen.extend(limits.limit(host) for host in hosts))
    assert seen == [4, 4, 4]
    # Another process halves nan:80's limit: this one follows (a NaN once read must not blind it).
    HostLimits(folder, start=4, most=16, refresh=0.0)._halve("nan:80")
    assert limits.limit("nan:80") == 2


def test_a_slot_file_linked_out_of_data_dir_is_refused_not_created_there(tmp_path: Path) -> None:
    slots = RequestSlots(tmp_path / "request-slots", total=4, per_host=2)
    outside = tmp_path / "outside"
    for i in range(2):
        (tmp_path / "request-slots" / "host" / f"{_digest('h:80')}-{i}").symlink_to(outside)
    with pytest.raises(FetchMachineryError, match="cannot be used"):
        with slots.hold("h:80"):
            pass
    assert not outside.exists()


def test_a_slot_that_cannot_be_taken_fails_the_category_not_the_url(tmp_path: Path) -> None:
    """A folder in a slot file's place is the machinery's fault: recorded as the URL's
    outcome ("error"), it would change which images are kept, for good (replayed by reruns)."""
    slots = RequestSlots(tmp_path / "request-slots", total=4, per_host=1)
    (tmp_path / "request-slots" / "host" / f"{_digest('bad:80')}-0").mkdir()

    def fetch(url: str) -> FetchOutcome:
        return FetchOutcome(url, url, 200, Outcome.OK, jpeg(len(url)), 100, 1, "", 0, 1)

    candidates = [(f"n1_{i}", f"http://{'bad' if i == 1 else 'good'}/{i}") for i in range(8)]
    with pytest.raises(FetchMachineryError):
        fetch_category(
            candidates, 5, fetch=slots.guard(fetch), judge=judge_image, banned=set(), max_in_flight=1
        )


@pytest.mark.parametrize("sub", ["limit", "host", "total"])
def test_a_request_slots_subfolder_linked_out_of_data_dir_is_refused(tmp_path: Path, sub: str) -> None:
    """Slot files and limits are created and replaced in these folders: through a link, out of
    data_dir.  The check when a task is built catches it, as for request-slots/ itself."""
    from sampler.atomic import SymlinkedOutput, refuse_symlinked_outputs

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = tmp_path / "data"
    (data / "request-slots").mkdir(parents=True)
    (data / "request-slots" / sub).symlink_to(elsewhere)
    with pytest.raises(SymlinkedOutput, match=sub):
        refuse_symlinked_outputs(data)
