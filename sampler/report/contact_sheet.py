"""The contact sheet: every kept image as a labelled thumbnail, one row per category.

One JPEG a person can scroll through to judge the whole sample at a glance: the
label and wnid start each row, then the category's kept images in manifest
order, then one marked "missing" box per image the category is short of.  Up to
CATEGORIES_PER_SHEET categories (every set up to DET-200) this is one file,
``contact_sheet.jpg``; beyond that, numbered sheets of at most that many
categories in a folder, ``contact_sheet/sheet-001.jpg``..., drawn one at a time
so that a 1000-category run never holds a 1000-row image in memory.  The
thumbnail helpers here are shared with the gallery.
"""

from __future__ import annotations

import logging
import math
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from sampler.atomic import atomic_path
from sampler.categories.words import Category
from sampler.naming import unsafe_char
from sampler.progress import ProgressCallback, no_progress

# Pillow is imported where it is used: tasks.report imports THUMB_HEIGHT from here for a
# parameter default, and every luigi command (even --help) would otherwise load it.
if TYPE_CHECKING:
    from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

THUMB_HEIGHT = 96
ORIENTATION_TAG = 0x0112  # EXIF: how the camera was held
MAX_JPEG_SIDE = 65_500  # the JPEG format's limit is 65,535 px per side
MAX_SHEET_PIXELS = 80_000_000  # ~240 MB of RGB while drawing; beyond this thumbnails shrink
MIN_THUMB_HEIGHT = 24
# DET-200 (the default) stays one sheet, as before; at 5 per category a sheet is ~1,100 x 25,000 px.
CATEGORIES_PER_SHEET = 200

BACKGROUND = (255, 255, 255)
STRIPE = (244, 245, 247)  # every other row, so a row's images are easy to follow
TEXT = (20, 20, 20)
MUTED = (110, 110, 110)
MISSING_FILL = (253, 236, 236)
MISSING_LINE = (200, 40, 40)
UNREADABLE_FILL = (255, 243, 224)
UNREADABLE_LINE = (210, 120, 0)


@dataclass
class CategoryImages:
    """One category's kept images (manifest rows, in order) and how many it is short of."""

    wnid: str
    label: str
    images: list[Mapping[str, str]] = field(default_factory=list)
    missing: int = 0


def group_by_category(
    categories: Sequence[Category], rows: Sequence[Mapping[str, str]], per_category: int
) -> list[CategoryImages]:
    """Manifest rows grouped by category, in category-list order.

    A category with no kept image has no manifest row, so the category list, not
    the manifest, decides which rows exist; a wnid only the manifest knows is
    appended rather than silently dropped.
    """
    groups: dict[str, CategoryImages] = {c.wnid: CategoryImages(c.wnid, c.label) for c in categories}
    for row in rows:
        wnid = row.get("wnid", "")
        if wnid not in groups:
            groups[wnid] = CategoryImages(wnid, row.get("label", ""))
        groups[wnid].images.append(row)
    for group in groups.values():
        group.missing = max(0, per_category - len(group.images))
    return list(groups.values())


def load_thumbnail(path: Path, box: tuple[int, int]) -> Image.Image | None:
    """An RGB thumbnail of ``path`` that fits in ``box``; None when Pillow cannot read it.

    EXIF orientation is applied so thumbnails look like the full image does in a browser.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as opened:
            image: Image.Image = opened
            # JPEG DCT scaling decodes at 1/2..1/8 size, never below the box (square: EXIF may rotate).
            image.draft("RGB", (max(box), max(box)))
            if image.getexif().get(ORIENTATION_TAG, 1) != 1:
                image = ImageOps.exif_transpose(image)
            if image.mode not in ("RGB", "L"):
                image = image.convert("RGB")
            image.thumbnail(box, Image.Resampling.LANCZOS)
            return image.convert("RGB")
    # Pillow reports unreadable images with several exception types, depending on the damage.
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        log.warning("cannot make a thumbnail of %s: %s", path, error)
        return None


@lru_cache(maxsize=16)
def load_font(
    size: int, bold: bool = False, mono: bool = False
) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu when installed (wide Unicode coverage for labels), else Pillow's built-in font."""
    from PIL import ImageFont

    name = "DejaVuSansMono" if mono else "DejaVuSans-Bold" if bold else "DejaVuSans"
    try:
        return ImageFont.truetype(f"{name}.ttf", size)
    except OSError:
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1 has only the fixed-size bitmap font
            return ImageFont.load_default()


