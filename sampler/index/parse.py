"""The bit-level block parser: one block of whole lines checked at once with numpy.

``parse_block`` takes a buffer of whole ``<image_id>\\t<url>\\n`` lines and, with no
Python work per line, finds every line, tells the well-formed from the malformed,
builds the Arrow column over the buffer's own bytes (zero-copy: its line starts
become the offsets) and takes each line's wnid as an integer key.  ``Runs`` adds
the blocks up, in source order, into the run table (where each synset's rows lie);
``Tally`` counts and keeps examples of what was skipped or notable.

Line semantics (lines are bytes, split on ``\\n`` only):

* the image id is everything before the FIRST tab, the URL everything after it
  up to the newline, byte for byte (a URL holding another tab keeps it; such
  lines are counted as ``extra_tabs``, which is information, not an error);
* a line is malformed, and skipped, when it is (first matching kind wins)
  ``empty_line``, has ``no_tab``, an ``empty_id``, a ``bad_id`` (not
  ``n########_<digits>``, ASCII digits only), an ``empty_url``, or is
  ``not_utf8``;
* URLs without an ``http://``/``https://`` scheme are KEPT (the index mirrors
  the list; the downloader refuses them) and counted as ``non_http_url``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

MALFORMED_KINDS = ("empty_line", "no_tab", "empty_id", "bad_id", "empty_url", "not_utf8")
INFO_KINDS = ("extra_tabs", "non_http_url")
MAX_EXAMPLES = 5
EXAMPLE_CHARS = 200
SLACK = 32  # spare bytes after each block so 8- and 16-byte gathers never run off the end

_ID_RE = re.compile(rb"n[0-9]{8}_[0-9]+")  # ASCII digits only, unlike str's \d
# SWAR constants for 8-byte little-endian words.
_HI_NIBBLES = np.uint64(0xF0F0F0F0F0F0F0F0)
_ALL_3S = np.uint64(0x3030303030303030)
_ADD_6S = np.uint64(0x0606060606060606)
_KEEP = np.array([(1 << (8 * c)) - 1 for c in range(9)], dtype=np.uint64)  # low c bytes
_HTTP = np.uint64(int.from_bytes(b"http://\0", "little"))
_HTTPS = np.uint64(int.from_bytes(b"https://", "little"))


@dataclass
class Tally:
    """Counts and examples of malformed and notable lines: of one block, or merged over the run."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MALFORMED_KINDS + INFO_KINDS, 0))
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, number: int, lines: Callable[[], Iterator[bytes]]) -> None:
        if not number:
            return
        self.counts[kind] += number
        kept = self.examples.setdefault(kind, [])
        for line in lines():
            if len(kept) >= MAX_EXAMPLES:
                break
            text = repr(line)
            kept.append(text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 3] + "...")

    def merge(self, other: Tally) -> None:
        """Add a later block's tally (blocks are merged in source order, so examples are too)."""
        for kind, number in other.counts.items():
            self.counts[kind] += number
        for kind, examples in other.examples.items():
            kept = self.examples.setdefault(kind, [])
            kept.extend(examples[: MAX_EXAMPLES - len(kept)])


def _all_digits(words: np.ndarray) -> np.ndarray:
    """True where all 8 bytes of each little-endian word are ASCII digits."""
    return ((words & _HI_NIBBLES) == _ALL_3S) & (((words + _ADD_6S) & _HI_NIBBLES) == _ALL_3S)


