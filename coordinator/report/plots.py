"""Report figures as PNG bytes: Love plot, propensity-score overlap, estimates with CIs.

Uses ``matplotlib.figure.Figure`` with the Agg canvas directly (no pyplot): no global state, no
display, safe in threads and servers.
"""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from coordinator.report.document import NegativeControlSection, OutcomeRow, StratumRow
from shared.result import BalanceRow

BEFORE, AFTER, TRUTH = "#c0504d", "#1f5f9e", "#2e8b57"
TREATED, CONTROL = "#1f5f9e", "#e08a2c"
DPI = 150


def love_plot(rows: tuple[BalanceRow, ...], *, threshold: float) -> bytes:
    """|SMD| per covariate before and after weighting, with the balance ``threshold`` the report
    states (its ``balance_smd`` check; covariates whose SMD the privacy noise leaves unresolved
    are left out, and said so)."""
    order = sorted(
        (
            (r.covariate, abs(r.smd_before), abs(r.smd_after))
            for r in rows
            if r.smd_before is not None and r.smd_after is not None
        ),
        key=lambda c: c[1],
    )
    fig = Figure(figsize=(6.4, 0.28 * max(len(order), 1) + 1.3))
    ax = fig.add_subplot()
    if len(order) < len(rows):
        ax.set_title(
            f"{len(rows) - len(order)} of {len(rows)} covariates unresolved under the "
            "privacy noise (not shown)",
            fontsize=8,
        )
    y = range(len(order))
    ax.hlines(y, [min(b, a) for _, b, a in order], [max(b, a) for _, b, a in order], color="#bbbbbb", lw=1)
    ax.scatter(
        [b for _, b, _ in order], y, facecolors="white", edgecolors=BEFORE, label="before weighting", zorder=3
    )
    ax.scatter([a for _, _, a in order], y, color=AFTER, label="after weighting", zorder=3)
    ax.axvline(threshold, color="black", ls="--", lw=0.8)
    ax.text(threshold, len(order) - 0.4, f" |SMD| = {threshold:g}", fontsize=7, va="bottom")
    ax.set_yticks(list(y), [c for c, _, _ in order], fontsize=8)
    ax.set_ylim(-0.7, len(order) + 0.2)
    ax.set_xlim(left=0)
    ax.set_xlabel("absolute standardized mean difference")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def overlap_plot(strata: tuple[StratumRow, ...]) -> bytes:
    """Share of each arm per logit-score stratum: treated above the axis, controls below.

    Unbounded outer strata are drawn with their neighbour's width and hatched; strata outside
    common support (one arm empty) are shaded.
    """
    spans = _finite_spans(strata)
    filled = [i for i, s in enumerate(strata) if s.n_treated or s.n_control]
    if filled:  # empty caliper strata far out in the tails would squash the plot
        keep = range(filled[0], filled[-1] + 1)
        strata, spans = tuple(strata[i] for i in keep), [spans[i] for i in keep]
    n_t = sum(s.n_treated for s in strata) or 1
    n_c = sum(s.n_control for s in strata) or 1
    fig = Figure(figsize=(6.4, 3.0))
    ax = fig.add_subplot()
    for s, (lo, hi, open_ended) in zip(strata, spans):
        hatch = "///" if open_ended else None
        if not s.used:
            ax.axvspan(lo, hi, color="#eeeeee", zorder=0)
        ax.bar(
            lo,
            s.n_treated / n_t,
            width=hi - lo,
            align="edge",
            color=TREATED,
            alpha=0.85,
            edgecolor="white",
            hatch=hatch,
            lw=0.5,
        )
        ax.bar(
            lo,
            -s.n_control / n_c,
            width=hi - lo,
            align="edge",
            color=CONTROL,
            alpha=0.85,
            edgecolor="white",
            hatch=hatch,
            lw=0.5,
        )
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("logit propensity score (stratum edges)")
    ax.set_ylabel("share of arm")
    top = max(abs(v) for v in ax.get_ylim())
    ax.set_ylim(-top, top)
    ax.yaxis.set_major_formatter(lambda v, _: f"{abs(v):.0%}")
    ax.text(0.01, 0.97, f"treated (n = {n_t:,})", transform=ax.transAxes, va="top", color=TREATED, fontsize=8)
    ax.text(
        0.99,
        0.03,
        f"control (n = {n_c:,})",
        transform=ax.transAxes,
        va="bottom",
        ha="right",
        color=CONTROL,
        fontsize=8,
    )
    ax.set_title(
        "grey: no common support (not in the estimate); hatched: open-ended stratum",
        fontsize=7,
        color="#555555",
        loc="right",
    )
    return _png(fig)


