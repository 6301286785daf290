"""Stage 4: a reproducible random sample of URLs per category."""

from __future__ import annotations

import logging

import luigi

from sampler.categories.words import read_category_table
from tasks.extract_urls import ExtractUrls
from tasks.parameters import CategoryListParameter, category_digest
from tasks.parse_synsets import ParseSynsets
from tasks.targets import AtomicTarget
from tasks.task import SamplerTask

log = logging.getLogger(__name__)

SHORT_LINES = 20  # synsets named one by one in the warning about short ones


class SampleUrls(SamplerTask):
    """``sample/seed<S>-n<N>-<list digest>.csv``: N URLs per category (``image_id,url``), in seeded order."""

    categories = CategoryListParameter()
    per_category = luigi.IntParameter(default=100, description="URLs drawn per category")
    seed = luigi.IntParameter(default=0, description="Random seed; the same seed gives the same sample")

    def validate(self) -> None:
        self.require_at_least("per_category", 1)

    def requires(self) -> dict[str, SamplerTask]:
        return {
            "synsets": ParseSynsets(data_dir=self.data_dir, categories=self.categories),
            "urls": ExtractUrls(data_dir=self.data_dir),
        }

    def output(self) -> AtomicTarget:
        name = f"seed{self.seed}-n{self.per_category}-{category_digest(self.categories)}.csv"
        return AtomicTarget(self.path("sample", name))

    def run(self) -> None:
        from sampler.index.read import UrlIndex
        from sampler.sampling import iter_sample_urls, write_sample_csv

        categories = read_category_table(self.input()["synsets"].fs_path)
        index = UrlIndex.open(self.input()["urls"].fs_path)
        short: dict[str, int] = {}
        with self.output().temporary_path() as tmp:
            # Written as drawn: every synset of ImageNet x 100 is 2.2 M rows.
            write_sample_csv(
                iter_sample_urls(index, [c.wnid for c in categories], self.per_category, self.seed, short),
                tmp,
            )
        # One line each for a few; all of ImageNet has 4,366 synsets under 100 URLs.
        for wnid, count in list(short.items())[:SHORT_LINES]:
            log.warning(
                "%s has only %d URLs (fewer than %d): all are in the sample", wnid, count, self.per_category
            )
        if len(short) > SHORT_LINES:
            log.warning(
                "... and %d more synsets with fewer than %d URLs (all of their URLs are in the sample)",
                len(short) - SHORT_LINES,
                self.per_category,
            )
