"""The Jinja2 environment the report's HTML and SVG are rendered with, from ``templates/``.

Autoescaping is on for every template (HTML, SVG, XML by name, and any other): labels,
URLs, hosts and file names are hostile input, and a value reaches a page only escaped,
unless the code marks it ``Markup`` (our own script, and charts rendered by these templates).
"""

from __future__ import annotations

from functools import cache

import jinja2


@cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("sampler.report", "templates"),
        autoescape=jinja2.select_autoescape(("html", "svg", "xml"), default_for_string=True, default=True),
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the page instead of vanishing
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, **values: object) -> str:
    """``template`` (a file name under templates/) rendered with ``values``."""
    return environment().get_template(template).render(**values)
