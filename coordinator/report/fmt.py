"""Number formatting shared by the narrative, the HTML and the PDF, so all three agree.

Display only: the signed document keeps full-precision floats. Negative numbers use the
typographic minus (U+2212).
"""

from __future__ import annotations

import math

MINUS = "\u2212"


def num(x: float | int | None, *, digits: int = 3) -> str:
    """A readable number: thousands separators for large values, ``digits`` significant
    digits for small ones (``1,234``, ``56.7``, ``0.0213``); ``n/a`` for ``None``."""
    if x is None:
        return "n/a"
    if isinstance(x, int) and not isinstance(x, bool):
        return _sign(f"{x:,}")
    ax = abs(x)
    if ax >= 1000:
        s = f"{x:,.0f}"
    elif ax >= 100:
        s = f"{x:,.1f}" if digits > 3 else f"{x:,.0f}"
    elif ax >= 10:
        s = f"{x:.1f}"
    elif ax == 0:
        s = "0"
    else:
        s = f"{x:.{digits}g}"
        if "e" in s:  # tiny values: fixed notation reads better in prose
            s = f"{x:.{digits - 1 - math.floor(math.log10(ax))}f}"
    return _sign(s)


def pct(share: float | None, *, digits: int = 1) -> str:
    """A share 0..1 as a percentage (``0.237`` → ``23.7%``); a small non-zero share that would
    round to zero reads ``<0.1%`` rather than a misleading ``0.0%``."""
    if share is None:
        return "n/a"
    floor = 0.5 * 10.0**-digits
    if 0 < abs(100 * share) < floor:
        return f"<{10.0**-digits:.{digits}f}%" if share > 0 else f">{MINUS}{10.0**-digits:.{digits}f}%"
    return _sign(f"{100 * share:.{digits}f}%")


def ratio(x: float | None) -> str:
    """A ratio of widths (``2.48`` → ``2.48×``, ``12.3×``); ``n/a`` for ``None``."""
    return "n/a" if x is None else f"{num(x)}\u00d7"


def ci(lo: float, hi: float, *, digits: int = 3) -> str:
    """A confidence interval ``lo to hi`` in the style of :func:`num` ("to", not a comma, since
    large numbers carry thousands separators)."""
    return f"{num(lo, digits=digits)} to {num(hi, digits=digits)}"


def edge(x: float | None, *, lower: bool) -> str:
    """A stratum edge; ``None`` stands for −∞ (lower) or +∞ (upper)."""
    if x is None:
        return f"{MINUS}\u221e" if lower else "+\u221e"
    return f"{x:.2f}".replace("-", MINUS)


def _sign(s: str) -> str:
    return s.replace("-", MINUS, 1) if s.startswith("-") else s