def _masked(words: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
    """Replace bytes beyond the first ``nbytes`` of each word with ``'0'``."""
    keep = _KEEP[np.clip(nbytes, 0, 8)]
    return (words & keep) | (_ALL_3S & ~keep)


@dataclass
class Block:
    column: pa.Array  # zero-copy over the block buffer: keep the buffer until it is written
    good: np.ndarray  # bool per line
    keys: np.ndarray  # uint64 per line: the wnid's 8 digit bytes (meaningless where not good)
    lines: int
    urls: int
    tally: Tally


def parse_block(buf: bytearray, end: int) -> Block:
    """Check the lines of ``buf[:end]`` (whole lines); ``buf`` has SLACK more bytes."""
    tally = Tally()
    a = np.frombuffer(buf, dtype=np.uint8, count=end)
    # Overlapping views: words[i] is bytes i..i+7 (pairs[i]: i..i+15), so one gather reads
    # 8 (16) bytes of a line.  As S8/S16 (alignment 1) numpy gathers them about twice as
    # fast as unaligned <u8.
    words = np.ndarray(shape=(len(buf) - 7,), dtype="S8", buffer=buf, strides=(1,))
    pairs = np.ndarray(shape=(len(buf) - 15,), dtype="S16", buffer=buf, strides=(1,))

    def word(at: np.ndarray) -> np.ndarray:
        return words[at].view("<u8")

    special = np.flatnonzero(a <= 10)  # tabs and newlines (and rare control bytes, dropped next)
    kinds = a[special]
    if kinds.min(initial=10) < 9:
        keep = kinds >= 9
        special, kinds = special[keep], kinds[keep]
    nl_k = np.flatnonzero(kinds == 10)
    nl = special[nl_k]
    n = len(nl)
    prev_k = np.empty(n, dtype=np.int64)
    prev_k[:1] = -1
    prev_k[1:] = nl_k[:-1]
    starts = np.empty(n, dtype=np.int64)
    starts[:1] = 0
    starts[1:] = nl[:-1] + 1
    tabs_in_line = nl_k - prev_k - 1
    has_tab = tabs_in_line > 0
    tab = np.where(has_tab, special[np.minimum(prev_k + 1, len(special) - 1)], nl)

    def lines_where(mask: np.ndarray) -> Callable[[], Iterator[bytes]]:
        return lambda: (bytes(buf[starts[i] : nl[i]]) for i in np.flatnonzero(mask)[:MAX_EXAMPLES])

    # Structure first, then the id, then the URL: each bad line is counted once.
    empty_line = nl == starts
    no_tab = ~has_tab & ~empty_line
    id_len = tab - starts
    empty_id = has_tab & (id_len == 0)
    candidate = has_tab & (id_len > 0)

    # Id check without regex (n, 8 digits, _, 1+ digits) on 8-byte words, SWAR style.
    w01 = pairs[starts].view("<u8")
    w0, w1 = w01[0::2], w01[1::2]
    id_ok = candidate & (id_len >= 11) & ((w0 & np.uint64(0xFF)) == ord("n"))
    id_ok &= ((w1 >> np.uint64(8)) & np.uint64(0xFF)) == ord("_")
    id_ok &= _all_digits((w0 & ~np.uint64(0xFF)) | np.uint64(0x30))
    id_ok &= _all_digits(_masked((w1 & ~np.uint64(0xFF00)) | np.uint64(0x3000), id_len - 8))
    longer = np.flatnonzero(id_ok & (id_len > 16))  # more than 6 trailing digits: uncommon
    if len(longer):
        id_ok[longer] &= _all_digits(_masked(word(starts[longer] + 16), id_len[longer] - 16))
        for i in longer[id_len[longer] > 24]:  # rarer still: check the rest the slow way
            id_ok[i] = _ID_RE.fullmatch(buf, starts[i], tab[i]) is not None
    bad_id = candidate & ~id_ok
    empty_url = id_ok & (nl == tab + 1)
    good = id_ok & ~empty_url

    for kind, mask in (
        ("empty_line", empty_line),
        ("no_tab", no_tab),
        ("empty_id", empty_id),
        ("bad_id", bad_id),
        ("empty_url", empty_url),
    ):
        tally.add(kind, int(np.count_nonzero(mask)), lines_where(mask))

    # The column: the block's own bytes, one value per line (newline included).
    offsets = np.empty(n + 1, dtype=np.int32)
    offsets[:n] = starts
    offsets[n] = end
    offsets_buffer = pa.py_buffer(offsets)
    data = pa.py_buffer(buf)
    column = pa.Array.from_buffers(pa.string(), n, [_validity(good), offsets_buffer, data])
    column.validate()  # buffer sizes; the offsets are ascending by construction
    if not _block_is_utf8(data, end):
        try:
            column.validate(full=True)  # UTF-8 of every non-null line, SIMD-fast in Arrow
        except pa.ArrowInvalid:
            # Rare: find the offending lines (they hold bytes >= 0x80) and make them null.
            suspects = np.unique(np.searchsorted(nl, np.flatnonzero(a >= 0x80)))
            bad = [int(i) for i in suspects if good[i] and not _is_utf8(buf, starts[i], nl[i])]
            good[bad] = False
            tally.add("not_utf8", len(bad), lambda: (bytes(buf[starts[i] : nl[i]]) for i in bad))
            column = pa.Array.from_buffers(pa.string(), n, [_validity(good), offsets_buffer, data])
            column.validate(full=True)  # anything else wrong is a bug: let it raise

    rows = np.flatnonzero(good)
    extra = rows[tabs_in_line[rows] > 1]
    tally.add("extra_tabs", len(extra), lambda: (bytes(buf[starts[i] : nl[i]]) for i in extra))
    scheme = word(tab[rows] + 1)
    is_http = ((scheme | np.uint64(0x20202020)) & np.uint64(0x00FFFFFFFFFFFFFF)) == _HTTP
    is_http |= (scheme | np.uint64(0x2020202020)) == _HTTPS
    not_http = rows[~is_http]
    tally.add("non_http_url", len(not_http), lambda: (bytes(buf[starts[i] : nl[i]]) for i in not_http))

    keys = (w0 >> np.uint64(8)) | ((w1 & np.uint64(0xFF)) << np.uint64(56))
    return Block(column, good, keys, n, len(rows), tally)


def _validity(good: np.ndarray) -> pa.Buffer | None:
    return None if good.all() else pa.py_buffer(np.packbits(good, bitorder="little"))


def _block_is_utf8(data: pa.Buffer, end: int) -> bool:
    """Whether ``data[:end]`` is valid UTF-8, checked by Arrow as one string.

    If it is, so is every line of it (a newline never falls inside a multi-byte
    character), and one check of the block costs a fifth of Arrow's line by line.
    """
    offsets = pa.py_buffer(np.array([0, end], dtype=np.int32))
    try:
        pa.Array.from_buffers(pa.string(), 1, [None, offsets, data]).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _is_utf8(buf: bytearray, start: int, stop: int) -> bool:
    try:
        bytes(buf[start:stop]).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def key_to_wnid(key: int) -> str:
    return "n" + int(key).to_bytes(8, "little").decode("ascii")


class Runs:
    """Runs of well-formed rows of one synset, accumulated block by block."""

    def __init__(self) -> None:
        self._starts: list[np.ndarray] = []
        self._stops: list[np.ndarray] = []
        self._keys: list[np.ndarray] = []
        self._open_key: int | None = None  # key of a run still open at the previous block's end
        self.rows = 0  # rows seen, malformed included
        self.urls = 0

    def add(self, block: Block) -> None:
        n = block.lines
        if n == 0:
            return
        good, keys = block.good, block.keys
        # A run breaks where the key changes or a malformed row intervenes.
        cut = np.flatnonzero((keys[1:] != keys[:-1]) | (good[1:] != good[:-1])) + 1
        starts = np.concatenate([[0], cut])
        stops = np.concatenate([cut, [n]])
        keep = good[starts]
        starts, stops = starts[keep], stops[keep]
        run_keys = keys[starts]
        if len(starts) and starts[0] == 0 and self._open_key == int(run_keys[0]):
            self._stops[-1][-1] = self.rows + stops[0]  # the previous block's last run goes on
            starts, stops, run_keys = starts[1:], stops[1:], run_keys[1:]
        if len(starts):  # only non-empty arrays, so _stops[-1][-1] is always the last run
            self._starts.append(starts + self.rows)
            self._stops.append(stops + self.rows)
            self._keys.append(run_keys)
        self._open_key = int(keys[-1]) if good[-1] else None
        self.rows += n
        self.urls += block.urls

    def table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keys, first_row, rows) per run."""
        if not self._starts:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        starts = np.concatenate(self._starts).astype(np.int64)
        stops = np.concatenate(self._stops).astype(np.int64)
        return np.concatenate(self._keys), starts, stops - starts


__all__ = ["INFO_KINDS", "MALFORMED_KINDS", "SLACK", "Block", "Runs", "Tally", "key_to_wnid", "parse_block"]
