"""Reading the index: ``UrlIndex`` memory-maps an index directory and reads only the rows asked for.

The files are those of ``sampler.index.layout``; ``sampler.index.stream`` writes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from sampler.index.layout import FORMAT_KEY, FORMAT_VERSION, RUNS_FILE, URLS_FILE, UrlListError


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
        starts: np.ndarray = (
            np.flatnonzero(np.concatenate([[True], wnids[1:] != wnids[:-1]]))
            if len(wnids)
            else np.zeros(0, dtype=np.int64)
        )
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
            metadata = reader.schema.metadata or {}
            if metadata.get(FORMAT_KEY.encode()) != FORMAT_VERSION.encode():
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
    parts: list[np.ndarray] = []
    for chunk in column.chunks:
        _, offsets_buffer, data = chunk.buffers()
        width = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
        offsets = np.frombuffer(offsets_buffer, dtype=width)[chunk.offset : chunk.offset + len(chunk) + 1]
        if chunk.null_count or (len(chunk) and not (np.diff(offsets) == 9).all()):
            raise UrlListError("runs.arrow: every wnid must be 9 characters")
        if len(chunk):
            parts.append(np.frombuffer(data, dtype="S9", count=len(chunk), offset=int(offsets[0])))
    return np.concatenate(parts) if parts else np.zeros(0, dtype="S9")


__all__ = ["UrlIndex", "UrlListError"]
