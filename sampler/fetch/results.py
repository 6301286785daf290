"""What one category's round hands on: ``RoundResult`` (``fetch/<configuration>/round<R>/<wnid>.json``).

FetchCategory writes it (``sampler.fetch.category_job``); FetchFives reads every category's
(``sampler.fetch.gather``) to look for placeholders across categories, plan top-up rounds
and write the manifest.  The JSON keeps the shape it always had, so results written by
earlier versions are read as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sampler.outcomes import legacy


@dataclass(frozen=True)
class KeptImage:
    """A kept image: where it came from, its name in images/ and its body's identity in the store."""

    image_id: str
    url: str
    final_url: str
    file: str  # its name in images/ (sampler.naming.image_filename)
    sha256: str
    md5: str
    bytes: int
    width: int
    height: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeptImage:
        return cls(**{name: data[name] for name in _KEPT_FIELDS})


@dataclass(frozen=True)
class JudgedUrl:
    """A candidate decided in sample order; ``sha256`` is "" when no body was judged."""

    image_id: str
    url: str
    outcome: str  # sampler.outcomes
    md5: str
    sha256: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JudgedUrl:
        values = {name: data[name] for name in _JUDGED_FIELDS}
        values["outcome"] = legacy(values["outcome"], sha256=values["sha256"])  # results of old runs
        return cls(**values)


_KEPT_FIELDS = [f.name for f in dataclasses.fields(KeptImage)]
_JUDGED_FIELDS = [f.name for f in dataclasses.fields(JudgedUrl)]


@dataclass(frozen=True)
class RoundResult:
    """One category's result for one round."""

    wnid: str
    label: str
    needed: int
    kept: list[KeptImage]  # in sample order
    exhausted: bool  # the synset's URLs ran out before ``needed`` were kept
    tried: int  # candidates decided, duplicate URLs included
    judged: list[JudgedUrl]  # every candidate decided, in sample order
    round: int = 0

    @property
    def shortfall(self) -> int:
        return self.needed - len(self.kept)

    def to_json(self) -> dict[str, Any]:
        return {
            "wnid": self.wnid,
            "label": self.label,
            "needed": self.needed,
            "kept": [dataclasses.asdict(image) for image in self.kept],
            "shortfall": self.shortfall,  # for readers of the file; derived when read back
            "exhausted": self.exhausted,
            "tried": self.tried,
            "judged": [dataclasses.asdict(judged) for judged in self.judged],
            "round": self.round,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoundResult:
        """Raises KeyError or TypeError for JSON that is not a result."""
        return cls(
            wnid=data["wnid"],
            label=data["label"],
            needed=int(data["needed"]),
            kept=[KeptImage.from_json(image) for image in data["kept"]],
            exhausted=bool(data["exhausted"]),
            tried=int(data["tried"]),
            judged=[JudgedUrl.from_json(judged) for judged in data["judged"]],
            round=int(data.get("round", 0)),
        )
