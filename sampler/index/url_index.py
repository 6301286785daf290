"""An index of ImageNet's URL list, built in one streaming pass over the tarball.

``imagenet_fall11_urls.tgz`` holds one member, ``fall11_urls.txt``: 14.2 million
``<image_id>\\t<url>\\n`` lines (1.13 GB), grouped by synset.  Extracting it to
disk and scanning it with the csv module takes about 30 s; loading it whole and
sorting costs gigabytes.  Here a reader thread decompresses the tarball with
ISA-L and cuts the member into ~2 MB blocks at line ends; two parser threads
check all lines of a block at once with numpy (no Python work per line); and
a writer thread appends each block to an uncompressed Arrow IPC file *as it is*:
the block's bytes become the column's data buffer, its line starts the
offsets, so nothing is copied.  A small run table says where each synset's rows
lie, so a reader memory-maps the file and touches only the rows it asks for.

On-disk layout of an index directory::

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

import json
import os
import queue
import re
import tarfile
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

import isal.igzip
import numpy as np
import pyarrow as pa

from sampler.progress import ProgressCallback, human_bytes, no_progress

MEMBER_NAME = "fall11_urls.txt"
URLS_FILE = "urls.arrow"
RUNS_FILE = "runs.arrow"
COUNTS_FILE = "counts.csv"
REPORT_FILE = "report.json"
FORMAT_VERSION = "1"

MALFORMED_KINDS = ("empty_line", "no_tab", "empty_id", "bad_id", "empty_url", "not_utf8")
INFO_KINDS = ("extra_tabs", "non_http_url")
MAX_EXAMPLES = 5
EXAMPLE_CHARS = 200

# ~25k lines.  Small enough that a block is still in the CPU caches while it is decompressed,
# parsed (several passes) and written: parsing costs ~30% less CPU per byte than with 16 MB
# blocks, and a whole build ~35% less CPU (measured: 3.6 against 5.8 CPU seconds at full
# scale).  Large enough that per-block Python overhead stays small (~560 blocks).
BLOCK_BYTES = 2 << 20
MAX_LINE_BYTES = 64 << 20  # a "line" this long means the member is not a URL list at all
_SLACK = 32  # spare bytes after each block so 8- and 16-byte gathers never run off the end
_DEPTH = 8  # blocks decompressed ahead of the parsers
_PARSERS = 2  # blocks parsed at once (numpy releases the GIL for most of the work)
_WRITE_DEPTH = 4  # parsed blocks waiting for the writer
# Every block buffer is in one of: being filled, queued for the parsers, being
# parsed, queued for the writer, being written.  A buffer returns to the pool
# only once written, because the Arrow column points straight into it.
_POOL = 1 + _DEPTH + _PARSERS + _WRITE_DEPTH + 1

SCHEMA = pa.schema(
    [pa.field("line", pa.string(), nullable=True)],
    metadata={"sampler.index.url_index": FORMAT_VERSION},
)
RUNS_SCHEMA = pa.schema(
    [
        pa.field("wnid", pa.string(), nullable=False),
        pa.field("first_row", pa.int64(), nullable=False),
        pa.field("rows", pa.int64(), nullable=False),
    ]
)

_ID_RE = re.compile(rb"n[0-9]{8}_[0-9]+")  # ASCII digits only, unlike str's \d
# SWAR constants for 8-byte little-endian words.
_HI_NIBBLES = np.uint64(0xF0F0F0F0F0F0F0F0)
_ALL_3S = np.uint64(0x3030303030303030)
_ADD_6S = np.uint64(0x0606060606060606)
_KEEP = np.array([(1 << (8 * c)) - 1 for c in range(9)], dtype=np.uint64)  # low c bytes
_HTTP = np.uint64(int.from_bytes(b"http://\0", "little"))
_HTTPS = np.uint64(int.from_bytes(b"https://", "little"))


class UrlListError(Exception):
    """The tarball is not a readable URL list (not gzip, truncated, wrong members...)."""


# --------------------------------------------------------------------------- parsing one block


@dataclass
class _Tally:
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

    def merge(self, other: _Tally) -> None:
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
class _Block:
    column: pa.Array  # zero-copy over the block buffer: keep the buffer until it is written
    good: np.ndarray  # bool per line
    keys: np.ndarray  # uint64 per line: the wnid's 8 digit bytes (meaningless where not good)
    lines: int
    urls: int
    tally: _Tally


def _parse_block(buf: bytearray, end: int) -> _Block:
    """Check the lines of ``buf[:end]`` (whole lines); ``buf`` has _SLACK more bytes."""
    tally = _Tally()
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
    return _Block(column, good, keys, n, len(rows), tally)


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


def _key_to_wnid(key: int) -> str:
    return "n" + int(key).to_bytes(8, "little").decode("ascii")


class _Runs:
    """Runs of well-formed rows of one synset, accumulated block by block."""

    def __init__(self) -> None:
        self._starts: list[np.ndarray] = []
        self._stops: list[np.ndarray] = []
        self._keys: list[np.ndarray] = []
        self._open_key: int | None = None  # key of a run still open at the previous block's end
        self.rows = 0  # rows seen, malformed included
        self.urls = 0

    def add(self, block: _Block) -> None:
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


# --------------------------------------------------------------------------- reading the tarball


class _CountingReader:
    """A read-only file wrapper that counts the bytes consumed (for progress and tar bookkeeping)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.consumed += len(data)
        return data

    def readinto(self, buffer: memoryview) -> int:
        n = self._raw.readinto(buffer) or 0
        self.consumed += n
        return n

    def readable(self) -> bool:
        return True

    def close(self) -> None:  # the caller owns the wrapped file
        pass

    @property
    def closed(self) -> bool:
        return False


