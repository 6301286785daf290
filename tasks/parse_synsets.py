"""Stage 3: resolve the category set and check it against words.txt and the URL index.

Every category task depends on this check, so an unknown wnid fails the run before any
image is downloaded.  The set's content digest is part of the output's name (and of
every downstream task's identity): an edited list is checked, and sampled, again.
Beside the table, ``synsets/<set>-<digest>.selection.json`` states what the set selected:
synsets, URLs, and the synsets without URLs (each a shortfall with its reason).
"""

from __future__ import annotations

import json
import logging

import luigi

from sampler.categories.sets import (
    WORDNET_IS_A_MIRRORS,
    CategorySpec,
    parse_is_a,
    parse_spec,
    read_preset,
    select,
)
from sampler.categories.words import (
    WORDS_URL,
    Category,
    SynsetError,
    parse_words,
    read_categories,
    read_category_table,
    write_category_table,
)
from tasks.extract_urls import ExtractUrls
from tasks.parameters import (
    CategoryListParameter,
    ListParameter,
    categories_digest,
    category_digest,
    category_source,
    knob,
)
from tasks.targets import AtomicTarget
from tasks.task import SamplerTask

log = logging.getLogger(__name__)


def read_first_source(sources: list[str] | tuple[str, ...]) -> tuple[bytes, str]:
    """The bytes of the first source that answers, and which one it was."""
    from sampler.sources import SourceError, read_source_bytes

    errors = []
    for source in sources:
        try:
            return read_source_bytes(source), source
        except SourceError as error:
            errors.append(str(error))
    raise SourceError("no mirror answered: " + "; ".join(errors))


def listed_categories(categories: str) -> list[Category]:
    """A preset's or a CSV's categories, checked against the digest the run was planned with."""
    spec = parse_spec(category_source(categories))
    listed = read_preset(spec) if spec.kind == "preset" else read_categories(spec.value)
    if categories_digest(listed) != category_digest(categories):
        raise SynsetError(
            f"the category list {category_source(categories)} changed after the run was planned; run again"
        )
    return listed


class ParseSynsets(SamplerTask):
    """``synsets/<set>-<digest>.csv``: the categories, checked, with WordNet labels and URL counts."""

    categories = CategoryListParameter()
    words_url = knob(
        luigi.Parameter,
        WORDS_URL,
        "words.txt as an http(s) URL, file:// URL or local path",
    )
    hierarchy_mirrors = knob(
        ListParameter,
        WORDNET_IS_A_MIRRORS,
        "wordnet.is_a.txt sources tried in turn (only for under:<wnid>)",
    )

    # A bad category list or words.txt does not get better by retrying.
    retry_count = 1

    def requires(self) -> ExtractUrls:
        return ExtractUrls(data_dir=self.data_dir)

    def spec(self) -> CategorySpec:
        return parse_spec(category_source(self.categories))

    def output(self) -> AtomicTarget:
        name = f"{self.spec().stem}-{category_digest(self.categories)}.csv"
        return AtomicTarget(self.path("synsets", name))

    def selection(self) -> AtomicTarget:
        """What the set selected (``<table>.selection.json``), written before the table."""
        return AtomicTarget(self.output().fs_path.with_suffix(".selection.json"))

    def complete(self) -> bool:
        # Hand-written: the selection is a second file (written first) that ExportDataset reads.
        return self.output().exists() and self.selection().exists()

    def category_list(self) -> list[Category]:
        """The categories as configured; known before any stage runs, so FetchFives can plan with it.

        A subtree (``under:<wnid>``) or ``all`` is known once this task has resolved it against the
        URL index: until then this raises, naming the command that resolves it.
        """
        if not hasattr(self, "_category_list"):
            if not self.spec().resolved_from_index:
                self._category_list = listed_categories(self.categories)
            else:
                table = self.output()
                if not table.exists():
                    raise SynsetError(
                        f"{category_source(self.categories)} is resolved against the URL index before the "
                        "categories can be planned: run `python -m pipeline <Task> ...` (it does this "
                        f"first), or `luigi --module pipeline ParseSynsets --ParseSynsets-categories "
                        f"{category_source(self.categories)}` once"
                    )
                self._category_list = read_category_table(table.fs_path)
        return self._category_list

    def run(self) -> None:
        from sampler.index.read import UrlIndex
        from sampler.sources import read_source_bytes

        spec = self.spec()
        words = parse_words(read_source_bytes(self.words_url), self.words_url)
        counts = UrlIndex.open(self.input().fs_path).counts
        selection = select(
            spec,
            lambda: listed_categories(self.categories),
            words,
            counts,
            hierarchy=lambda: parse_is_a(*read_first_source(list(self.hierarchy_mirrors))),
        )
        log.info("%s", selection.summary())
        if selection.without_urls:
            log.warning("%s", selection.summary())
        # The selection first: the table is what complete() and the downstream tasks look for.
        self.selection().write_text(json.dumps(selection.to_json(), indent=1) + "\n")
        with self.output().temporary_path() as tmp:
            write_category_table(
                selection.categories,
                words,
                {c.wnid: selection.url_counts[c.wnid] for c in selection.categories},
                tmp,
            )
