"""The one vocabulary of a category's round, in memory and on disk.

``Attempt`` is one URL tried (or settled without a request); ``KeptImage`` one image kept;
``RoundResult`` one category's round.  ``sampler.fetch.sample_order`` makes them as it
decides, ``sampler.fetch.category_round`` writes them -- the result as
``fetch/<configuration>/round<R>/<wnid>.json``, every attempt as a row of the attempts
files (``sampler.fetch.attempts``) -- and FetchFives reads every category's back
(``sampler.fetch.gather``).  The files keep the shape they always had: a result's JSON
holds only the fields below that it always held, and results written by earlier
versions are read as they are.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sampler.fetch.attempts import ATTEMPT_FIELDS
from sampler.outcomes import legacy


@dataclass
class Attempt:
    """One candidate URL: fetched and judged, replayed, or settled without a request.

    A result file keeps only ``image_id``, ``url``, ``outcome``, ``md5`` and ``sha256`` of
    each decided one (``sha256`` is "" when no body was judged); the attempts files keep
    every field (``row()``).
    """

    image_id: str
    url: str
    final_url: str = ""
    status: int | None = None
    outcome: str = ""  # sampler.outcomes
    bytes: int = 0
    ms: int = 0
    md5: str = ""
    sha256: str = ""
    error: str = ""
    judged: bool = True  # part of the deterministic sample-order prefix; False: speculative
    requests: int = 0  # HTTP requests this URL cost, retries and redirect hops included

    def row(self) -> dict[str, object]:
        """Its row of an attempts file (sampler.fetch.attempts)."""
        return {name: getattr(self, name) for name in ATTEMPT_FIELDS}

    def to_json(self) -> dict[str, Any]:
        """Its entry in a result's ``judged`` list."""
        return {
            "image_id": self.image_id,
            "url": self.url,
            "outcome": self.outcome,
            "md5": self.md5,
            "sha256": self.sha256,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attempt:
        return cls(
            image_id=data["image_id"],
            url=data["url"],
            # Results of old runs name some outcomes otherwise (sampler.outcomes.legacy).
            outcome=legacy(data["outcome"], sha256=data["sha256"]),
            md5=data["md5"],
            sha256=data["sha256"],
        )


@dataclass(frozen=True)
class KeptImage:
    """A kept image: where it came from, its name in images/ and its body's identity in the store.

    ``body``, the bytes as served, is there only in the round that fetched it (the store
    holds them); a result read back has none.
    """

    image_id: str
    url: str
    final_url: str
    file: str  # its name in images/ (sampler.naming.image_filename)
    sha256: str
    md5: str
    bytes: int
    width: int
    height: int
    body: builtins.bytes = field(default=b"", repr=False, compare=False)  # (``bytes`` is its size)

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _KEPT_FIELDS}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeptImage:
        return cls(**{name: data[name] for name in _KEPT_FIELDS})


_KEPT_FIELDS = [f.name for f in dataclasses.fields(KeptImage) if f.name != "body"]


@dataclass
class RoundResult:
    """One category's result for one round."""

    wnid: str
    label: str
    needed: int
    kept: list[KeptImage] = field(default_factory=list)  # in sample order
    exhausted: bool = False  # the synset's URLs ran out before ``needed`` were kept
    tried: int = 0  # candidates decided, duplicate URLs included: len(judged)
    judged: list[Attempt] = field(default_factory=list)  # every candidate decided, in sample order
    round: int = 0
    # Fetched, finished and never needed: in the attempts files only, not in the result's.
    speculative: list[Attempt] = field(default_factory=list, compare=False)

    @property
    def shortfall(self) -> int:
        return self.needed - len(self.kept)

    def to_json(self) -> dict[str, Any]:
        return {
            "wnid": self.wnid,
            "label": self.label,
            "needed": self.needed,
            "kept": [image.to_json() for image in self.kept],
            "shortfall": self.shortfall,  # for readers of the file; derived when read back
            "exhausted": self.exhausted,
            "tried": self.tried,
            "judged": [judged.to_json() for judged in self.judged],
            "round": self.round,
        }

    def to_text(self) -> str:
        """The result file's text."""
        return json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n"

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
            judged=[Attempt.from_json(judged) for judged in data["judged"]],
            round=int(data.get("round", 0)),
        )


def read_result(path: str | os.PathLike[str]) -> RoundResult:
    """Raises OSError, ValueError (not JSON), KeyError or TypeError (not a result)."""
    return RoundResult.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
