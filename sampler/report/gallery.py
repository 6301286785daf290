"""The gallery: a static web page of the sample that works opened straight from disk.

``gallery/index.html`` shows every category (label, wnid, a mark when it is
short) with its thumbnails (``gallery/thumbs/``, generated: the full images are
only linked, as ``../images/<file>``), each image's source URL as a link, and
the run report with its charts inline.  Every link is relative, so file:// works
with no server.  Labels, URLs and file names are hostile input: the pages are
Jinja2 templates (``templates/gallery_*.html``) with autoescaping on, file names
are also percent-encoded, and only http(s) URLs become links.  A
Content-Security-Policy that admits only the page's own script (by hash) backs
that up.  That script counts thumbnails that failed to load and says so at the
top of the page.

A run that fits on one page (at most CATEGORIES_PER_PAGE categories and
SLOTS_PER_PAGE image boxes: every demo and the 100-category sets) gets that one
``index.html``, as before.  A bigger run (DET-200 at 5 a category, ILSVRC-2012)
gets ``index.html`` as an index, the run report and one line per category (kept,
missing, dead links, a link to it), and ``page-001.html``... of whole categories,
each page bounded in size.  Pages are written as they are made; the whole folder
appears at once.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote, urlsplit

from markupsafe import Markup

from sampler.atomic import atomic_path
from sampler.categories.words import Category
from sampler.naming import IMAGE_ID_RE, WNID_RE
from sampler.progress import ProgressCallback, human_bytes, no_progress
from sampler.report.charts import chart_svgs
from sampler.report.contact_sheet import CategoryImages, group_by_category, load_thumbnail
from sampler.report.render import render
from sampler.report.text import format_summary

THUMB_BOX = (192, 144)  # fits 4:3 photos; small enough that 1,000 of them load fast
# A page of 100 categories x 5 loads in a moment and scrolls comfortably; the slot bound keeps
# pages of runs with 50 a category as light (10 categories a page).
CATEGORIES_PER_PAGE = 100
SLOTS_PER_PAGE = 500

# Marks every thumbnail that did not load and reports the count in #load-status
# (users see it; tests read its data-* attributes from the DOM).
LOAD_CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var thumbs = document.querySelectorAll("img.thumb"), broken = 0;
  for (var i = 0; i < thumbs.length; i++) {
    if (!thumbs[i].complete || thumbs[i].naturalWidth === 0) {
      thumbs[i].setAttribute("data-broken", "1");
      broken++;
    }
  }
  var status = document.getElementById("load-status");
  status.setAttribute("data-total", String(thumbs.length));
  status.setAttribute("data-broken", String(broken));
  status.className = broken ? "status bad" : "status good";
  status.textContent = broken
    ? broken + " of " + thumbs.length + " images failed to load"
    : "All " + thumbs.length + " thumbnails loaded";
});
"""


def _relative_url(target: Path, base_dir: Path) -> str:
    """``target`` as a percent-encoded URL relative to ``base_dir`` (file names may hold #, ?, %, quotes)."""
    rel = Path(os.path.relpath(target, base_dir)).as_posix()
    return quote(rel, safe="/")


