"""The project's CSV files hold URLs of whatever length the URL list has.

Python's csv module refuses a field over 131,072 characters (``csv.field_size_limit``), and
a line of fall11_urls.txt may hold a longer one: the fetch records it (``bad_url``, over
``max_url_chars``) in its attempts file and journal, which then could not be read back, and
every later FetchFives failed on it.  The readers of those files lift the limit first.
"""

from __future__ import annotations

import csv

# The largest the csv module takes on every platform (a C long); a field is bounded by the
# line of the URL list it came from in any case.
FIELD_LIMIT = 2**31 - 1


def allow_long_fields() -> None:
    """Let the csv module read fields of any length (a process-wide setting: idempotent)."""
    if csv.field_size_limit() < FIELD_LIMIT:
        csv.field_size_limit(FIELD_LIMIT)
