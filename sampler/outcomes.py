"""Every outcome a URL can have, what each means, and the class each belongs to.

One vocabulary for the whole pipeline: ``http_fetch`` (the request), ``image_check``
(the bytes), ``sample_order`` and ``dead_hosts`` (the decision) return these names;
``attempts.csv`` records them; the run report and ``docs/faults.md`` read their classes
and meanings from here.  An HTTP status other than 200 is ``http_<status>``
(``http_status(404)``), the only outcome not listed as a member.
"""

from __future__ import annotations

from enum import StrEnum


class OutcomeClass(StrEnum):
    """What an outcome says about the URL, as the run report counts it."""

    WORKING = "ok"
    DEAD_LINK = "dead_link"  # the URL's image is gone, whatever way the web says so
    BAD_IMAGE = "bad_image"  # something came back, but not a usable JPEG
    REFUSED = "refused"  # never requested: the destination policy refused the address
    SKIPPED = "skipped"  # never requested: the URL was already a candidate of the category
    OTHER = "other"  # our side's trouble (proxy, bugs) or a name this vocabulary does not know

    @property
    def label(self) -> str:
        return _CLASS_LABELS[self]


_CLASS_LABELS = {
    OutcomeClass.WORKING: "working",
    OutcomeClass.DEAD_LINK: "dead link",
    OutcomeClass.BAD_IMAGE: "bad image",
    OutcomeClass.REFUSED: "refused",
    OutcomeClass.SKIPPED: "skipped",
    OutcomeClass.OTHER: "other",
}


class Outcome(StrEnum):
    """Each name has one meaning; ``MEANINGS`` says it and ``CLASSES`` files it."""

    OK = "ok"
    # The request (sampler.fetch.http_fetch).
    BAD_SCHEME = "bad_scheme"
    BAD_URL = "bad_url"
    BAD_REDIRECT = "bad_redirect"
    REDIRECT_LOOP = "redirect_loop"
    PLACEHOLDER_REDIRECT = "placeholder_redirect"
    TOO_LARGE = "too_large"
    TIMEOUT = "timeout"
    DEAD_HOST = "dead_host"
    TRUNCATED_DOWNLOAD = "truncated_download"
    SSL_ERROR = "ssl_error"
    PROXY_ERROR = "proxy_error"
    BAD_ENCODING = "bad_encoding"
    REFUSED_ADDRESS = "refused_address"
    # The bytes (sampler.fetch.image_check).
    EMPTY = "empty"
    NOT_JPEG = "not_jpeg"
    TRUNCATED_JPEG = "truncated_jpeg"
    DECODE_ERROR = "decode_error"
    DECOMPRESSION_BOMB = "decompression_bomb"
    TOO_SMALL = "too_small"
    IMPLAUSIBLE_SIZE = "implausible_size"
    EMBEDDED_DATA = "embedded_data"
    # The decision (sampler.fetch.sample_order, sampler.fetch.dead_hosts).
    BANNED = "banned"
    DUPLICATE = "duplicate"
    EVICTED_DUPLICATE = "evicted_duplicate"
    DUPLICATE_URL = "duplicate_url"
    DEAD_HOST_KNOWN = "dead_host_known"
    ERROR = "error"


MEANINGS: dict[Outcome, str] = {
    Outcome.OK: "a complete, real JPEG photo, kept unless enough were kept before it",
    Outcome.BAD_SCHEME: "not http or https: never requested",
    Outcome.BAD_URL: "an unparsable URL or host, a control character in it, or far too long",
    Outcome.BAD_REDIRECT: "a redirect to a target that is not http(s) (file:, ftp:, javascript:...)",
    Outcome.REDIRECT_LOOP: "more redirects than max_redirects",
    Outcome.PLACEHOLDER_REDIRECT: "a redirect to a known placeholder (photo unavailable): not followed",
    Outcome.TOO_LARGE: "Content-Length or the streamed body above max_bytes",
    Outcome.TIMEOUT: "a connect or read timeout, or the whole-download deadline",
    Outcome.DEAD_HOST: "DNS failure, connection refused or reset, or a proxy saying the origin is down",
    Outcome.TRUNCATED_DOWNLOAD: "the body ended before Content-Length, or the connection broke mid-body",
    Outcome.SSL_ERROR: "a TLS handshake or certificate failure",
    Outcome.PROXY_ERROR: "the configured proxy refused or failed",
    Outcome.BAD_ENCODING: "an undecodable Content-Encoding",
    Outcome.REFUSED_ADDRESS: "the URL, a redirect hop or its resolved address is internal: never requested",
    Outcome.EMPTY: "an empty body",
    Outcome.NOT_JPEG: "no JPEG magic bytes (PNG, GIF, HTML...), or a decoder sees another format",
    Outcome.TRUNCATED_JPEG: "the JPEG's scan data is cut off: no EOI marker, or the decoder ran out of data",
    Outcome.DECODE_ERROR: "corrupt JPEG data the decoder cannot decode",
    Outcome.DECOMPRESSION_BOMB: "the header claims more than max_pixels",
    Outcome.TOO_SMALL: "the shorter side is under min_side: tracking pixels, spacers",
    Outcome.IMPLAUSIBLE_SIZE: "far too few bytes for the pixels the header declares",
    Outcome.EMBEDDED_DATA: "an archive, page, document or program after the image (a polyglot)",
    Outcome.BANNED: "md5 or sha256 on the placeholder list",
    Outcome.DUPLICATE: "the same bytes as an earlier candidate (a placeholder served for several URLs)",
    Outcome.EVICTED_DUPLICATE: "kept, then evicted: a later URL served the same bytes (a placeholder)",
    Outcome.DUPLICATE_URL: "the URL is already among the category's candidates: not requested",
    Outcome.DEAD_HOST_KNOWN: "not requested: its host was found dead earlier (dead_host_memory)",
    Outcome.ERROR: "fetching or judging raised (a bug): recorded, not fatal",
}