def _source(url: str, text: str) -> dict:
    """A source URL for the page: a link if it is http(s); other schemes (javascript:, data:...)
    are shown as plain text."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        scheme = ""
    return {"url": url, "text": text, "linkable": scheme in ("http", "https")}


def _thumb_name(image: Mapping[str, str], index: int, used: set[str]) -> str:
    """A safe, unique thumbnail file name: the image id when it is one, else the row number."""
    image_id = image.get("image_id", "")
    stem = image_id if IMAGE_ID_RE.fullmatch(image_id) else f"image{index:05d}"
    if stem in used:
        stem = f"{stem}-{index}"
    used.add(stem)
    return f"{stem}.jpg"


def _anchor(wnid: str, index: int) -> str:
    return f"c-{wnid}" if WNID_RE.fullmatch(wnid) else f"c-{index}"


def _figure(
    image: Mapping[str, str], thumb: str | None, size: tuple[int, int], full_url: str, label: str
) -> dict:
    """What the page shows of one image (the template ``figure`` lays it out)."""
    image_id = image.get("image_id", "")
    details = []
    if image.get("width") and image.get("height"):
        details.append(f"{image['width']}×{image['height']}")
    if str(image.get("bytes", "")).isdigit():
        details.append(human_bytes(int(image["bytes"])))
    url, final = image.get("url", ""), image.get("final_url", "")
    sources = [_source(url, url)]
    if final and final != url:
        sources.append(_source(final, "redirected to: " + final))
    return {
        "image_id": image_id,
        "thumb": thumb,
        "width": size[0],
        "height": size[1],
        "full": full_url,
        "alt": f"{label} {image_id}",
        "details": details,
        "sources": sources,
    }


def _group_view(group: CategoryImages, index: int, stats: Mapping | None, figures: list[dict]) -> dict:
    tried = ""
    if stats and stats.get("tried"):
        rate = stats.get("dead_link_rate") or 0
        tried = f"{stats['tried']} URLs tried, {100 * rate:.0f}% dead links"
    return {
        "wnid": group.wnid,
        "label": group.label,
        "anchor": _anchor(group.wnid, index),
        "kept": len(group.images),
        "missing": group.missing,
        "stats": tried,
        "figures": figures,
    }


def _report_view(report: Mapping | None) -> dict | None:
    if not report:
        return None
    # The charts are SVG rendered (and escaped) by our own template: inlined as they are.
    return {"summary": format_summary(report), "charts": [Markup(svg) for svg in chart_svgs(report).values()]}


def _csp() -> str:
    script_hash = base64.b64encode(hashlib.sha256(LOAD_CHECK_SCRIPT.encode()).digest()).decode()
    # Only this page's own script may run; file: covers thumbnails opened from disk.
    return (
        f"default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{script_hash}'"
    )


def _category_stats(report: Mapping | None) -> dict[str, Mapping]:
    return {c.get("wnid"): c for c in (report or {}).get("by_category", [])}


def _lead(groups: Sequence[CategoryImages], per_category: int, report: Mapping | None) -> str:
    kept = sum(len(g.images) for g in groups)
    short = [g for g in groups if g.missing]
    short_text = (
        f"{len(short)} {'category' if len(short) == 1 else 'categories'} short" if short else "no shortfalls"
    )
    dead = (report or {}).get("dead_link_rate")
    dead_text = (
        f" · {100 * dead:.0f}% of URLs tried were dead links" if isinstance(dead, (int, float)) else ""
    )
    return f"{len(groups)} categories × {per_category} wanted · {kept} images kept ·\n{short_text}{dead_text}"


def render_page(
    groups: Sequence[CategoryImages],
    figures: Mapping[str, list[dict]],
    per_category: int,
    report: Mapping | None,
    links: Sequence[tuple[str, str]],
    *,
    first: int = 0,
    all_groups: Sequence[CategoryImages] | None = None,
    page: tuple[int, int] | None = None,
    stats: Mapping[str, Mapping] | None = None,
    lead: str | None = None,
) -> str:
    """A page of category sections; ``figures`` maps each wnid to its images (``_figure``).

    The single page of a small run has everything; page ``page = (n, of)`` of a paged
    run holds ``groups`` (the categories from index ``first`` of ``all_groups``), links
    back to the index and to its neighbours, and leaves the run report to the index.
    ``stats`` (the report's categories by wnid) and ``lead`` (the run's line), when given,
    are the run's, made once for all its pages: each is a pass over every category.
    """
    everything = all_groups if all_groups is not None else groups
    if stats is None:
        stats = _category_stats(report)
    views = [
        _group_view(g, i, stats.get(g.wnid), figures.get(g.wnid, []))
        for i, g in enumerate(groups, start=first)
    ]
    paging = None
    if page is None:
        heading, title = "ImageNet sample", f"ImageNet sample: {len(groups)} categories"
    else:
        number, total = page
        heading = f"ImageNet sample, page {number} of {total}"
        title = f"{heading}: categories {first + 1}–{first + len(groups)}"
        paging = {
            "first": first + 1,
            "last": first + len(groups),
            "categories": len(everything),
            "previous": {"number": number - 1, "href": page_name(number - 1)} if number > 1 else None,
            "next": {"number": number + 1, "href": page_name(number + 1)} if number < total else None,
        }
    return render(
        "gallery_page.html",
        title=title,
        csp=_csp(),
        script=Markup(LOAD_CHECK_SCRIPT),
        heading=heading,
        lead=lead if lead is not None else _lead(everything, per_category, report),
        page=paging,
        kept=sum(len(g.images) for g in groups),
        extra_links=links,
        report=_report_view(report) if page is None else None,
        groups=views,
    )


def page_name(number: int) -> str:
    return f"page-{number:03d}.html"


def render_index(
    groups: Sequence[CategoryImages],
    page_of: Sequence[int],
    per_category: int,
    report: Mapping | None,
    links: Sequence[tuple[str, str]],
) -> str:
    """The index of a paged gallery: the run report, the short categories first, then a
    line per category (label, wnid, kept, missing, dead links) linking to it on its page."""
    stats = _category_stats(report)
    rows = []
    for i, g in enumerate(groups):
        rate = (stats.get(g.wnid) or {}).get("dead_link_rate")
        rows.append(
            {
                "number": i + 1,
                "wnid": g.wnid,
                "label": g.label,
                "kept": len(g.images),
                "missing": g.missing,
                "dead": f"{100 * rate:.0f}%" if isinstance(rate, (int, float)) else "",
                "page": page_of[i],
                "href": f"{page_name(page_of[i])}#{_anchor(g.wnid, i)}",
            }
        )
    return render(
        "gallery_index.html",
        title=f"ImageNet sample: {len(groups)} categories (index)",
        csp=_csp(),
        script=None,
        lead=_lead(groups, per_category, report),
        pages=[page_name(n) for n in range(1, max(page_of, default=1) + 1)],
        extra_links=links,
        report=_report_view(report),
        short=[row for row in rows if row["missing"]],
        rows=rows,
    )


def paginate(
    groups: Sequence[CategoryImages],
    per_category: int,
    categories_per_page: int = CATEGORIES_PER_PAGE,
    slots_per_page: int = SLOTS_PER_PAGE,
) -> list[list[int]]:
    """Which categories (indices, in order) go on each page: whole categories, at most
    ``categories_per_page`` and, unless one category alone is bigger, ``slots_per_page``
    image boxes (kept plus missing) a page."""
    pages: list[list[int]] = [[]]
    slots = 0
    for i, g in enumerate(groups):
        size = max(per_category, len(g.images) + g.missing)
        if pages[-1] and (len(pages[-1]) >= categories_per_page or slots + size > slots_per_page):
            pages.append([])
            slots = 0
        pages[-1].append(i)
        slots += size
    return pages


def build_gallery(
    gallery_dir: Path,
    categories: Sequence[Category],
    rows: Sequence[Mapping[str, str]],
    images_dir: Path,
    per_category: int,
    *,
    report: Mapping | None = None,
    extra_links: Sequence[tuple[Path, str]] = (),
    categories_per_page: int = CATEGORIES_PER_PAGE,
    slots_per_page: int = SLOTS_PER_PAGE,
    progress: ProgressCallback = no_progress,
) -> dict[str, int]:
    """Write ``gallery_dir`` (index.html, page-NNN.html when paged, thumbs/) at once; links
    are relative to its final place.

    ``extra_links``: (file, text) pairs linked from the page headers, e.g. the contact sheet.
    """
    gallery_dir = Path(gallery_dir)
    groups = group_by_category(categories, rows, per_category)
    pages = paginate(groups, per_category, categories_per_page, slots_per_page)
    counts = {
        "thumbnails": 0,
        "unreadable": 0,
        "missing": sum(g.missing for g in groups),
        "pages": len(pages) if len(pages) > 1 else 0,
    }
    used: set[str] = set()
    number = 0
    done = 0
    links = [(_relative_url(path, gallery_dir), text) for path, text in extra_links if path.exists()]
    stats = _category_stats(report)
    lead = _lead(groups, per_category, report)
    with atomic_path(gallery_dir, directory=True) as tmp:
        (tmp / "thumbs").mkdir()
        for page_number, members in enumerate(pages, start=1):
            # Only this page's figures are held: a page is written before the next is made.
            figures: dict[str, list[dict]] = {}
            for i in members:
                group = groups[i]
                for image in group.images:
                    number += 1
                    name = _thumb_name(image, number, used)
                    thumb = load_thumbnail(images_dir / image.get("file", ""), THUMB_BOX)
                    thumb_name: str | None = None
                    size = (0, 0)
                    if thumb is None:
                        counts["unreadable"] += 1
                    else:
                        thumb.save(tmp / "thumbs" / name, "JPEG", quality=82)
                        thumb_name = name
                        size = thumb.size
                        counts["thumbnails"] += 1
                    full = _relative_url(images_dir / image.get("file", ""), gallery_dir)
                    figures.setdefault(group.wnid, []).append(
                        _figure(image, thumb_name, size, full, group.label)
                    )
                done += 1
                progress(95 * done / max(1, len(groups)), f"gallery: {done}/{len(groups)} categories")
            if len(pages) == 1:
                page = render_page(groups, figures, per_category, report, links)
                (tmp / "index.html").write_text(page, encoding="utf-8")
            else:
                page = render_page(
                    [groups[i] for i in members],
                    figures,
                    per_category,
                    report,
                    links,
                    first=members[0],
                    all_groups=groups,
                    page=(page_number, len(pages)),
                    stats=stats,
                    lead=lead,
                )
                (tmp / page_name(page_number)).write_text(page, encoding="utf-8")
        if len(pages) > 1:
            page_of = [0] * len(groups)
            for page_number, members in enumerate(pages, start=1):
                for i in members:
                    page_of[i] = page_number
            index = render_index(groups, page_of, per_category, report, links)
            (tmp / "index.html").write_text(index, encoding="utf-8")
    progress(100, f"gallery: {counts['thumbnails']} thumbnails")
    return counts
