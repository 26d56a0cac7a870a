"""The PDF report (fpdf2): the same view as the HTML, paginated, with page numbers. Fonts are
the DejaVu TTFs that ship with matplotlib, so the symbols the report uses (ε, δ, −, ≥, ∞) render
without a system font or a browser.

The PDF is **not signed**; the signed evidence is ``report.json``. Every page's footer says so
and names that file's SHA-256, so a reader can tie the pages to the signed bytes. The same
report renders to the same PDF bytes: the creation date is the report's ``issued_at`` (fpdf2
derives the file ID from it and the content), the figures are PNGs without a timestamp or
software tag (:mod:`plots`), fonts are subset deterministically.
"""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import matplotlib
from fpdf import FPDF
from fpdf.fonts import FontFace
from PIL import Image

from coordinator.report.view import Figure, ReportView, Table

FONT = "DejaVu"
_FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
BLUE = (31, 95, 158)
GREY = (85, 85, 85)
PASS, FAIL = (30, 123, 52), (181, 42, 38)
HEAD_FILL = (226, 233, 243)
ZEBRA = (246, 248, 251)

# column width weights per table, so long text columns get the room
_WIDTHS = {
    "What the effect is worth": (22, 14, 22, 14, 36),
    "Effect estimates (ATT)": (18, 9, 9, 20, 9, 10, 10, 12, 13),
    "Diagnostics against stated thresholds": (18, 26, 9, 12, 8, 33),
    "Covariate balance": (22, 13, 13, 15, 15, 12),
    "Sensitivity to an unmeasured confounder (E-values)": (18, 24, 28, 10, 10),
}


class _ReportPDF(FPDF):
    def __init__(self, view: ReportView, created: dt.datetime | None):
        super().__init__(orientation="P", unit="mm", format="A4")
        self.view = view
        # fixed, never "now": two renderings of one report must be the same bytes
        self.set_creation_date(created or dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc))
        self.set_margins(16, 16, 16)
        self.set_auto_page_break(auto=True, margin=18)
        self.add_font(FONT, "", str(_FONT_DIR / "DejaVuSans.ttf"))
        self.add_font(FONT, "B", str(_FONT_DIR / "DejaVuSans-Bold.ttf"))
        self.add_font(FONT, "I", str(_FONT_DIR / "DejaVuSans-Oblique.ttf"))
        self.add_font(FONT + "Mono", "", str(_FONT_DIR / "DejaVuSansMono.ttf"))
        self.set_title(view.title)
        self.set_creator("rehealth-core")

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(FONT, "", 6.5)
        self.set_text_color(*GREY)
        self.cell(0, 5, footer_text(self.view), align="L")
        self.set_x(self.l_margin)
        self.cell(0, 5, f"Page {self.page_no()} of {{nb}}", align="R")
        self.set_text_color(0, 0, 0)


def footer_text(view: ReportView) -> str:
    """What every page says of itself: a rendering, of which file, not signed."""
    sig = view.signature
    if sig is None:
        return "Rendering of an unsigned report, not signed"
    return f"Rendering of {sig.file_name}, SHA-256 {sig.file_sha256}, not signed"


def render_pdf(view: ReportView, *, created: str | None = None) -> bytes:
    """The report as PDF bytes, identical for identical ``view`` and ``created``.

    Args:
        created: ISO 8601 time written as the PDF's creation date (the report's ``issued_at``).
    """
    when = None
    if created is not None:
        when = dt.datetime.fromisoformat(created)
        when = when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
    pdf = _ReportPDF(view, when)
    pdf.add_page()
    _title(pdf, view)
    _heading(pdf, "Summary")
    for label, text in view.summaries:
        pdf.set_font(FONT, "B", 9.5)
        pdf.cell(0, 6, label, new_x="LMARGIN", new_y="NEXT")
        _para(pdf, text)
    _table(pdf, view.value)
    _table(pdf, view.estimates, font_size=7)
    _figure(pdf, view.figures["estimates"])
    _table(pdf, view.checks)
    if view.calibrated is not None:
        _table(pdf, view.calibrated)
    if view.negative_controls is not None:
        _figure(pdf, view.figures["negative_controls"])
        _table(pdf, view.negative_controls, font_size=7)
    _table(pdf, view.sensitivity)
    for line in view.sensitivity_lines:
        _para(pdf, line, size=8.5)
    _table(pdf, view.balance)
    _table(pdf, view.attrition)
    _figure(pdf, view.figures["love"], width=130)
    _figure(pdf, view.figures["overlap"])
    _table(pdf, view.sites)
    _table(pdf, view.privacy)
    _heading(pdf, "Method and provenance")
    _para(pdf, view.estimand)
    for heading, text in (
        *view.method,
        ("Assumptions", "\n".join(f"• {a}" for a in view.assumptions)),
        ("Limitations", "\n".join(f"• {a}" for a in view.limitations)),
    ):
        if pdf.get_y() > pdf.h - 40:  # keep a sub-heading with its paragraph
            pdf.add_page()
        pdf.set_font(FONT, "B", 9.5)
        pdf.cell(0, 6, heading, new_x="LMARGIN", new_y="NEXT")
        _para(pdf, text)
    _table(pdf, view.spec_covariates)
    _table(pdf, view.spec_outcomes)
    for w in view.warnings:
        _para(pdf, f"Warning from the study run: {w}")
    _table(pdf, view.strata, font_size=7)
    _signature(pdf, view)
    return bytes(pdf.output())


