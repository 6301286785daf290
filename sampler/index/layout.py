"""The URL index's on-disk format: file names, Arrow schemas, format version, and its error.

Shared by the writer (``sampler.index.stream``) and the reader (``sampler.index.read``),
so that neither imports the other.  An index directory holds::

    urls.arrow   Arrow IPC file, one utf8 column ``line``: every line of the member in
                 source order, newline included ("n01440764_10\\thttp://...\\n"); a
                 malformed line is null.  One record batch per ~2 MB block.
                 image_id = line up to the first tab; url = the rest minus the newline.
    runs.arrow   Arrow IPC file, columns wnid (utf8), first_row (int64), rows (int64):
                 maximal runs of consecutive well-formed rows of one synset (one per
                 synset when the input is grouped and clean; a malformed line inside a
                 synset splits its run in two), sorted by wnid, then source order
    counts.csv   wnid,urls -- one row per synset, sorted by wnid
    report.json  what was read and what was skipped (see ``build_url_index``)
"""

from __future__ import annotations

import pyarrow as pa

URLS_FILE = "urls.arrow"
RUNS_FILE = "runs.arrow"
COUNTS_FILE = "counts.csv"
REPORT_FILE = "report.json"
FORMAT_VERSION = "1"
# The schema metadata key names the module that first wrote the format (sampler/url_index.py,
# before the stage folders): kept as it is, so that every data_dir made before the move still
# opens its index instead of failing every category task.
FORMAT_KEY = "sampler.url_index"

SCHEMA = pa.schema(
    [pa.field("line", pa.string(), nullable=True)],
    metadata={FORMAT_KEY: FORMAT_VERSION},
)
RUNS_SCHEMA = pa.schema(
    [
        pa.field("wnid", pa.string(), nullable=False),
        pa.field("first_row", pa.int64(), nullable=False),
        pa.field("rows", pa.int64(), nullable=False),
    ]
)


class UrlListError(Exception):
    """The tarball is not a readable URL list (not gzip, truncated, wrong members...)."""