class _Closed(Exception):
    """The pool was closed because the run is being abandoned."""


class _BufferPool:
    """Block buffers, recycled: fresh objects per block cost more in page faults than parsing."""

    def __init__(self, size: int) -> None:
        self._free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(size):
            self._free.put(bytearray(0))
        self._closed = threading.Event()

    def get(self, min_size: int) -> bytearray:
        while True:
            if self._closed.is_set():
                raise _Closed
            try:
                buf = self._free.get(timeout=0.1)
                break
            except queue.Empty:
                continue
        return buf if len(buf) >= min_size else bytearray(min_size)

    def put(self, buf: bytearray) -> None:
        self._free.put(buf)

    def close(self) -> None:
        self._closed.set()


@dataclass
class _Chunk:
    buf: bytearray  # whole lines in buf[:end], then at least _SLACK more bytes
    end: int
    read: int  # member bytes read so far
    consumed: int  # compressed bytes read so far


@dataclass
class _MemberEnd:
    final_newline: bool


def _member_blocks(
    tarball: Path, counter: _CountingReader, pool: _BufferPool
) -> Iterator[tarfile.TarInfo | _Chunk | _MemberEnd]:
    """Yield the member's TarInfo, then line-aligned blocks of it, then a _MemberEnd.

    Errors reading the tarball become ``UrlListError`` here, so that errors
    elsewhere (say, a full disk while writing) keep their own type and message.
    """
    try:
        yield from _read_member(tarball, counter, pool)
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        raise _stream_error(tarball, exc) from exc


