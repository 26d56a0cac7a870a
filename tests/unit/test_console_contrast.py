"""The console's colours meet WCAG 2.1 AA (contrast ≥ 4.5:1 for text) in every pairing its
stylesheet uses: body text, muted text, badges, flashes, verdicts, buttons, the header."""

from __future__ import annotations

import re
from pathlib import Path

import coordinator.console

CSS = (Path(coordinator.console.__file__).parent / "static" / "console.css").read_text()
VARS = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-fA-F]{6})", CSS))


def _lum(hex_colour: str) -> float:
    def channel(c: int) -> float:
        v = c / 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(a: str, b: str) -> float:
    la, lb = sorted((_lum(a), _lum(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def test_every_text_colour_pairing_meets_aa():
    v = VARS
    header = re.search(r"\.top \{[^}]*background: (#[0-9a-f]{6})", CSS).group(1)
    pairs = {
        "body": (v["fg"], v["bg"]),
        "muted": (v["muted"], v["bg"]),
        "table head": (v["fg"], "#eef1f5"),
        "ok badge": (v["ok"], v["ok-bg"]),
        "bad badge / error": (v["bad"], v["bad-bg"]),
        "warn badge": (v["warn"], v["warn-bg"]),
        "button": ("#ffffff", v["accent"]),
        "plain button": (v["accent"], "#ffffff"),
        "danger button": ("#ffffff", v["bad"]),
        "header": ("#ffffff", header),
        "header muted": ("#d7e0ee", header),
        "current nav item": (header, "#ffffff"),
        "info flash": (v["fg"], "#e7effd"),
    }
    low = {k: round(contrast(*p), 2) for k, p in pairs.items() if contrast(*p) < 4.5}
    assert not low, low
    assert contrast("#ffffff", "#ffffff") == 1.0 and round(contrast("#000000", "#ffffff"), 1) == 21.0