def displayable(text: str) -> str:
    """``text`` as one honest line: format characters (bidi overrides, zero-width) dropped,
    so a label cannot read differently from what it is; control characters and line or
    paragraph separators (raqm fails on U+2029 and U+0085) shown as U+FFFD."""
    return "".join("\ufffd" if unsafe_char(ch) else ch for ch in text if unicodedata.category(ch) != "Cf")


def fit_text(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    """``text`` cut with an ellipsis so that it is at most ``width`` px wide in ``font``.

    Linear in the length of ``text``: no visible glyph is under 1 px wide, so at most
    ``width`` characters (twice that, for combining marks) can fit, and the cut is then
    found by binary search over that prefix.
    """
    text = displayable(text)
    if len(text) <= 2 * width and _length(font, text) <= width:
        return text
    text = text[: 2 * width + 1]
    low, high = 0, len(text)  # text[:low] + "…" fits; text[:high] + "…" does not (or is all of it)
    while low < high:
        middle = (low + high + 1) // 2
        if _length(font, text[:middle] + "…") <= width:
            low = middle
        else:
            high = middle - 1
    return text[:low] + "…"


def _length(font: ImageFont.ImageFont | ImageFont.FreeTypeFont, text: str) -> float:
    try:
        return font.getlength(text)
    except (OSError, ValueError, RuntimeError):  # the layout engine refuses the text: too wide
        return float("inf")


def draw_text_safely(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, **options: object
) -> None:
    """``draw.text`` that never fails the sheet: a text the layout engine refuses is drawn
    as its ASCII escape instead."""
    try:
        draw.text(xy, text, **options)  # type: ignore[arg-type]
    except (OSError, ValueError, RuntimeError) as error:  # raqm: "raqm_layout() failed"
        log.warning("cannot draw %r (%s): drawing its ASCII form", text[:80], error)
        draw.text(xy, ascii(text)[1:-1], **options)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SheetLayout:
    """Where everything goes.  Rows wrap into side-by-side blocks only past JPEG's height limit."""

    rows: int
    per_category: int
    thumb_height: int = THUMB_HEIGHT
    label_width: int = 230
    gap: int = 8
    header_height: int = 44

    @property
    def thumb_width(self) -> int:
        return round(self.thumb_height * 4 / 3)

    @property
    def caption_height(self) -> int:
        return max(10, self.thumb_height // 8)

    @property
    def row_height(self) -> int:
        # The label column holds three text lines, so rows never get shorter than that.
        return max(self.thumb_height + self.caption_height + 2 * self.gap, 62)

    @property
    def block_width(self) -> int:
        return self.label_width + self.per_category * (self.thumb_width + self.gap) + self.gap

    @property
    def rows_per_block(self) -> int:
        fit = max(1, (MAX_JPEG_SIDE - self.header_height) // self.row_height)
        blocks = max(1, math.ceil(self.rows / fit))
        return max(1, math.ceil(self.rows / blocks))

    @property
    def blocks(self) -> int:
        return max(1, math.ceil(self.rows / self.rows_per_block))

    @property
    def size(self) -> tuple[int, int]:
        return (
            self.blocks * self.block_width,
            self.header_height + min(self.rows, self.rows_per_block) * self.row_height,
        )

    def row_origin(self, row: int) -> tuple[int, int]:
        block, index = divmod(row, self.rows_per_block)
        return block * self.block_width, self.header_height + index * self.row_height

    def slot_box(self, row: int, slot: int) -> tuple[int, int, int, int]:
        """The thumbnail box (x0, y0, x1, y1) of image ``slot`` in category ``row``."""
        x, y = self.row_origin(row)
        x0 = x + self.label_width + slot * (self.thumb_width + self.gap)
        y0 = y + self.gap
        return x0, y0, x0 + self.thumb_width, y0 + self.thumb_height


def sheet_layout(rows: int, per_category: int, thumb_height: int = THUMB_HEIGHT) -> SheetLayout:
    """The layout, with thumbnails shrunk until the sheet stays under MAX_SHEET_PIXELS."""
    layout = SheetLayout(rows, max(1, per_category), thumb_height)
    while layout.size[0] * layout.size[1] > MAX_SHEET_PIXELS and layout.thumb_height > MIN_THUMB_HEIGHT:
        layout = SheetLayout(rows, layout.per_category, max(MIN_THUMB_HEIGHT, layout.thumb_height * 4 // 5))
    if layout.thumb_height != thumb_height:
        log.info(
            "contact sheet thumbnails shrunk to %d px to keep the sheet a sane size", layout.thumb_height
        )
    return layout


def _mark_box(
    draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], word: str, fill: tuple, line: tuple
) -> None:
    draw.rectangle(box, fill=fill, outline=line, width=2)
    x0, y0, x1, y1 = box
    draw.line((x0, y0, x1, y1), fill=line, width=1)
    draw.line((x0, y1, x1, y0), fill=line, width=1)
    font = load_font(max(9, (y1 - y0) // 7), bold=True)
    text_box = draw.textbbox(((x0 + x1) / 2, (y0 + y1) / 2), word, font=font, anchor="mm")
    draw.rectangle(text_box, fill=fill)
    draw.text(((x0 + x1) / 2, (y0 + y1) / 2), word, font=font, fill=line, anchor="mm")


def draw_contact_sheet(
    groups: Sequence[CategoryImages],
    images_dir: Path,
    per_category: int,
    *,
    thumb_height: int = THUMB_HEIGHT,
    title: str = "ImageNet sample",
    heading: str | None = None,
    slots: int | None = None,
    progress: ProgressCallback = no_progress,
) -> tuple[Image.Image, SheetLayout, dict[str, int]]:
    """The sheet as a Pillow image, its layout and counts (thumbnails, missing, unreadable).

    ``heading`` replaces the sheet's first line; ``slots`` (images per row) keeps the
    numbered sheets of one run the same width.
    """
    from PIL import Image, ImageDraw

    slots = slots or max([per_category] + [len(g.images) for g in groups])
    layout = sheet_layout(len(groups), slots, thumb_height)
    sheet = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    kept = sum(len(g.images) for g in groups)
    short = [g for g in groups if g.missing]
    counts = {"thumbnails": 0, "missing": sum(g.missing for g in groups), "unreadable": 0}
    if heading is None:
        heading = f"{title}: {len(groups)} categories, {kept} of {len(groups) * per_category} images kept" + (
            f", {len(short)} {'category' if len(short) == 1 else 'categories'} short"
            if short
            else ", no shortfalls"
        )
    heading_font = load_font(18, bold=True)
    draw.text(
        (layout.gap, layout.header_height // 2),
        fit_text(heading, heading_font, layout.block_width - 2 * layout.gap),
        font=heading_font,
        fill=TEXT,
        anchor="lm",
    )
    label_font, id_font = load_font(14, bold=True), load_font(12, mono=True)
    caption_font = load_font(max(8, layout.caption_height - 2), mono=True)
    text_width = layout.label_width - 2 * layout.gap
    for row, group in enumerate(groups):
        x, y = layout.row_origin(row)
        if row % 2:
            draw.rectangle((x, y, x + layout.block_width - 1, y + layout.row_height - 1), fill=STRIPE)
        draw_text_safely(
            draw,
            (x + layout.gap, y + layout.gap),
            fit_text(group.label, label_font, text_width),
            font=label_font,
            fill=TEXT,
        )
        draw_text_safely(
            draw,
            (x + layout.gap, y + layout.gap + 20),
            fit_text(group.wnid, id_font, text_width),
            font=id_font,
            fill=MUTED,
        )
        if group.missing:
            draw.text(
                (x + layout.gap, y + layout.gap + 38),
                f"{len(group.images)} of {len(group.images) + group.missing}: {group.missing} missing",
                font=id_font,
                fill=MISSING_LINE,
            )
        for slot, image in enumerate(group.images):
            box = layout.slot_box(row, slot)
            thumb = load_thumbnail(
                images_dir / image.get("file", ""), (layout.thumb_width, layout.thumb_height)
            )
            if thumb is None:
                counts["unreadable"] += 1
                _mark_box(draw, box, "unreadable", UNREADABLE_FILL, UNREADABLE_LINE)
            else:
                counts["thumbnails"] += 1
                # Centred in its box, so rows line up whatever the aspect ratio.
                left = box[0] + (layout.thumb_width - thumb.width) // 2
                top = box[1] + (layout.thumb_height - thumb.height) // 2
                sheet.paste(thumb, (left, top))
            draw_text_safely(
                draw,
                ((box[0] + box[2]) / 2, box[3] + 1),
                fit_text(image.get("image_id", ""), caption_font, layout.thumb_width),
                font=caption_font,
                fill=MUTED,
                anchor="ma",
            )
        for slot in range(len(group.images), len(group.images) + group.missing):
            _mark_box(draw, layout.slot_box(row, slot), "missing", MISSING_FILL, MISSING_LINE)
        progress(100 * (row + 1) / max(1, len(groups)), f"contact sheet: {row + 1}/{len(groups)} categories")
    return sheet, layout, counts


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def write_contact_sheet(
    out: Path,
    categories: Sequence[Category],
    rows: Sequence[Mapping[str, str]],
    images_dir: Path,
    per_category: int,
    *,
    per_sheet: int = CATEGORIES_PER_SHEET,
    thumb_height: int = THUMB_HEIGHT,
    progress: ProgressCallback = no_progress,
) -> dict[str, int]:
    """Draw the contact sheet of a run into ``out``, atomically.

    ``out`` named as an image (``contact_sheet.jpg``; PNG if it ends in .png) gets one sheet of
    every category; otherwise (``contact_sheet/``, see ``contact_sheet_output``) it is a folder
    of numbered sheets of at most ``per_sheet`` categories each.
    """
    groups = group_by_category(categories, rows, per_category)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        return _write_numbered_sheets(
            out, groups, images_dir, per_category, per_sheet, thumb_height, progress
        )
    sheet, layout, counts = draw_contact_sheet(
        groups, images_dir, per_category, thumb_height=thumb_height, progress=progress
    )
    # The temporary name hides the extension, so the format is named explicitly.
    fmt = "PNG" if out.suffix.lower() == ".png" else "JPEG"
    with atomic_path(out) as tmp:
        if fmt == "JPEG":
            sheet.save(tmp, "JPEG", quality=85)
        else:
            sheet.save(tmp, "PNG", optimize=False)
    return {**counts, "width": sheet.width, "height": sheet.height, "thumb_height": layout.thumb_height}


def contact_sheet_output(data_dir: Path, categories: int, per_sheet: int = CATEGORIES_PER_SHEET) -> Path:
    """Where the contact sheet of ``categories`` categories goes: ``contact_sheet.jpg`` while
    one sheet holds them all, else the folder ``contact_sheet/`` of numbered sheets."""
    return Path(data_dir, "contact_sheet.jpg" if categories <= per_sheet else "contact_sheet")


def sheet_name(number: int) -> str:
    return f"sheet-{number:03d}.jpg"


def _write_numbered_sheets(
    folder: Path,
    groups: Sequence[CategoryImages],
    images_dir: Path,
    per_category: int,
    per_sheet: int,
    thumb_height: int,
    progress: ProgressCallback,
) -> dict[str, int]:
    """Numbered sheets of at most ``per_sheet`` categories in ``folder`` (written as one
    directory, atomically).  One sheet is in memory at a time."""
    slots = max([per_category] + [len(g.images) for g in groups])
    total = max(1, math.ceil(len(groups) / per_sheet))
    kept = sum(len(g.images) for g in groups)
    short = sum(1 for g in groups if g.missing)
    totals = {"thumbnails": 0, "missing": 0, "unreadable": 0, "sheets": total, "width": 0, "height": 0}
    with atomic_path(folder, directory=True) as tmp:
        for number in range(1, total + 1):
            first = (number - 1) * per_sheet
            chunk = groups[first : first + per_sheet]
            heading = (
                f"Sheet {number} of {total}: categories {first + 1}–{first + len(chunk)} of {len(groups)} · "
                f"{kept}/{len(groups) * per_category} kept · " + (f"{short} short" if short else "none short")
            )

            def sheet_progress(percent: float, message: str, number: int = number) -> None:
                progress(100 * (number - 1 + percent / 100) / total, f"sheet {number}/{total}: {message}")

            sheet, layout, counts = draw_contact_sheet(
                chunk,
                images_dir,
                per_category,
                thumb_height=thumb_height,
                heading=heading,
                slots=slots,
                progress=sheet_progress,
            )
            sheet.save(tmp / sheet_name(number), "JPEG", quality=85)
            for key in ("thumbnails", "missing", "unreadable"):
                totals[key] += counts[key]
            totals["width"] = max(totals["width"], sheet.width)
            totals["height"] = max(totals["height"], sheet.height)
            totals["thumb_height"] = layout.thumb_height
            del sheet  # before the next one is drawn
    return totals