def _read_member(
    tarball: Path, counter: _CountingReader, pool: _BufferPool
) -> Iterator[tarfile.TarInfo | _Chunk | _MemberEnd]:
    with isal.igzip.open(counter, "rb") as gz:
        # tarfile reads headers through a counter in 512-byte steps, so once it has
        # found the member we know exactly where the data starts and can read it
        # straight from the decompressor into our buffers, without tarfile's copies.
        position = _CountingReader(gz)
        tar = tarfile.open(fileobj=position, mode="r|", bufsize=tarfile.BLOCKSIZE)
        seen: list[str] = []
        member = None
        for info in tar:
            if info.isfile() and Path(info.name).name == MEMBER_NAME:
                member = info
                break
            seen.append(info.name)
        if member is None:
            found = ", ".join(repr(name) for name in seen[:20]) + (" ..." if len(seen) > 20 else "")
            raise UrlListError(
                f"{tarball} has no member {MEMBER_NAME!r}; members found: {found or 'none (empty archive)'}"
            )
        yield member
        if position.consumed == member.offset_data:
            readinto = gz.readinto
        else:  # an unusual header layout: let tarfile do the reading (slower, same bytes)
            source = tar.extractfile(member)
            assert source is not None  # a regular file always has data
            readinto = source.readinto

        carry = b""  # the unfinished last line of the previous block
        left = member.size
        final_newline = True
        while True:
            buf = pool.get(len(carry) + BLOCK_BYTES + 1 + _SLACK)
            buf[: len(carry)] = carry
            filled = len(carry)
            want = min(BLOCK_BYTES, left)
            with memoryview(buf) as view:
                while want:
                    n = readinto(view[filled : filled + want])
                    if not n:
                        raise EOFError(f"{MEMBER_NAME} ends {left:,} bytes before its declared size")
                    filled += n
                    want -= n
                    left -= n
            last = left == 0
            end = buf.rfind(b"\n", 0, filled) + 1
            if last and end < filled:
                buf[filled] = 10  # the last line without a newline is still a line
                filled += 1
                end = filled
                final_newline = False
            if end == 0:  # no line end in the whole buffer
                carry = bytes(buf[:filled])
                pool.put(buf)
                if last:
                    break
                if filled > MAX_LINE_BYTES:
                    raise UrlListError(
                        f"{tarball}: {MEMBER_NAME} has a line longer than "
                        f"{human_bytes(MAX_LINE_BYTES)}: not a URL list"
                    )
                continue
            carry = bytes(buf[end:filled])
            yield _Chunk(buf, end, member.size - left, counter.consumed)
            if last:
                break
        yield _MemberEnd(final_newline)
        # Read to the end so the gzip CRC and length are checked: a tarball cut short
        # after the member's data must not pass.
        while gz.read(1 << 20):
            pass


_T = TypeVar("_T")


