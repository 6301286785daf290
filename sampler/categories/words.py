"""ParseSynsets' work: WordNet labels (words.txt) and the category list.

Every problem found is reported at once, naming the wnid or line, so a bad
category list fails the run before a single image is downloaded.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sampler import CONFIG_DIR
from sampler.naming import is_wnid, label_problem, spreadsheet_safe

DET200 = CONFIG_DIR / "det200.csv"  # the ILSVRC2017 detection categories with short names
WORDS_URL = "http://image-net.org/archive/words.txt"  # WordNet labels of every synset

_WORDS_LINE = re.compile(rb"(n\d{8})\t([^\t\r\n]*)\r?")


class SynsetError(ValueError):
    """words.txt or the category list is unusable; the message says why and where."""


@dataclass(frozen=True)
class Category:
    wnid: str
    label: str


def parse_lines(
    data: bytes, line: re.Pattern[bytes], source: str, kind: str, shape: str
) -> list[re.Match[bytes]]:
    """Match every non-blank line of one of ImageNet's text files (words.txt, wordnet.is_a.txt).

    ``kind`` names the file and ``shape`` its lines in the errors.  A few bad lines are
    skipped; an HTML page, more than a handful of bad lines, or no good line at all means
    the file is something else, and fails naming it.
    """
    # A UTF-8 byte order mark (Windows editors add one) would hide the first line's wnid.
    data = data.removeprefix(b"\xef\xbb\xbf")
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        raise SynsetError(f"{source} is an HTML page, not {kind} (a login, error or parking page?)")
    matches: list[re.Match[bytes]] = []
    bad: list[str] = []
    for number, text in enumerate(data.split(b"\n"), start=1):
        if not text.strip():
            continue
        match = line.fullmatch(text)
        if match is None:
            bad.append(f"line {number}: {text[:60]!r}")
        else:
            matches.append(match)
    # The real files have 82,115 and 75,850 clean lines: more than a handful of bad ones
    # means the file is something else.
    if bad and (len(bad) > 10 or len(bad) > len(matches) // 100):
        raise SynsetError(f"{source} does not look like {kind}: {len(bad):,} bad lines, e.g. {bad[0]}")
    if not matches:
        raise SynsetError(f"{source} holds no `{shape}` lines")
    return matches


def parse_words(data: bytes, source: str = "words.txt") -> dict[str, str]:
    """``wnid -> labels`` from words.txt bytes (``wnid<TAB>labels``, last line may lack a newline)."""
    words: dict[str, str] = {}
    for match in parse_lines(data, _WORDS_LINE, source, "words.txt", "wnid<TAB>labels"):
        words.setdefault(match.group(1).decode("ascii"), match.group(2).decode("utf-8", errors="replace"))
    return words


def parse_categories(text: str, source: str = "categories") -> list[Category]:
    """Categories from CSV text ``wnid,label`` (a header row is optional)."""
    categories: list[Category] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if rows and [cell.strip().lower() for cell in rows[0][:2]] == ["wnid", "label"]:
        rows = [[]] + rows[1:]  # keep row numbers equal to line numbers
    for number, row in enumerate(rows, start=1):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) < 2:
            problems.append(f"row {number}: expected `wnid,label`, got {row!r}")
            continue
        wnid, label = row[0].strip(), row[1].strip()
        if not is_wnid(wnid):
            problems.append(f"row {number}: {wnid!r} is not a WordNet id (n followed by 8 digits)")
        elif wnid in seen:
            problems.append(f"row {number}: {wnid} is listed twice (first on row {seen[wnid]})")
        elif not label:
            problems.append(f"row {number}: {wnid} has an empty label")
        elif (why := label_problem(label)) is not None:
            problems.append(f"row {number}: the label of {wnid} {why}")
        else:
            seen[wnid] = number
            categories.append(Category(wnid, label))
    if problems:
        raise SynsetError(f"{source}: " + "; ".join(problems))
    if not categories:
        raise SynsetError(f"{source} lists no categories")
    return categories


def read_categories(path: Path | str) -> list[Category]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SynsetError(f"cannot read the category list {path}: {error.strerror or error}") from error
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise SynsetError(f"{path} is not UTF-8: {error}") from error
    return parse_categories(text, str(path))


def check_categories(
    categories: Sequence[Category], words: Mapping[str, str], url_counts: Mapping[str, int]
) -> None:
    """Fail, naming every offender, when a category is unknown to words.txt or has no URLs."""
    unknown = [c.wnid for c in categories if c.wnid not in words]
    no_urls = [c.wnid for c in categories if c.wnid in words and url_counts.get(c.wnid, 0) == 0]
    problems = []
    if unknown:
        problems.append(f"unknown to words.txt: {', '.join(unknown)}")
    if no_urls:
        problems.append(f"absent from the URL list: {', '.join(no_urls)}")
    if problems:
        raise SynsetError("bad categories: " + "; ".join(problems))


def write_category_table(
    categories: Sequence[Category], words: Mapping[str, str], url_counts: Mapping[str, int], path: Path
) -> None:
    """The checked categories with their WordNet labels and URL counts (``wnid,label,words,urls``)."""
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["wnid", "label", "words", "urls"])
        for category in categories:
            row = [category.wnid, category.label, words[category.wnid], url_counts[category.wnid]]
            writer.writerow([spreadsheet_safe(cell) for cell in row])  # words.txt may come from anywhere


def read_category_table(path: Path) -> list[Category]:
    with path.open(encoding="utf-8", newline="") as src:
        return [Category(row["wnid"], row["label"]) for row in csv.DictReader(src)]
