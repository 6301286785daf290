"""Stage 3: check the category list against words.txt and the URL index."""

from __future__ import annotations

from pathlib import Path

import luigi

from sampler.atomic import atomic_path
from sampler.synsets import (
    DET200,
    check_categories,
    parse_words,
    read_categories,
    read_category_table,
    write_category_table,
)
from tasks.config import data_path
from tasks.extract_urls import ExtractUrls


class ParseSynsets(luigi.Task):
    """``synsets/<list>.csv``: the categories, checked, with WordNet labels and URL counts."""

    words_url = luigi.Parameter(
        default="http://image-net.org/archive/words.txt",
        significant=False,
        description="words.txt as an http(s) URL, file:// URL or local path",
    )
    categories = luigi.Parameter(
        default=str(DET200),
        description="CSV `wnid,label` of the categories to sample (default: ILSVRC2017 DET 200)",
    )

    # A bad category list or words.txt does not get better by retrying.
    retry_count = 1

    def requires(self) -> ExtractUrls:
        return ExtractUrls()

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(data_path("synsets", f"{Path(self.categories).stem}.csv"))

    def complete(self) -> bool:
        # Keyed by the list's file name only: an edited list must be checked again.
        path = Path(self.output().path)
        return path.exists() and read_category_table(path) == self.category_list()

    def category_list(self) -> list:
        """The categories as configured; known before any stage runs, so FetchFives can plan with it."""
        return read_categories(self.categories)

    def run(self) -> None:
        from sampler.sources import read_source_bytes
        from sampler.url_index import UrlIndex

        categories = self.category_list()
        words = parse_words(read_source_bytes(self.words_url), self.words_url)
        counts = UrlIndex.open(Path(self.input().path)).counts
        check_categories(categories, words, counts)
        with atomic_path(Path(self.output().path)) as tmp:
            write_category_table(categories, words, counts, tmp)