def _in_background(
    items: Iterator[_T], depth: int, name: str, on_stop: Callable[[], None] = lambda: None
) -> Iterator[_T]:
    """Run the iterator ``items`` in a thread, ``depth`` items ahead; re-raise its errors here.

    ``on_stop`` is called when the consumer stops early, to release whatever else
    the thread may be waiting for.
    """
    handoff: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    finished = object()

    def put(entry: tuple[bool, object]) -> bool:
        while not stop.is_set():
            try:
                handoff.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, finished))
        except _Closed:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed over to the consuming thread
            put((False, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=run, name=name, daemon=True)
    worker.start()
    try:
        while True:
            ok, item = handoff.get()
            if not ok:
                raise item  # type: ignore[misc]
            if item is finished:
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        on_stop()
        worker.join()


class _BackgroundWriter:
    """Writes record batches from a thread, then recycles their buffers."""

    def __init__(self, writer: pa.ipc.RecordBatchFileWriter, pool: _BufferPool) -> None:
        self._writer = writer
        self._pool = pool
        self._queue: queue.Queue = queue.Queue(_WRITE_DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="url-index-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is None:
                return
            batch, buf = entry
            if self._error is None and batch is not None:
                try:
                    self._writer.write_batch(batch)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                    self._error = exc
            del batch, entry  # drop the column's hold on the buffer before recycling it
            self._pool.put(buf)

    def write(self, batch: pa.RecordBatch | None, buf: bytearray) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((batch, buf))

    def close(self) -> None:
        """Wait for every batch to be written; re-raise a write error."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def _stream_error(tarball: Path, exc: BaseException) -> UrlListError:
    text = str(exc)
    if isinstance(exc, EOFError) or "unexpected end" in text or "ended before" in text:
        why = "it ends early (truncated download?)"
    elif "gzip" in text.lower() or isinstance(exc, zlib.error):
        why = "it is not a valid gzip file"
    else:
        why = "it is not a readable .tgz"
    return UrlListError(f"cannot read {tarball}: {why}: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- building


def _wnid_column(wnids: np.ndarray) -> pa.Array:
    """A string column over an ``S9`` array of wnids, without a Python object per value."""
    step = wnids.dtype.itemsize
    large = step * len(wnids) >= 2**31
    offsets = np.arange(0, step * len(wnids) + 1, step, dtype=np.int64 if large else np.int32)
    kind = pa.large_string() if large else pa.string()
    return pa.Array.from_buffers(kind, len(wnids), [None, pa.py_buffer(offsets), pa.py_buffer(wnids)])


def _int64_column(values: np.ndarray) -> pa.Array:
    # Not pa.array(values): converting from numpy imports pandas, half a second.
    data = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(data), [None, pa.py_buffer(data)])


def _write_runs(runs: _Runs, out_dir: Path) -> tuple[list[tuple[str, int]], int, bool]:
    """Write runs.arrow (sorted by wnid, then source order) and counts.csv.

    Returns the counts, the number of runs, and whether the input was grouped:
    each synset's rows contiguous, apart from malformed lines among them.
    """
    keys, first_rows, run_rows = runs.table()
    uniq, inverse = np.unique(keys, return_inverse=True)
    grouped = int(np.count_nonzero(keys[1:] != keys[:-1])) + 1 == len(uniq) if len(keys) else True
    names = np.array([_key_to_wnid(k).encode("ascii") for k in uniq], dtype="S9")
    by_name = np.argsort(names, kind="stable")  # uint64 keys do not sort like the names
    rank = np.empty_like(by_name)
    rank[by_name] = np.arange(len(by_name))
    run_rank = rank[inverse]
    order = np.argsort(run_rank, kind="stable")  # a synset's runs together, in source order
    sorted_names = names[by_name]
    per_synset = np.zeros(len(uniq), dtype=np.int64)
    np.add.at(per_synset, run_rank, run_rows)
    wnid_column = _wnid_column(np.ascontiguousarray(sorted_names[run_rank[order]]))
    run_table = pa.Table.from_arrays(
        [wnid_column, _int64_column(first_rows[order]), _int64_column(run_rows[order])],
        schema=RUNS_SCHEMA.set(0, pa.field("wnid", wnid_column.type, nullable=False)),
    )
    with pa.OSFile(str(out_dir / RUNS_FILE), "wb") as sink, pa.ipc.new_file(sink, run_table.schema) as writer:
        writer.write_table(run_table)
    counts = [(name.decode("ascii"), int(n)) for name, n in zip(sorted_names, per_synset, strict=True)]
    with open(out_dir / COUNTS_FILE, "w", encoding="utf-8", newline="") as f:
        f.write("wnid,urls\n")
        f.writelines(f"{w},{c}\n" for w, c in counts)
    return counts, len(order), grouped


def _parse_stream(
    items: Iterator[tarfile.TarInfo | _Chunk | _MemberEnd],
    pool: _BufferPool,
    compressed_size: int,
    writer: _BackgroundWriter,
    tally: _Tally,
    runs: _Runs,
    progress: ProgressCallback,
) -> tuple[tarfile.TarInfo, bool]:
    """Parse blocks as the reader thread delivers them; return (member, final_newline).

    Blocks are parsed two at a time but their results are taken in source order,
    so runs, examples and the file are the same as with one parser.
    """
    member: tarfile.TarInfo | None = None
    final_newline = True
    pending: deque[tuple[_Chunk, Future[_Block]]] = deque()

    def finish_oldest() -> None:
        chunk, future = pending.popleft()
        block = future.result()
        tally.merge(block.tally)
        runs.add(block)
        writer.write(pa.RecordBatch.from_arrays([block.column], schema=SCHEMA), chunk.buf)
        assert member is not None  # the reader yields the member first
        progress(
            min(99.9, 100.0 * chunk.consumed / compressed_size),
            f"{runs.rows:,} lines, {human_bytes(chunk.read)} of {human_bytes(member.size)}",
        )

    blocks = _in_background(items, _DEPTH, "url-index-reader", on_stop=pool.close)
    # closing(): on an error here, stop the reader thread now, not whenever the
    # generator happens to be garbage-collected.
    with ThreadPoolExecutor(_PARSERS, thread_name_prefix="url-index-parser") as parsers, closing(blocks):
        for item in blocks:
            if isinstance(item, tarfile.TarInfo):
                member = item
                progress(0.0, f"reading {member.name} ({human_bytes(member.size)})")
            elif isinstance(item, _MemberEnd):
                final_newline = item.final_newline
            else:
                pending.append((item, parsers.submit(_parse_block, item.buf, item.end)))
                if len(pending) >= _PARSERS:
                    finish_oldest()
        while pending:
            finish_oldest()
    assert member is not None
    return member, final_newline


def build_url_index(
    tarball: Path,
    out_dir: Path,
    *,
    progress: ProgressCallback = no_progress,
    expected_lines: int | None = None,
    expected_bytes: int | None = None,
) -> dict:
    """Stream ``tarball`` once and write the index files into ``out_dir``; return the report.

    The report (also written as ``report.json``) holds: ``source``, ``member``,
    ``lines`` (a last line without newline included), ``bytes`` (member size),
    ``final_newline``, ``synsets``, ``urls`` (well-formed lines), ``runs``,
    ``grouped``, ``malformed`` ({kind: count}, every kind present),
    ``malformed_total``, ``malformed_examples`` ({kind: [repr, ...]}, at most 5),
    ``info`` ({extra_tabs, non_http_url}), ``info_examples``,
    ``non_http_urls_kept``, ``seconds``, and, when ``expected_lines`` or
    ``expected_bytes`` is given, ``expected``, ``matches_published`` and
    ``warning`` (``None`` when everything matches).

    Raises ``UrlListError`` when the file is not a gzip, is truncated, or has no
    ``fall11_urls.txt`` member.
    """
    t0 = time.perf_counter()
    tarball, out_dir = Path(tarball), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tally = _Tally()
    runs = _Runs()
    pool = _BufferPool(_POOL)
    try:
        raw_file = open(tarball, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as exc:
        raise UrlListError(f"cannot open {tarball}: {exc}") from exc
    try:
        compressed_size = max(1, os.fstat(raw_file.fileno()).st_size)
        counter = _CountingReader(raw_file)
        with pa.OSFile(str(out_dir / URLS_FILE), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
            # Three threads: decompression (ISA-L releases the GIL), parsing here (numpy,
            # which mostly releases it too) and writing (the kernel's page-cache work).
            writer_thread = _BackgroundWriter(writer, pool)
            try:
                blocks = _member_blocks(tarball, counter, pool)
                member, final_newline = _parse_stream(
                    blocks, pool, compressed_size, writer_thread, tally, runs, progress
                )
            finally:
                pool.close()
                writer_thread.close()
    finally:
        raw_file.close()

    counts, run_count, grouped = _write_runs(runs, out_dir)

    malformed = {k: tally.counts[k] for k in MALFORMED_KINDS}
    report: dict = {
        "source": str(tarball),
        "member": member.name,
        "lines": runs.rows,
        "bytes": member.size,
        "final_newline": final_newline,
        "synsets": len(counts),
        "urls": runs.urls,
        "runs": run_count,
        "grouped": grouped,
        "malformed": malformed,
        "malformed_total": sum(malformed.values()),
        "malformed_examples": {k: tally.examples[k] for k in MALFORMED_KINDS if k in tally.examples},
        "info": {k: tally.counts[k] for k in INFO_KINDS},
        "info_examples": {k: tally.examples[k] for k in INFO_KINDS if k in tally.examples},
        "non_http_urls_kept": True,
    }
    if expected_lines is not None or expected_bytes is not None:
        report["expected"] = {"lines": expected_lines, "bytes": expected_bytes}
        problems = []
        if expected_lines is not None and runs.rows != expected_lines:
            problems.append(f"{runs.rows:,} lines where {expected_lines:,} were published")
        if expected_bytes is not None and member.size != expected_bytes:
            problems.append(f"{member.size:,} bytes where {expected_bytes:,} were published")
        report["matches_published"] = not problems
        report["warning"] = (
            f"{MEMBER_NAME} differs from the published list: " + "; ".join(problems) if problems else None
        )
    report["seconds"] = round(time.perf_counter() - t0, 3)
    with open(out_dir / REPORT_FILE, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
        f.write("\n")
    progress(100.0, f"{runs.rows:,} lines, {runs.urls:,} URLs of {len(counts):,} synsets")
    return report


# --------------------------------------------------------------------------- reading the index


class UrlIndex:
    """Read access to an index directory; only the rows asked for are read (memory-mapped)."""

    def __init__(
        self,
        directory: Path,
        lines: pa.ChunkedArray,
        wnids: np.ndarray,
        first_rows: np.ndarray,
        rows: np.ndarray,
    ) -> None:
        self.directory = directory
        self._lines = lines
        self._first_rows = first_rows
        self._run_rows = rows
        # Runs are sorted by wnid: one (start, stop) range of runs per synset.
        starts = np.flatnonzero(np.concatenate([[True], wnids[1:] != wnids[:-1]])) if len(wnids) else []
        stops = [*list(starts[1:]), len(wnids)] if len(wnids) else []
        names = [w.decode("ascii") for w in wnids[starts]]
        self._spans = {name: (int(a), int(b)) for name, a, b in zip(names, starts, stops, strict=True)}
        totals = np.add.reduceat(rows, starts).tolist() if len(wnids) else []
        self._counts = dict(zip(names, totals, strict=True))

    @classmethod
    def open(cls, out_dir: Path) -> UrlIndex:
        """Open an index directory written by ``build_url_index``."""
        directory = Path(out_dir)
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(directory / URLS_FILE), "r"))
            version = (reader.schema.metadata or {}).get(b"sampler.index.url_index")
            if version != FORMAT_VERSION.encode():
                raise UrlListError(f"{directory / URLS_FILE}: not a URL index of format {FORMAT_VERSION}")
            # Zero-copy: the table's buffers point into the mapping; pages load on access.
            lines = reader.read_all().column("line")
            with pa.memory_map(str(directory / RUNS_FILE), "r") as runs_source:
                runs_table = pa.ipc.open_file(runs_source).read_all()
            wnids = _wnids_of(runs_table.column("wnid"))
            first_rows = _int64s_of(runs_table.column("first_row"))
            rows = _int64s_of(runs_table.column("rows"))
        except (OSError, KeyError, pa.ArrowInvalid) as exc:
            raise UrlListError(f"{directory} is not a readable URL index: {exc}") from exc
        if len(wnids) > 1 and not (wnids[1:] >= wnids[:-1]).all():
            order = np.argsort(wnids, kind="stable")
            wnids, first_rows, rows = wnids[order], first_rows[order], rows[order]
        return cls(directory, lines, wnids, first_rows, rows)

    def count(self, wnid: str) -> int:
        """URLs of ``wnid`` (0 for a synset that is not in the list)."""
        return self._counts.get(wnid, 0)

    @property
    def counts(self) -> dict[str, int]:
        """URLs per synset, sorted by wnid."""
        return dict(self._counts)

    def rows(self, wnid: str, positions: Sequence[int] | None = None) -> list[tuple[str, str]]:
        """(image_id, url) of ``wnid``: all in source order, or only ``positions`` in the order given.

        Positions index the synset's own rows in source order (0 .. count-1); an
        out-of-range one raises IndexError.  An unknown wnid has no rows.
        """
        lines: list[str] = []
        start, stop = self._spans.get(wnid, (0, 0))
        for first, n in zip(
            self._first_rows[start:stop].tolist(), self._run_rows[start:stop].tolist(), strict=True
        ):
            # Only this run's slice of the memory map is read.
            lines.extend(self._lines.slice(first, n).to_pylist())
        if positions is not None:
            total = len(lines)
            picked = []
            for p in positions:
                if not 0 <= p < total:
                    raise IndexError(f"position {p} out of range for {wnid} ({total} URLs)")
                picked.append(lines[p])
            lines = picked
        out = []
        for line in lines:
            image_id, url = line.split("\t", 1)
            out.append((image_id, url[:-1]))  # drop the newline kept in the column
        return out


def _int64s_of(column: pa.ChunkedArray) -> np.ndarray:
    """An int64 column as numpy, from its buffers (Arrow's to_numpy imports pandas: +0.5 s)."""
    parts = [
        np.frombuffer(chunk.buffers()[1], dtype=np.int64)[chunk.offset : chunk.offset + len(chunk)]
        for chunk in column.chunks
        if len(chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _wnids_of(column: pa.ChunkedArray) -> np.ndarray:
    """The wnid column as an ``S9`` numpy array, read from its buffers (no Python object per run)."""
    parts = []
    for chunk in column.chunks:
        _, offsets_buffer, data = chunk.buffers()
        width = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
        offsets = np.frombuffer(offsets_buffer, dtype=width)[chunk.offset : chunk.offset + len(chunk) + 1]
        if chunk.null_count or (len(chunk) and not (np.diff(offsets) == 9).all()):
            raise UrlListError("runs.arrow: every wnid must be 9 characters")
        start = int(offsets[0]) if len(offsets) else 0
        parts.append(np.frombuffer(data, dtype="S9", count=len(chunk), offset=start) if len(chunk) else None)
    parts = [p for p in parts if p is not None]
    return np.concatenate(parts) if parts else np.zeros(0, dtype="S9")


__all__ = [
    "INFO_KINDS",
    "MALFORMED_KINDS",
    "MEMBER_NAME",
    "UrlIndex",
    "UrlListError",
    "build_url_index",
]
