"""WCAG 2.1 AA contrast of the shared stylesheet's colour pairs (text ≥ 4.5:1; focus ring and
other UI parts ≥ 3:1), computed from shared/web/static/base.css itself."""

from __future__ import annotations

import re

import pytest

from shared.web import base_css

TEXT = [
    ("ink", "paper"),
    ("muted", "paper"),
    ("muted", "panel"),
    ("brand", "paper"),
    ("brand-ink", "brand"),
    ("ok-ink", "ok-bg"),
    ("bad-ink", "bad-bg"),
    ("warn-ink", "warn-bg"),
]
UI = [("focus", "paper"), ("focus", "panel")]


def _vars() -> dict[str, str]:
    return dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-fA-F]{6})", base_css()))


def _luminance(hex_colour: str) -> float:
    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.parametrize(("fg", "bg"), TEXT)
def test_text_pairs_meet_aa(fg: str, bg: str) -> None:
    v = _vars()
    assert contrast(v[fg], v[bg]) >= 4.5, (fg, bg, contrast(v[fg], v[bg]))


@pytest.mark.parametrize(("fg", "bg"), UI)
def test_focus_ring_is_visible(fg: str, bg: str) -> None:
    v = _vars()
    assert contrast(v[fg], v[bg]) >= 3.0


def test_the_header_focus_ring_shows_on_the_brand_colour() -> None:
    ring = re.search(r"header\.site :focus-visible \{ outline-color: (#[0-9a-f]{6})", base_css()).group(1)
    assert contrast(ring, _vars()["brand"]) >= 3.0


def test_suppressed_cells_and_chart_text_are_readable() -> None:
    from node.web.charts import BAR, WITHHELD

    v = _vars()
    assert contrast(WITHHELD, "#ffffff") >= 4.5 and contrast(BAR, "#ffffff") >= 3.0
    assert contrast(v["warn-ink"], v["warn-bg"]) >= 4.5  # td.suppressed
