"""The self-contained HTML report: one file, inline CSS, plots embedded as base64 PNG."""

from __future__ import annotations

import base64
from functools import lru_cache

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from coordinator.report.view import ReportView


def render_html(view: ReportView) -> str:
    """The report page for ``view``; every value is HTML-escaped."""
    return _environment().get_template("report.html.j2").render(v=view)


@lru_cache(maxsize=1)
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("coordinator.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=False,
        lstrip_blocks=False,
    )
    env.filters["b64"] = lambda data: base64.b64encode(data).decode("ascii")
    return env