CLASSES: dict[Outcome, OutcomeClass] = {
    Outcome.OK: OutcomeClass.WORKING,
    **dict.fromkeys(
        (
            Outcome.BAD_SCHEME,
            Outcome.BAD_URL,
            Outcome.BAD_REDIRECT,
            Outcome.REDIRECT_LOOP,
            Outcome.PLACEHOLDER_REDIRECT,
            Outcome.TIMEOUT,
            Outcome.DEAD_HOST,
            Outcome.SSL_ERROR,
            Outcome.BANNED,
            Outcome.DUPLICATE,
            Outcome.EVICTED_DUPLICATE,
            Outcome.DEAD_HOST_KNOWN,
        ),  # fmt: skip
        OutcomeClass.DEAD_LINK,
    ),
    **dict.fromkeys(
        (
            Outcome.TOO_LARGE,
            Outcome.TRUNCATED_DOWNLOAD,
            Outcome.BAD_ENCODING,
            Outcome.EMPTY,
            Outcome.NOT_JPEG,
            Outcome.TRUNCATED_JPEG,
            Outcome.DECODE_ERROR,
            Outcome.DECOMPRESSION_BOMB,
            Outcome.TOO_SMALL,
            Outcome.IMPLAUSIBLE_SIZE,
            Outcome.EMBEDDED_DATA,
        ),  # fmt: skip
        OutcomeClass.BAD_IMAGE,
    ),
    Outcome.REFUSED_ADDRESS: OutcomeClass.REFUSED,
    Outcome.DUPLICATE_URL: OutcomeClass.SKIPPED,
    Outcome.PROXY_ERROR: OutcomeClass.OTHER,
    Outcome.ERROR: OutcomeClass.OTHER,
}

# Outcomes whose body was a good JPEG, stored in store/ (a duplicate's bytes are an earlier
# candidate's; a banned or evicted body is still the exact bytes a URL served).
GOOD_BODY: frozenset[Outcome] = frozenset(
    {Outcome.OK, Outcome.DUPLICATE, Outcome.EVICTED_DUPLICATE, Outcome.BANNED}
)

HTTP_PREFIX = "http_"

# Names that meant two things before the vocabulary had one name per meaning; journals and
# attempts.csv files written then still hold them.  ``legacy`` below reads them.
_LEGACY_TWO_MEANINGS = {"placeholder", "truncated"}


def http_status(status: int) -> str:
    """The outcome of an answer with a status other than 200: ``http_404``."""
    return f"{HTTP_PREFIX}{status}"


def outcome_class(name: str) -> OutcomeClass:
    """The class of an outcome name as recorded: ``http_<status>`` included, a name from before
    the renames too (both meanings of one belong to one class), anything unknown OTHER."""
    if name.startswith(HTTP_PREFIX):
        return OutcomeClass.DEAD_LINK
    try:
        return CLASSES[Outcome(legacy(name, sha256=""))]
    except ValueError:
        return OutcomeClass.OTHER


def legacy(name: str, *, sha256: str, error: str = "") -> str:
    """A recorded outcome name in today's vocabulary; ``sha256`` and ``error``: the row's columns.

    Before 2026-12, "placeholder" meant both a redirect to a placeholder (never downloaded)
    and a kept image evicted as a duplicate; "truncated" both a cut download and a cut JPEG.
    Of each pair, only the second had its body judged, and a judged body's digest is
    recorded in the same row: that tells them apart.  The ``bytes`` column does not: a cut
    download records the bytes it received before the cut.  Nor does the digest alone for a
    cut JPEG replayed from an earlier round or a killed run's journal: the replay recorded
    no digest (nor time), only the image check's message in ``error``, which tells it apart.
    """
    if name not in _LEGACY_TWO_MEANINGS:
        return name
    judged = bool(sha256)
    if name == "placeholder":
        return Outcome.EVICTED_DUPLICATE if judged else Outcome.PLACEHOLDER_REDIRECT
    if judged or _is_jpeg_check_message(error):
        return Outcome.TRUNCATED_JPEG
    return Outcome.TRUNCATED_DOWNLOAD


# What the image check says of a JPEG cut short: its own EOI check, or a decoder's message.
NO_EOI_MESSAGE = "no EOI marker after the scan data"


def decoder_says_cut(message: str) -> bool:
    """Whether a JPEG decoder's error message says the data ended early (truncated_jpeg)."""
    lowered = message.lower()
    return "truncated" in lowered or "premature end" in lowered


def _is_jpeg_check_message(error: str) -> bool:
    """Whether ``error`` is what the image check says of a cut JPEG, not what the download
    says of a cut body ("got N of M bytes", a connection error's text)."""
    if NO_EOI_MESSAGE in error:
        return True
    lowered = error.lower()
    cut_download = lowered.startswith("got ") or "connection broken" in lowered or "incompleteread" in lowered
    return not cut_download and decoder_says_cut(error)


def vocabulary_markdown() -> str:
    """Every outcome, its class and its meaning: the table in docs/faults.md."""
    lines = ["| Outcome | Class | Meaning |", "|---|---|---|"]
    for outcome in Outcome:
        lines.append(f"| `{outcome}` | {CLASSES[outcome].label} | {MEANINGS[outcome]} |")
    lines.append(
        f"| `{http_status(404)}`, `{http_status(503)}`... | {OutcomeClass.DEAD_LINK.label} "
        "| an answer with that HTTP status instead of 200 (after the retries the status allows) |"
    )
    return "\n".join(lines) + "\n"
