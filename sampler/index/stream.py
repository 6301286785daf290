"""Building the index: one streaming pass over the tarball, three threads, ``build_url_index``.

``imagenet_fall11_urls.tgz`` holds one member, ``fall11_urls.txt``: 14.2 million
``<image_id>\\t<url>\\n`` lines (1.13 GB), grouped by synset.  Extracting it to
disk and scanning it with the csv module takes about 30 s; loading it whole and
sorting costs gigabytes.  Here a reader thread decompresses the tarball with
ISA-L and cuts the member into ~2 MB blocks at line ends; two parser threads
check all lines of a block at once with numpy (``sampler.index.parse``, no
Python work per line); and a writer thread appends each block to an uncompressed
Arrow IPC file *as it is*: the block's bytes become the column's data buffer,
its line starts the offsets, so nothing is copied.  A small run table says where
each synset's rows lie, so a reader (``sampler.index.read``) memory-maps the file
and touches only the rows it asks for.  The files are described in
``sampler.index.layout``.
"""

from __future__ import annotations

import json
import os
import queue
import tarfile
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import isal.igzip
import numpy as np
import pyarrow as pa

from sampler.download import URL_LIST_MEMBER
from sampler.index.layout import (
    COUNTS_FILE,
    REPORT_FILE,
    RUNS_FILE,
    RUNS_SCHEMA,
    SCHEMA,
    URLS_FILE,
    UrlListError,
)
from sampler.index.parse import (
    INFO_KINDS,
    MALFORMED_KINDS,
    SLACK,
    Block,
    Runs,
    Tally,
    key_to_wnid,
    parse_block,
)
from sampler.progress import ProgressCallback, human_bytes, no_progress

# ~25k lines.  Small enough that a block is still in the CPU caches while it is decompressed,
# parsed (several passes) and written: parsing costs ~30% less CPU per byte than with 16 MB
# blocks, and a whole build ~35% less CPU (measured: 3.6 against 5.8 CPU seconds at full
# scale).  Large enough that per-block Python overhead stays small (~560 blocks).
BLOCK_BYTES = 2 << 20
MAX_LINE_BYTES = 64 << 20  # a "line" this long means the member is not a URL list at all
_DEPTH = 8  # blocks decompressed ahead of the parsers
_PARSERS = 2  # blocks parsed at once (numpy releases the GIL for most of the work)
_WRITE_DEPTH = 4  # parsed blocks waiting for the writer
# Every block buffer is in one of: being filled, queued for the parsers, being
# parsed, queued for the writer, being written.  A buffer returns to the pool
# only once written, because the Arrow column points straight into it.
_POOL = 1 + _DEPTH + _PARSERS + _WRITE_DEPTH + 1


class _Source(Protocol):
    """What ``_CountingReader`` wraps: a binary file, or the decompressor reading one."""

    def read(self, size: int = -1, /) -> bytes: ...

    def readinto(self, buffer: memoryview, /) -> int | None: ...


class _CountingReader:
    """A read-only file wrapper that counts the bytes consumed (for progress and tar bookkeeping)."""

    def __init__(self, raw: _Source) -> None:
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
    buf: bytearray  # whole lines in buf[:end], then at least SLACK more bytes
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
        # Stream mode only reads; typeshed's fileobj protocol also asks for write and seek.
        tar = tarfile.open(fileobj=position, mode="r|", bufsize=tarfile.BLOCKSIZE)  # type: ignore[call-overload]
        seen: list[str] = []
        member = None
        for info in tar:
            if info.isfile() and Path(info.name).name == URL_LIST_MEMBER:
                member = info
                break
            seen.append(info.name)
        if member is None:
            found = ", ".join(repr(name) for name in seen[:20]) + (" ..." if len(seen) > 20 else "")
            raise UrlListError(
                f"{tarball} has no member {URL_LIST_MEMBER!r}; "
                f"members found: {found or 'none (empty archive)'}"
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
            buf = pool.get(len(carry) + BLOCK_BYTES + 1 + SLACK)
            buf[: len(carry)] = carry
            filled = len(carry)
            want = min(BLOCK_BYTES, left)
            with memoryview(buf) as view:
                while want:
                    n = readinto(view[filled : filled + want])
                    if not n:
                        raise EOFError(f"{URL_LIST_MEMBER} ends {left:,} bytes before its declared size")
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
                        f"{tarball}: {URL_LIST_MEMBER} has a line longer than "
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
) -> Generator[_T, None, None]:
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
        except BaseException as exc:  # handed over to the consuming thread
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
                raise item
            if item is finished:
                return
            yield item
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
                except BaseException as exc:  # re-raised in the calling thread
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


def _write_runs(runs: Runs, out_dir: Path) -> tuple[list[tuple[str, int]], int, bool]:
    """Write runs.arrow (sorted by wnid, then source order) and counts.csv.

    Returns the counts, the number of runs, and whether the input was grouped:
    each synset's rows contiguous, apart from malformed lines among them.
    """
    keys, first_rows, run_rows = runs.table()
    uniq, inverse = np.unique(keys, return_inverse=True)
    grouped = int(np.count_nonzero(keys[1:] != keys[:-1])) + 1 == len(uniq) if len(keys) else True
    names = np.array([key_to_wnid(k).encode("ascii") for k in uniq], dtype="S9")
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
    tally: Tally,
    runs: Runs,
    progress: ProgressCallback,
) -> tuple[tarfile.TarInfo, bool]:
    """Parse blocks as the reader thread delivers them; return (member, final_newline).

    Blocks are parsed two at a time but their results are taken in source order,
    so runs, examples and the file are the same as with one parser.
    """
    member: tarfile.TarInfo | None = None
    final_newline = True
    pending: deque[tuple[_Chunk, Future[Block]]] = deque()

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
                pending.append((item, parsers.submit(parse_block, item.buf, item.end)))
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
    tally = Tally()
    runs = Runs()
    pool = _BufferPool(_POOL)
    try:
        raw_file = open(tarball, "rb")  # closed in the finally below
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
            f"{URL_LIST_MEMBER} differs from the published list: " + "; ".join(problems) if problems else None
        )
    report["seconds"] = round(time.perf_counter() - t0, 3)
    with open(out_dir / REPORT_FILE, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
        f.write("\n")
    progress(100.0, f"{runs.rows:,} lines, {runs.urls:,} URLs of {len(counts):,} synsets")
    return report


__all__ = ["build_url_index"]
