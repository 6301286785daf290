"""FetchFives' top-up rounds, without luigi: which categories run again in which round.

Round 0 is every category's first result.  After it, bytes seen behind two URLs (a host's
banner) are placeholders everywhere, and an image kept by two categories stays with the
first; each category left holding a banned image runs again (a top-up round, with the bans
in ``fetch/<configuration>/round<R>.json``), until none does or ``max_rounds`` ran out --
then what is still banned is dropped, as a shortfall.  The task only runs the categories
that ``next_round()`` names and hands back their results (``took``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from sampler.fetch.gather import RoundPlan, plan_next_round, without_banned, write_round_plan
from sampler.fetch.results import RoundResult


class RoundPlanner:
    """The top-up rounds of one configuration's categories (``order``: list order)."""

    def __init__(
        self, order: Sequence[str], first: Mapping[str, RoundResult], max_rounds: int, folder: Path
    ) -> None:
        self.order = list(order)
        self.history: dict[str, list[RoundResult]] = {wnid: [first[wnid]] for wnid in self.order}
        self.current: dict[str, RoundResult] = {wnid: first[wnid] for wnid in self.order}
        self.max_rounds = max_rounds
        self.folder = folder
        self.round = 0
        self.plan: RoundPlan | None = None  # the last round's (bans that still hold)
        self.finished = False

    def next_round(self) -> tuple[int, list[str]] | None:
        """The next top-up round's number and the categories it reruns (its plan written
        first), or None once no category needs one (out of rounds: the banned dropped)."""
        if self.finished:
            return None
        if self.round >= self.max_rounds:
            final = plan_next_round(self.order, self.history, self.current, self.plan)
            self.current = without_banned(self.current, final)
            self.finished = True
            return None
        self.plan = plan_next_round(self.order, self.history, self.current, self.plan)
        if not self.plan.rerun:
            self.finished = True
            return None
        self.round += 1
        write_round_plan(self.folder, self.round, self.plan)
        return self.round, list(self.plan.rerun)

    def took(self, wnid: str, result: RoundResult) -> None:
        """A rerun category's result in the current round."""
        self.current[wnid] = result
        self.history[wnid].append(result)

    def repaired(self, results: Mapping[str, RoundResult]) -> None:
        """Categories run again for a lost or damaged kept body: their results, with the bans
        of the rounds that ran still applied (the URL may be gone: the next candidate kept)."""
        self.current.update(without_banned(results, self.plan) if self.plan is not None else results)
