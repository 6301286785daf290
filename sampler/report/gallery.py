"""The gallery: a static web page of the sample that works opened straight from disk.

``gallery/index.html`` shows every category (label, wnid, a mark when it is
short) with its thumbnails (``gallery/thumbs/``, generated: the full images are
only linked, as ``../images/<file>``), each image's source URL as a link, and
the run report with its charts inline.  Every link is relative, so file:// works
with no server.  Labels, URLs and file names are hostile input: everything is
HTML-escaped, file names are also percent-encoded, and only http(s) URLs become
links.  A Content-Security-Policy that admits only the page's own script (by
hash) backs that up.  That script counts thumbnails that failed to load and says
so at the top of the page.

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
import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote, urlsplit

from sampler.atomic import atomic_path
from sampler.categories.words import Category
from sampler.naming import IMAGE_ID_RE, WNID_RE
from sampler.progress import ProgressCallback, human_bytes, no_progress
from sampler.report.contact_sheet import CategoryImages, group_by_category, load_thumbnail
from sampler.report.run_report import chart_svgs, format_summary

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

STYLE = """
:root { color-scheme: light; --muted: #666; --line: #ddd; --bad: #c0392b; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 24px 40px; color: #1b1b1b; }
header { border-bottom: 1px solid var(--line); padding: 12px 0; }
h1 { margin: 0 0 4px; font-size: 24px; }
h2 { font-size: 18px; margin: 0 0 8px; }
code { font: 12px/1.3 ui-monospace, "DejaVu Sans Mono", monospace; }
.lead { margin: 0; color: var(--muted); }
.status { display: inline-block; margin: 8px 0 0; padding: 2px 8px; border-radius: 4px; background: #eee; }
.status.good { background: #e3f4e8; color: #1e6b3a; }
.status.bad { background: #fbe4e1; color: var(--bad); font-weight: bold; }
.links a { margin-right: 14px; }
details.report { margin: 16px 0; }
details.report summary { cursor: pointer; font-weight: bold; font-size: 16px; }
pre.summary { white-space: pre-wrap; background: #f6f7f9; padding: 10px; border-radius: 4px; }
svg.chart { max-width: 100%; height: auto; display: block; margin: 12px 0; }
nav.index { margin: 12px 0; line-height: 2; }
nav.index a { display: inline-block; margin-right: 6px; padding: 0 6px; border: 1px solid var(--line);
  border-radius: 10px; text-decoration: none; color: inherit; font-size: 12px; }
nav.index a.short { border-color: var(--bad); color: var(--bad); }
nav.pages { margin: 12px 0; }
nav.pages a { margin-right: 10px; }
table.categories { border-collapse: collapse; margin: 12px 0; }
table.categories th, table.categories td { text-align: left; padding: 2px 10px;
  border-bottom: 1px solid var(--line); }
table.categories tr.short td { color: var(--bad); }
table.categories td.n { text-align: right; font-variant-numeric: tabular-nums; }
section.category { border-top: 1px solid var(--line); padding: 12px 0; }
.wnid { color: var(--muted); font-weight: normal; margin-left: 6px; }
.mark { margin-left: 8px; font-size: 13px; color: #fff; background: var(--bad); padding: 1px 6px;
  border-radius: 3px; }
.stats { color: var(--muted); font-size: 12px; font-weight: normal; margin-left: 8px; }
.images { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 192px; }
figure .frame { width: 192px; height: 144px; display: flex; align-items: center; justify-content: center;
  background: #f3f3f3; }
figure img { display: block; max-width: 192px; max-height: 144px; }
img[data-broken] { outline: 3px solid var(--bad); }
figcaption { font-size: 12px; color: var(--muted); overflow-wrap: anywhere; }
figcaption a.source { display: block; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
figure.missing .frame { background: #fdecec; border: 2px dashed var(--bad); box-sizing: border-box;
  color: var(--bad); font-weight: bold; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _relative_url(target: Path, base_dir: Path) -> str:
    """``target`` as a percent-encoded URL relative to ``base_dir`` (file names may hold #, ?, %, quotes)."""
    rel = Path(os.path.relpath(target, base_dir)).as_posix()
    return quote(rel, safe="/")


def _external_link(url: str, text: str, css: str) -> str:
    """A link to ``url`` if it is http(s); other schemes (javascript:, data:...) stay plain text."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme in ("http", "https"):
        return (
            f'<a class="{css}" href="{_e(url)}" title="{_e(url)}" rel="noopener noreferrer nofollow">'
            f"{_e(text)}</a>"
        )
    return f'<span class="{css}" title="{_e(url)}">{_e(text)}</span>'


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
) -> str:
    image_id = image.get("image_id", "")
    if thumb is None:
        picture = '<div class="frame">unreadable</div>'
    else:
        picture = (
            f'<a class="frame" href="{_e(full_url)}"><img class="thumb" src="thumbs/{_e(thumb)}" '
            f'width="{size[0]}" height="{size[1]}" alt="{_e(label)} {_e(image_id)}"></a>'
        )
    details = [f"<code>{_e(image_id)}</code>"]
    if image.get("width") and image.get("height"):
        details.append(f"{_e(image['width'])}×{_e(image['height'])}")
    if str(image.get("bytes", "")).isdigit():
        details.append(_e(human_bytes(int(image["bytes"]))))
    url, final = image.get("url", ""), image.get("final_url", "")
    source = _external_link(url, url, "source")
    if final and final != url:
        source += _external_link(final, "redirected to: " + final, "source")
    return f'<figure class="image">{picture}<figcaption>{" · ".join(details)}{source}</figcaption></figure>'


def _category_section(group: CategoryImages, index: int, figures: list[str], stats: Mapping | None) -> str:
    short = " short" if group.missing else ""
    mark = f'<span class="mark">{group.missing} missing</span>' if group.missing else ""
    tried = ""
    if stats and stats.get("tried"):
        rate = stats.get("dead_link_rate") or 0
        tried = f'<span class="stats">{stats["tried"]} URLs tried, {100 * rate:.0f}% dead links</span>'
    slots = ['<figure class="missing"><div class="frame">missing</div></figure>'] * group.missing
    return (
        f'<section class="category{short}" id="{_anchor(group.wnid, index)}" data-wnid="{_e(group.wnid)}" '
        f'data-kept="{len(group.images)}" data-missing="{group.missing}">\n'
        f'<h2><span class="label">{_e(group.label)}</span><code class="wnid">{_e(group.wnid)}</code>'
        f"{mark}{tried}</h2>\n"
        f'<div class="images">{"".join(figures + slots)}</div>\n</section>'
    )


def _report_section(report: Mapping | None) -> str:
    if not report:
        return ""
    charts = "\n".join(chart_svgs(report).values())
    return (
        '<details class="report" open><summary>Run report</summary>\n'
        f'<pre class="summary">{_e(format_summary(report))}</pre>\n{charts}\n</details>'
    )


def _csp() -> str:
    script_hash = base64.b64encode(hashlib.sha256(LOAD_CHECK_SCRIPT.encode()).digest()).decode()
    # Only this page's own script may run; file: covers thumbnails opened from disk.
    return (
        f"default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{script_hash}'"
    )


def _document(title: str, body: str, script: bool) -> str:
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{_e(_csp())}">
<title>{_e(title)}</title>
<style>{STYLE}</style>
</head>
<body>
{body}
{f"<script>{LOAD_CHECK_SCRIPT}</script>" if script else ""}
</body>
</html>
"""


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


def _links(links: Sequence[tuple[str, str]]) -> str:
    return "".join(f'<a href="{_e(href)}">{_e(text)}</a>' for href, text in links)


def render_page(
    groups: Sequence[CategoryImages],
    figures: Mapping[str, list[str]],
    per_category: int,
    report: Mapping | None,
    links: Sequence[tuple[str, str]],
    *,
    first: int = 0,
    all_groups: Sequence[CategoryImages] | None = None,
    page: tuple[int, int] | None = None,
) -> str:
    """A page of category sections; ``figures`` maps each wnid to its rendered <figure>s.

    The single page of a small run has everything; page ``page = (n, of)`` of a paged
    run holds ``groups`` (the categories from index ``first`` of ``all_groups``), links
    back to the index and to its neighbours, and leaves the run report to the index.
    """
    everything = all_groups if all_groups is not None else groups
    kept = sum(len(g.images) for g in groups)
    stats = {c.get("wnid"): c for c in (report or {}).get("by_category", [])}
    index = "".join(
        f'<a href="#{_anchor(g.wnid, i)}" class="{"short" if g.missing else "full"}" title="{_e(g.wnid)}">'
        f"{_e(g.label)}{f' (−{g.missing})' if g.missing else ''}</a>"
        for i, g in enumerate(groups, start=first)
    )
    sections = "\n".join(
        _category_section(g, i, figures.get(g.wnid, []), stats.get(g.wnid))
        for i, g in enumerate(groups, start=first)
    )
    if page is None:
        heading, title, extra = "ImageNet sample", f"ImageNet sample: {len(groups)} categories", ""
        report_html = _report_section(report)
    else:
        number, total = page
        heading = f"ImageNet sample, page {number} of {total}"
        title = f"{heading}: categories {first + 1}–{first + len(groups)}"
        report_html = ""
        extra = (
            f'<p class="lead">categories {first + 1}–{first + len(groups)} of {len(everything)}</p>\n'
            + _page_nav(total, number)
        )
    body = f"""<header>
<h1>{_e(heading)}</h1>
<p class="lead">{_lead(everything, per_category, report)}</p>
{extra}<p id="load-status" class="status" data-expected="{kept}">Checking {kept} thumbnails…</p>
<p class="links">{_links(links)}</p>
</header>
{report_html}
<nav class="index">{index}</nav>
<main>
{sections}
</main>"""
    return _document(title, body, script=True)


def page_name(number: int) -> str:
    return f"page-{number:03d}.html"


def _page_nav(total: int, current: int | None = None) -> str:
    parts = ['<a href="index.html">index</a>'] if current is not None else []
    if current is not None and current > 1:
        parts.append(f'<a href="{page_name(current - 1)}" rel="prev">← page {current - 1}</a>')
    if current is not None and current < total:
        parts.append(f'<a href="{page_name(current + 1)}" rel="next">page {current + 1} →</a>')
    if current is None:
        parts += [f'<a href="{page_name(n)}">page {n}</a>' for n in range(1, total + 1)]
    return f'<nav class="pages">{"".join(parts)}</nav>\n'


def render_index(
    groups: Sequence[CategoryImages],
    page_of: Sequence[int],
    per_category: int,
    report: Mapping | None,
    links: Sequence[tuple[str, str]],
) -> str:
    """The index of a paged gallery: the run report, the short categories first, then a
    line per category (label, wnid, kept, missing, dead links) linking to it on its page."""
    stats = {c.get("wnid"): c for c in (report or {}).get("by_category", [])}
    total = max(page_of, default=1)

    def href(i: int, g: CategoryImages) -> str:
        return f"{page_name(page_of[i])}#{_anchor(g.wnid, i)}"

    short = "".join(
        f'<a href="{href(i, g)}" class="short" title="{_e(g.wnid)}">{_e(g.label)} (−{g.missing})</a>'
        for i, g in enumerate(groups)
        if g.missing
    )
    rows = []
    for i, g in enumerate(groups):
        rate = (stats.get(g.wnid) or {}).get("dead_link_rate")
        dead = f"{100 * rate:.0f}%" if isinstance(rate, (int, float)) else ""
        rows.append(
            f'<tr class="{"short" if g.missing else "full"}" data-wnid="{_e(g.wnid)}" '
            f'data-kept="{len(g.images)}" data-missing="{g.missing}"><td class="n">{i + 1}</td>'
            f'<td><a href="{href(i, g)}">{_e(g.label)}</a></td><td><code>{_e(g.wnid)}</code></td>'
            f'<td class="n">{len(g.images)}</td><td class="n">{g.missing or ""}</td>'
            f'<td class="n">{dead}</td><td class="n">{page_of[i]}</td></tr>'
        )
    short_html = f'<h2>Short categories</h2>\n<nav class="index">{short}</nav>' if short else ""
    body = f"""<header>
<h1>ImageNet sample</h1>
<p class="lead">{_lead(groups, per_category, report)}</p>
<p class="lead">{total} pages of thumbnails; every category is listed below.</p>
{_page_nav(total)}<p class="links">{_links(links)}</p>
</header>
{_report_section(report)}
{short_html}
<h2>Categories</h2>
<table class="categories">
<thead><tr><th>#</th><th>label</th><th>wnid</th><th>kept</th><th>missing</th><th>dead links</th>\
<th>page</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>"""
    return _document(f"ImageNet sample: {len(groups)} categories (index)", body, script=False)


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
    with atomic_path(gallery_dir, directory=True) as tmp:
        (tmp / "thumbs").mkdir()
        for page_number, members in enumerate(pages, start=1):
            # Only this page's figures are held: a page is written before the next is made.
            figures: dict[str, list[str]] = {}
            for i in members:
                group = groups[i]
                for image in group.images:
                    number += 1
                    thumb_name: str | None = _thumb_name(image, number, used)
                    thumb = load_thumbnail(images_dir / image.get("file", ""), THUMB_BOX)
                    size = (0, 0)
                    if thumb is None:
                        counts["unreadable"] += 1
                        thumb_name = None
                    else:
                        thumb.save(tmp / "thumbs" / thumb_name, "JPEG", quality=82)
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
