"""Category sets by name: the well-known ImageNet subsets, WordNet subtrees, or a CSV.

``--ParseSynsets-categories`` accepts three kinds of value:

- a preset name (``det200``, ``imagenette``, ``imagewoof``, ``mini-imagenet``,
  ``imagenet-a``, ``imagenet-r``, ``ilsvrc2012``): a ``wnid,label`` CSV shipped in
  ``config/`` whose labels are words.txt's first lemma (see :func:`labels_from_words`);
- ``under:<wnid>``: every synset below ``wnid`` in wordnet.is_a.txt, itself included,
  that has URLs in the list;
- ``all``: every synset that has URLs in the list (21,841 in fall11), labelled from
  words.txt; no hierarchy needed;
- a path to a ``wnid,label`` CSV, as before.

Presets and CSVs are configuration: known before any stage runs, so FetchFives can name
every category task up front.  A subtree is not: which of its synsets have URLs is known
only once the URL index exists (nor is ``all``).  ParseSynsets therefore resolves it once
and writes the resolved list (``synsets/under-<wnid>.csv``, ``synsets/all.csv``);
FetchFives plans from that file, and
``python -m pipeline`` runs ParseSynsets first when it is missing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sampler import CONFIG_DIR
from sampler.categories.words import (
    DET200,
    Category,
    SynsetError,
    check_categories,
    parse_lines,
    read_categories,
)
from sampler.naming import is_wnid

SETS_DIR = CONFIG_DIR / "sets"
# Preset name -> shipped list.  det200 keeps its hand-made short names (the blog post's).
PRESETS: dict[str, Path] = {
    "det200": DET200,
    "imagenette": SETS_DIR / "imagenette.csv",
    "imagewoof": SETS_DIR / "imagewoof.csv",
    "mini-imagenet": SETS_DIR / "mini-imagenet.csv",
    "imagenet-a": SETS_DIR / "imagenet-a.csv",
    "imagenet-r": SETS_DIR / "imagenet-r.csv",
    "ilsvrc2012": SETS_DIR / "ilsvrc2012.csv",
}
UNDER_PREFIX = "under:"
ALL = "all"
# Kinds of set known only once resolved against the URL index (by ParseSynsets).
RESOLVED_FROM_INDEX = ("under", "all")
NO_URLS_REASON = "no URLs in fall11_urls.txt"

# The hierarchy's home, then the Internet Archive's copy as the fallback.  No capture address
# of this file was found published (the tarball's was); the Wayback Machine's "id_" form with a
# partial timestamp answers with the raw bytes of the capture nearest that date (2019, when the
# tarball was captured).
WORDNET_IS_A_MIRRORS = (
    "http://image-net.org/archive/wordnet.is_a.txt",
    "http://web.archive.org/web/2019id_/http://image-net.org/archive/wordnet.is_a.txt",
)

_IS_A_LINE = re.compile(rb"(n\d{8}) (n\d{8})\r?")


@dataclass(frozen=True)
class CategorySpec:
    """What ``--ParseSynsets-categories`` names: ``kind`` is preset, under, all or csv."""

    kind: str
    value: str  # preset name, root wnid, "all" or CSV path

    @property
    def resolved_from_index(self) -> bool:
        """Whether the set is known only once ParseSynsets resolved it against the URL index."""
        return self.kind in RESOLVED_FROM_INDEX

    @property
    def stem(self) -> str:
        """The name of the set in output file names (``synsets/<stem>.csv``)."""
        if self.kind == "under":
            return f"under-{self.value}"
        return Path(self.value).stem if self.kind == "csv" else self.value


def parse_spec(text: str) -> CategorySpec:
    text = text.strip()
    if text in PRESETS:
        return CategorySpec("preset", text)
    if text == ALL:
        return CategorySpec("all", ALL)
    if text.startswith(UNDER_PREFIX):
        root = text[len(UNDER_PREFIX) :].strip()
        if not is_wnid(root):
            raise SynsetError(f"{text!r}: expected under:<wnid>, a WordNet id such as under:n02084071")
        return CategorySpec("under", root)
    if not text:
        raise SynsetError("no category set given: name a preset, all, under:<wnid> or a CSV path")
    path = Path(text)
    if path.suffix.lower() != ".csv" and not path.exists():
        raise SynsetError(
            f"{text!r} is neither a preset ({', '.join(PRESETS)}), nor all, nor under:<wnid>, "
            "nor an existing CSV file"
        )
    return CategorySpec("csv", text)


def preset_path(spec: CategorySpec) -> Path:
    return PRESETS[spec.value] if spec.kind == "preset" else Path(spec.value)


def first_lemma(words_entry: str) -> str:
    return words_entry.split(",")[0].strip()


MAX_LABEL_CHARS = 40


def short_lemma(lemma: str) -> str:
    """A lemma as a label: ``/`` (a path separator in a folder name) becomes ``-``."""
    return " ".join(lemma.replace("/", "-").split())


def labels_from_words(wnids: Sequence[str], words: Mapping[str, str]) -> list[Category]:
    """Short labels from words.txt: each synset's first lemma, unique within the set.

    ILSVRC-2012 has two "crane"s (the bird and the machine) and two "maillot"s: the later
    one takes its next lemma not yet used ("tank suit"), or, with none left, its wnid in
    brackets ("crane (n03126707)").  Labels become folder and file names, so they must differ.
    A first lemma over 40 characters (69 synsets, e.g. "American Federation of Labor and
    Congress of Industrial Organizations") gives way to the synset's shortest ("AFL-CIO").
    """
    unknown = [w for w in wnids if w not in words]
    if unknown:
        raise SynsetError(f"unknown to words.txt: {', '.join(unknown)}")
    taken: set[str] = set()
    categories = []
    for wnid in wnids:
        lemmas = [short_lemma(lemma) for lemma in words[wnid].split(",") if lemma.strip()] or [wnid]
        if len(lemmas[0]) > MAX_LABEL_CHARS:
            lemmas.sort(key=len)  # stable: the earliest of the shortest first
        lemmas = [lemma[:MAX_LABEL_CHARS].rstrip() for lemma in lemmas]
        # All taken: the first with the wnid, cut so that the whole stays within the limit.
        fallback = f"{lemmas[0][: MAX_LABEL_CHARS - 12].rstrip()} ({wnid})"
        label = next((lemma for lemma in lemmas if lemma.lower() not in taken), fallback)
        taken.add(label.lower())
        categories.append(Category(wnid, label))
    return categories


def parse_is_a(data: bytes, source: str = "wordnet.is_a.txt") -> dict[str, list[str]]:
    """``parent -> [children]`` from wordnet.is_a.txt bytes (``parent<SPACE>child`` per line)."""
    children: dict[str, list[str]] = {}
    for match in parse_lines(data, _IS_A_LINE, source, "wordnet.is_a.txt", "parent child"):
        children.setdefault(match.group(1).decode("ascii"), []).append(match.group(2).decode("ascii"))
    return children


def subtree(children: Mapping[str, Sequence[str]], root: str) -> list[str]:
    """``root`` and every synset below it, each once (the hierarchy is a DAG), sorted by wnid."""
    seen = {root}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return sorted(seen)


@dataclass
class Selection:
    """What a set selected: the categories to sample, and the synsets left without URLs."""

    name: str
    categories: list[Category]
    url_counts: dict[str, int]
    without_urls: list[Category] = field(default_factory=list)

    @property
    def urls(self) -> int:
        return sum(self.url_counts.get(c.wnid, 0) for c in self.categories)

    def to_json(self) -> dict:
        # A listed set keeps its synsets without URLs among its categories (each ends as a
        # shortfall); a subtree leaves them out.  Either way each synset counts once.
        synsets = len({c.wnid for c in self.categories} | {c.wnid for c in self.without_urls})
        return {
            "set": self.name,
            "synsets": synsets,
            "synsets_with_urls": synsets - len(self.without_urls),
            "urls": self.urls,
            "without_urls": [
                {"wnid": c.wnid, "label": c.label, "reason": NO_URLS_REASON} for c in self.without_urls
            ],
        }

    def summary(self) -> str:
        with_urls = len(self.categories) - len(
            {c.wnid for c in self.without_urls} & {c.wnid for c in self.categories}
        )
        text = f"{self.name}: {with_urls} synsets with {self.urls:,} URLs"
        if self.without_urls:
            missing = ", ".join(f"{c.wnid} ({c.label})" for c in self.without_urls)
            text += f"; {len(self.without_urls)} without URLs ({NO_URLS_REASON}): {missing}"
        return text


def select_listed(
    name: str, categories: Sequence[Category], words: Mapping[str, str], url_counts: Mapping[str, int]
) -> Selection:
    """A named list: every wnid must be known to words.txt; those without URLs are a shortfall.

    (ILSVRC-2012's teddy bear, n04399382, has no URLs in fall11_urls.txt: the run goes on
    without it and says so.)  A list none of whose synsets has URLs fails.
    """
    unknown = [c.wnid for c in categories if c.wnid not in words]
    if unknown:
        raise SynsetError(f"bad categories in {name}: unknown to words.txt: {', '.join(unknown)}")
    with_urls = [c for c in categories if url_counts.get(c.wnid, 0) > 0]
    if not with_urls:
        raise SynsetError(f"{name}: none of its {len(categories)} synsets has URLs in the list")
    return Selection(
        name,
        list(categories),  # the run keeps them all: a synset without URLs ends as a shortfall
        {c.wnid: url_counts.get(c.wnid, 0) for c in categories},
        [c for c in categories if url_counts.get(c.wnid, 0) == 0],
    )


def select_subtree(
    root: str,
    children: Mapping[str, Sequence[str]],
    words: Mapping[str, str],
    url_counts: Mapping[str, int],
) -> Selection:
    """``under:<root>``: every synset of the subtree with URLs, labelled from words.txt."""
    if root not in words:
        raise SynsetError(f"under:{root}: {root} is unknown to words.txt")
    members = subtree(children, root)
    labelled = labels_from_words([w for w in members if w in words], words)
    with_urls = [c for c in labelled if url_counts.get(c.wnid, 0) > 0]
    if not with_urls:
        raise SynsetError(
            f"under:{root} ({first_lemma(words[root])}): none of its {len(members)} synsets "
            "has URLs in the list (images are listed under a synset itself, not its ancestors)"
        )
    return Selection(
        f"under:{root}",
        with_urls,
        {c.wnid: url_counts[c.wnid] for c in with_urls},
        [c for c in labelled if url_counts.get(c.wnid, 0) == 0],
    )


def select_all(words: Mapping[str, str], url_counts: Mapping[str, int]) -> Selection:
    """``all``: every synset with URLs in the list, in wnid order, labelled from words.txt.

    Resolved from the URL index's counts alone (no wordnet.is_a.txt).  A synset with URLs
    that words.txt does not know (none in fall11) is kept, labelled with its wnid.
    """
    wnids = sorted(w for w, count in url_counts.items() if count > 0)
    if not wnids:
        raise SynsetError("all: the URL list has no synset with URLs")
    known = {c.wnid: c for c in labels_from_words([w for w in wnids if w in words], words)}
    categories = [known.get(w) or Category(w, w) for w in wnids]
    return Selection(ALL, categories, {w: url_counts[w] for w in wnids})


def select(
    spec: CategorySpec,
    listed: Callable[[], Sequence[Category]],
    words: Mapping[str, str],
    url_counts: Mapping[str, int],
    hierarchy: Callable[[], Mapping[str, Sequence[str]]],
) -> Selection:
    """The selection of any kind of set (a thin dispatcher): a subtree from ``hierarchy()``
    (read only for one), every synset with URLs (``all``), a preset from its ``listed()``
    categories, and a CSV whose categories must all be known and have URLs (an explicit list
    must be exact)."""
    if spec.kind == "under":
        return select_subtree(spec.value, hierarchy(), words, url_counts)
    if spec.kind == "all":
        return select_all(words, url_counts)
    if spec.kind == "preset":
        return select_listed(spec.value, listed(), words, url_counts)
    categories = list(listed())
    check_categories(categories, words, url_counts)
    return Selection(spec.value, categories, {c.wnid: url_counts[c.wnid] for c in categories})


def read_preset(spec: CategorySpec) -> list[Category]:
    """The categories of a preset, or of the CSV a spec names."""
    return read_categories(preset_path(spec))


def read_wnid_list(lines: Iterable[str]) -> list[str]:
    """A plain wnid list (one per line), as the reference lists of the subsets are published."""
    return [line.strip() for line in lines if line.strip()]


ILSVRC2012 = "ilsvrc2012"


def ilsvrc2012_order() -> dict[str, int]:
    """``wnid -> class index`` of ILSVRC-2012 (the shipped preset is in class-index order)."""
    return {c.wnid: i for i, c in enumerate(read_preset(CategorySpec("preset", ILSVRC2012)))}