def estimate_plot(outcomes: tuple[OutcomeRow, ...]) -> bytes:
    """ATT per outcome with its 95% CI (thin), the sampling-only CI (thick) and the truth."""
    fig = Figure(figsize=(6.4, 0.95 * len(outcomes) + 0.5))
    axes = fig.subplots(len(outcomes), 1, squeeze=False)[:, 0]
    for ax, row in zip(axes, outcomes):
        o, truth = row.estimate, row.truth
        ax.hlines(0, *o.ci, color=AFTER, lw=1.5)
        half = 1.96 * o.se_sampling
        ax.hlines(0, o.att - half, o.att + half, color=AFTER, lw=5, alpha=0.45)
        ax.plot([o.att], [0], "o", color=AFTER, label="ATT, 95% CI", zorder=3)
        if truth is not None:
            ax.plot([truth], [0], "|", color=TRUTH, ms=18, mew=2.5, label="simulation truth", zorder=2)
        ax.axvline(0, color="black", lw=0.6, ls=":")
        ax.set_yticks([])
        ax.set_ylabel(o.name, rotation=0, ha="right", va="center", fontsize=8)
        lo = min(o.ci[0], 0.0, truth if truth is not None else 0.0)
        hi = max(o.ci[1], 0.0, truth if truth is not None else 0.0)
        pad = 0.08 * (hi - lo or 1.0)
        ax.set_xlim(lo - pad, hi + pad)
        ax.tick_params(axis="x", labelsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=7, frameon=False, ncol=2)
    fig.text(
        0.01,
        0.99,
        "thick: sampling-only CI; thin: full CI incl. privacy noise",
        fontsize=7,
        va="top",
        color="#555555",
    )
    return _png(fig, top=0.9)


def negative_control_plot(section: NegativeControlSection) -> bytes:
    """Each negative control's log ratio of means with its 95% CI, the fitted systematic-error
    null (its mean and the band mean ± 1.96 SD), and the EASE threshold (± dashed)."""
    rows = [r for r in section.controls if r.log_ratio is not None and r.log_ratio_ci is not None]
    fig = Figure(figsize=(6.4, 0.16 * len(rows) + 1.0))
    ax = fig.subplots()
    for i, r in enumerate(rows):
        assert r.log_ratio_ci is not None and r.log_ratio is not None
        ax.hlines(i, *r.log_ratio_ci, color=AFTER, lw=1.2)
        ax.plot([r.log_ratio], [i], "o", color=AFTER, ms=3)
    if section.null_mean is not None and section.null_sd is not None:
        m, sd = section.null_mean, section.null_sd
        ax.axvspan(m - 1.96 * sd, m + 1.96 * sd, color=TRUTH, alpha=0.15, lw=0)
        ax.axvline(m, color=TRUTH, lw=1.2, label="fitted systematic error (mean, ±1.96 SD)")
    for x in (-section.ease_threshold, section.ease_threshold):
        ax.axvline(x, color="black", lw=0.6, ls="--")
    ax.axvline(0, color="black", lw=0.6, ls=":")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r.name for r in rows], fontsize=6)
    ax.invert_yaxis()  # the table's order, top down
    ax.set_xlabel("log ratio of means (0 = no effect, the truth for every control)", fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(loc="upper right", fontsize=6, frameon=False)
    return _png(fig)


def _finite_spans(strata: tuple[StratumRow, ...]) -> list[tuple[float, float, bool]]:
    """(lo, hi, open_ended) per stratum, unbounded edges replaced by the neighbour's width."""
    widths = [s.hi - s.lo for s in strata if s.lo is not None and s.hi is not None]
    default = (sum(widths) / len(widths)) if widths else 1.0
    spans = []
    for i, s in enumerate(strata):
        lo, hi = s.lo, s.hi
        if lo is not None and hi is not None:
            spans.append((lo, hi, False))
        elif hi is not None:  # open below: the next stratum's width
            nxt = strata[i + 1] if i + 1 < len(strata) else None
            w = (nxt.hi - nxt.lo) if nxt and nxt.hi is not None and nxt.lo is not None else default
            spans.append((hi - w, hi, True))
        elif lo is not None:  # open above: the previous stratum's width
            prv = strata[i - 1] if i > 0 else None
            w = (prv.hi - prv.lo) if prv and prv.hi is not None and prv.lo is not None else default
            spans.append((lo, lo + w, True))
        else:
            spans.append((-default / 2, default / 2, True))
    return spans


def _png(fig: Figure, *, top: float | None = None) -> bytes:
    if top is not None:
        fig.tight_layout(rect=(0, 0, 1, top))
    else:
        fig.tight_layout()
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()
