"""Web pieces shared by the node's HR view, the report page and the coordinator's console.

What is here, and who uses it::

    templates/base.html     page layout: lang, skip link, header/nav/main/footer landmarks
    templates/_macros.html  nav(items, current); cell(value, suppressed, reason): a withheld
                            figure is shown as the word "suppressed", never 0 or blank
    static/base.css         one stylesheet (WCAG AA colours, visible focus, 1366×768 layout)
    report/                 the report page: verifies a signed report.json in the browser
                            (:mod:`shared.web.report_page` builds it as one offline HTML file)

A server adds its own template folder in front (:func:`environment`) and serves
:data:`STATIC` at a path of its choosing (``css_href`` in the template context). No I/O happens
at import; Jinja reads templates when they are rendered.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

__all__ = ["HERE", "STATIC", "TEMPLATES", "environment", "base_css"]

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


def environment(*folders: str | Path) -> jinja2.Environment:
    """A Jinja environment that looks in ``folders`` first, then in the shared templates
    (so ``{% extends "base.html" %}`` works). Autoescaping is on for every template: a value
    shown on a page is text, never markup."""
    loader = jinja2.FileSystemLoader([*(str(f) for f in folders), str(TEMPLATES)])
    return jinja2.Environment(
        loader=loader,
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def base_css() -> str:
    """The shared stylesheet's text (for pages that inline it, such as the offline report page)."""
    return (STATIC / "base.css").read_text(encoding="utf-8")
