"""Server-rendered SVG charts of the HR view: no script, no image request, text in the page.

Every chart is drawn from a released (noised, suppressed) view only. A withheld value is drawn
as the word "suppressed" where its bar would be — never as a zero-length bar — and every chart
has a title and a description for screen readers; the same figures are in the table beside it.
"""

from __future__ import annotations

from markupsafe import Markup, escape

BAR = "#0b4a7d"
MUTED = "#4a5560"
WITHHELD = "#5c3c00"


def _svg(width: int, height: int, title: str, desc: str, body: list[str], cid: str) -> Markup:
    head = (
        f'<svg class="chart" role="img" aria-labelledby="{cid}-t {cid}-d" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{cid}-t">{escape(title)}</title><desc id="{cid}-d">{escape(desc)}</desc>'
    )
    return Markup(head + "".join(body) + "</svg>")


def hbars(
    rows: list[tuple[str, float | None, str]],
    *,
    title: str,
    desc: str,
    cid: str,
    vmax: float | None = None,
    width: int = 760,
) -> Markup:
    """Horizontal bars: ``(label, value or None when withheld, value text)`` per row."""
    label_w, row_h, right = 250, 26, 90
    shown = [v for _, v, _ in rows if v is not None]
    top = max(vmax or 0.0, max(shown, default=0.0)) or 1.0
    scale = (width - label_w - right) / top
    body = []
    for i, (label, value, text) in enumerate(rows):
        y = 6 + i * row_h
        body.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{escape(label)}</text>')
        if value is None:
            body.append(
                f'<text x="{label_w}" y="{y + 15}" fill="{WITHHELD}" font-style="italic">suppressed</text>'
            )
            continue
        w = max(value * scale, 0.0)
        body.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" fill="{BAR}"/>')
        body.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 15}">{escape(text)}</text>')
    height = 12 + len(rows) * row_h
    body.append(
        f'<line x1="{label_w}" x2="{label_w}" y1="2" y2="{height - 4}" stroke="{MUTED}" stroke-width="1"/>'
    )
    return _svg(width, height, title, desc, body, cid)
