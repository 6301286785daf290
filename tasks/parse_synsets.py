"""Stage 3: check the category list against words.txt and the URL index.

Every category task depends on this check, so an unknown wnid fails the run before any
image is downloaded.  The list's content digest is part of the output's name (and of
every downstream task's identity): an edited list is checked, and sampled, again.
"""

from __future__ import annotations

from pathlib import Path

import luigi

from sampler.atomic import atomic_path
from sampler.sources import read_source_bytes
from sampler.synsets import (
    Category,
    SynsetError,
    check_categories,
    parse_words,
    read_categories,
    write_category_table,
)
from sampler.url_index import UrlIndex
from tasks.base import (
    HIDDEN,
    CategoryListParameter,
    SamplerTask,
    categories_digest,
    category_digest,
    category_source,
)
from tasks.extract_urls import ExtractUrls


def planned_categories(categories: str) -> list[Category]:
    """The categories a CategoryListParameter value names, checked against its digest."""
    listed = read_categories(category_source(categories))
    if categories_digest(listed) != category_digest(categories):
        raise SynsetError(
            f"the category list {category_source(categories)} changed after the run was planned; run again"
        )
    return listed


class ParseSynsets(SamplerTask):
    """``synsets/<list>-<digest>.csv``: the categories, checked, with WordNet labels and URL counts."""

    categories = CategoryListParameter()
    words_url = luigi.Parameter(
        default="http://image-net.org/archive/words.txt",
        significant=False,
        visibility=HIDDEN,
        description="words.txt as an http(s) URL, file:// URL or local path",
    )

    # A bad category list or words.txt does not get better by retrying.
    retry_count = 1

    def requires(self) -> ExtractUrls:
        return ExtractUrls(data_dir=self.data_dir)

    def output(self) -> luigi.LocalTarget:
        stem = Path(category_source(self.categories)).stem
        return luigi.LocalTarget(self.path("synsets", f"{stem}-{category_digest(self.categories)}.csv"))

    def category_list(self) -> list[Category]:
        """The categories as configured; known before any stage runs, so FetchFives can plan with it."""
        if not hasattr(self, "_category_list"):
            self._category_list = planned_categories(self.categories)
        return self._category_list

    def run(self) -> None:
        categories = planned_categories(self.categories)
        words = parse_words(read_source_bytes(self.words_url), self.words_url)
        counts = UrlIndex.open(Path(self.input().path)).counts
        check_categories(categories, words, counts)
        with atomic_path(Path(self.output().path)) as tmp:
            write_category_table(categories, words, counts, tmp)