def _title(pdf: FPDF, view: ReportView) -> None:
    pdf.set_font(FONT, "B", 16)
    pdf.set_text_color(*BLUE)
    pdf.multi_cell(0, 8, view.title, new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    pdf.ln(1)
    for label, value in view.facts:
        pdf.set_font(FONT, "B", 8.5)
        pdf.cell(30, 4.8, label)
        mono = label.endswith("SHA-256")
        pdf.set_font(FONT + "Mono" if mono else FONT, "", 7.5 if mono else 8.5)
        pdf.multi_cell(0, 4.8, value, align="L", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    if view.billing_banner:
        _box(pdf, view.billing_banner, fill=(251, 200, 196), bold=True)
    if view.banner:
        _box(pdf, view.banner, fill=(255, 244, 214), bold=False)
    _box(pdf, view.verdict, fill=(227, 243, 230) if view.verdict_ok else (251, 227, 225), bold=True)


def _box(pdf: FPDF, text: str, *, fill: tuple[int, int, int], bold: bool) -> None:
    pdf.set_font(FONT, "B" if bold else "", 9)
    pdf.set_fill_color(*fill)
    pdf.multi_cell(0, 5.5, text, fill=True, padding=2, align="L", new_x="LMARGIN", new_y="NEXT")
    pdf.set_fill_color(255, 255, 255)
    pdf.ln(2)


def _heading(pdf: FPDF, text: str) -> None:
    if pdf.get_y() > pdf.h - 50:  # keep a heading with what follows it
        pdf.add_page()
    pdf.ln(3)
    pdf.set_font(FONT, "B", 12)
    pdf.set_text_color(*BLUE)
    pdf.cell(0, 7, text, new_x="LMARGIN", new_y="NEXT")
    pdf.set_draw_color(*BLUE)
    pdf.line(pdf.l_margin, pdf.get_y(), pdf.w - pdf.r_margin, pdf.get_y())
    pdf.set_text_color(0, 0, 0)
    pdf.ln(1.5)


def _para(pdf: FPDF, text: str, *, size: float = 9, color=(0, 0, 0)) -> None:
    pdf.set_font(FONT, "", size)
    pdf.set_text_color(*color)
    pdf.multi_cell(0, 4.6, text, align="L", new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    pdf.ln(1)


def _table(pdf: FPDF, t: Table, *, font_size: float = 7.5) -> None:
    rough_height = 16 + 5.5 * (len(t.rows) + 1)
    if pdf.get_y() + min(rough_height, 110) > pdf.h - pdf.b_margin:  # keep short tables whole
        pdf.add_page()
    _heading(pdf, t.title)
    pdf.set_font(FONT, "", font_size)
    widths = _WIDTHS.get(t.title)
    if widths is not None and len(widths) != len(t.header):  # e.g. no truth column
        widths = None
    with pdf.table(
        col_widths=widths,
        line_height=1.45 * font_size * 0.3528 + 1,
        headings_style=FontFace(emphasis="BOLD", fill_color=HEAD_FILL),
        borders_layout="HORIZONTAL_LINES",
        padding=0.8,
        cell_fill_color=ZEBRA,
        cell_fill_mode="ROWS",
        text_align="LEFT",
    ) as table:
        table.row(list(t.header))
        for cells in t.rows:
            row = table.row()
            for i, cell in enumerate(cells):
                style = None
                if t.status_col == i:
                    color = {"pass": PASS, "fail": FAIL}.get(cell, GREY)  # n/a: neither
                    style = FontFace(emphasis="BOLD", color=color)
                row.cell(cell, style=style)
    if t.note:
        _para(pdf, t.note, size=7, color=GREY)


def _figure(pdf: FPDF, f: Figure, *, width: float = 170) -> None:
    img = io.BytesIO(f.png)
    with Image.open(io.BytesIO(f.png)) as im:
        height = width * im.height / im.width
    if pdf.get_y() + height + 12 > pdf.h - pdf.b_margin:
        pdf.add_page()
    pdf.ln(2)
    x = pdf.l_margin + (pdf.epw - width) / 2
    pdf.image(img, x=x, w=width)
    pdf.set_font(FONT, "B", 7.5)
    pdf.set_text_color(*GREY)
    pdf.multi_cell(0, 4, f"{f.title}. ", new_x="LMARGIN", new_y="NEXT")
    _para(pdf, f.caption, size=7, color=GREY)


def _signature(pdf: FPDF, view: ReportView) -> None:
    if pdf.get_y() > pdf.h - 80:  # the section (facts + instructions) stays on one page
        pdf.add_page()
    _heading(pdf, "Signature and verification")
    sig = view.signature
    if sig is None:
        _para(pdf, "This rendering is of an unsigned report.")
        return
    for label, value in (
        ("Signed file", sig.file_name),
        ("Algorithm", f"{sig.algorithm} over the RFC 8785 canonical JSON of the report"),
        ("Signing key id", sig.key_id),
        ("File SHA-256", sig.file_sha256),
    ):
        pdf.set_font(FONT, "B", 8.5)
        pdf.cell(30, 4.8, label)
        mono = label in ("Signing key id", "File SHA-256")
        pdf.set_font(FONT + "Mono" if mono else FONT, "", 7.5 if mono else 8.5)
        pdf.multi_cell(0, 4.8, value, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    _para(
        pdf,
        f"This PDF is a rendering and is not signed; the evidence is {sig.file_name} (SHA-256 "
        f"above and in every footer). Check it offline: rehealth report verify {sig.file_name} "
        f"--ca ca.crt (the key must be certified by the federation's CA for the issuer named; "
        f"--key coordinator.pub checks the key alone), or without this software: node "
        f"verify-report.mjs {sig.file_name} --ca ca.crt (Node.js standard library only). Any "
        f"changed byte, another key or a missing signature is rejected. By hand: Ed25519 over "
        f"the RFC 8785 (JCS) serialisation of the file's 'report' field.",
    )
