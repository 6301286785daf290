"""Stage 3: check the category list against words.txt and the URL index."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import luigi

from sampler.atomic import atomic_path, atomic_write_text
from sampler.category_sets import (
    WORDNET_IS_A_MIRRORS,
    Selection,
    parse_is_a,
    parse_spec,
    read_preset,
    select_listed,
    select_subtree,
)
from sampler.sources import SourceError, read_source_bytes
from sampler.synsets import (
    SynsetError,
    check_categories,
    parse_words,
    read_categories,
    read_category_table,
    write_category_table,
)
from sampler.url_index import UrlIndex
from tasks.config import data_path
from tasks.extract_urls import ExtractUrls

log = logging.getLogger(__name__)


def read_first_source(sources: list[str] | tuple[str, ...]) -> tuple[bytes, str]:
    """The bytes of the first source that answers, and which one it was."""
    errors = []
    for source in sources:
        try:
            return read_source_bytes(source), source
        except SourceError as error:
            errors.append(str(error))
    raise SourceError("no mirror answered: " + "; ".join(errors))


class ParseSynsets(luigi.Task):
    """``synsets/<set>.csv``: the categories, checked, with WordNet labels and URL counts.

    Beside it, ``synsets/<set>.selection.json`` states what the set selected: synsets,
    URLs, and the synsets without URLs (each a shortfall with its reason).
    """

    words_url = luigi.Parameter(
        default="http://image-net.org/archive/words.txt",
        significant=False,
        description="words.txt as an http(s) URL, file:// URL or local path",
    )
    categories = luigi.Parameter(
        default="det200",
        description="A preset (det200, imagenette, imagewoof, mini-imagenet, imagenet-a, imagenet-r, "
        "ilsvrc2012), under:<wnid> (a WordNet subtree) or a CSV `wnid,label`",
    )
    hierarchy_mirrors = luigi.ListParameter(
        default=WORDNET_IS_A_MIRRORS,
        significant=False,
        description="wordnet.is_a.txt sources tried in turn (only for under:<wnid>)",
    )

    # A bad category list or words.txt does not get better by retrying.
    retry_count = 1

    def requires(self) -> ExtractUrls:
        return ExtractUrls()

    def spec(self):  # noqa: ANN201 - CategorySpec
        return parse_spec(self.categories)

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(data_path("synsets", f"{self.spec().stem}.csv"))

    def selection_path(self) -> Path:
        return Path(self.output().path).with_suffix(".selection.json")

    def complete(self) -> bool:
        path = Path(self.output().path)
        if not (path.exists() and self.selection_path().exists()):
            return False
        if self.spec().kind == "under":
            return True  # the resolved list is this task's own output
        # Keyed by the list's name only: an edited list must be checked again.
        return read_category_table(path) == self.category_list()

    def category_list(self) -> list:
        """The categories as configured; known before any stage runs, so FetchFives can plan with it.

        A subtree (``under:<wnid>``) is known once this task has resolved it against the
        URL index: until then this raises, naming the command that resolves it.
        """
        spec = self.spec()
        if spec.kind == "preset":
            return read_preset(spec)
        if spec.kind == "csv":
            return read_categories(spec.value)
        path = Path(self.output().path)
        if not path.exists():
            raise SynsetError(
                f"{self.categories} is resolved against the URL index before the categories can be planned: "
                f"run `python -m pipeline <Task> ...` (it does this first), or "
                f"`luigi --module pipeline ParseSynsets --ParseSynsets-categories {self.categories}` once"
            )
        return read_category_table(path)

    def run(self) -> None:
        spec = self.spec()
        words = parse_words(read_source_bytes(self.words_url), self.words_url)
        counts = UrlIndex.open(Path(self.input().path)).counts
        if spec.kind == "under":
            data, source = read_first_source(list(self.hierarchy_mirrors))
            selection = select_subtree(spec.value, parse_is_a(data, source), words, counts)
        elif spec.kind == "preset":
            selection = select_listed(spec.value, read_preset(spec), words, counts)
        else:
            categories = read_categories(spec.value)
            check_categories(categories, words, counts)  # an explicit list must be exact
            selection = Selection(spec.value, categories, {c.wnid: counts[c.wnid] for c in categories})
        log.info("%s", selection.summary())
        if selection.without_urls:
            log.warning("%s", selection.summary())
        atomic_write_text(self.selection_path(), json.dumps(selection.to_json(), indent=1) + "\n")
        with atomic_path(Path(self.output().path)) as tmp:
            write_category_table(
                selection.categories,
                words,
                {c.wnid: selection.url_counts[c.wnid] for c in selection.categories},
                tmp,
            )
