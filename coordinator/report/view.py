"""The report as a reader sees it: titled tables of formatted cells, shared by HTML and PDF.

Both renderings draw from this one view, so the HTML and the PDF show the same numbers in the
same words; formatting lives in :mod:`fmt`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from coordinator.report import fmt, plots
from coordinator.report.document import EvidenceReport, ValueFigure

AUDIENCES = (
    ("insurer", "For the insurer and reinsurer"),
    ("hr", "For enterprise HR and ESG"),
    ("regulator", "For the regulator"),
)


@dataclass(frozen=True)
class Table:
    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""
    status_col: int | None = None  # column holding "pass"/"fail", styled by the renderers


@dataclass(frozen=True)
class Figure:
    title: str
    png: bytes
    caption: str


@dataclass(frozen=True)
class Signature:
    algorithm: str
    key_id: str
    file_sha256: str
    file_name: str


@dataclass(frozen=True)
class ReportView:
    title: str
    facts: tuple[tuple[str, str], ...]  # label, value: the header block
    banner: str  # simulation notice, or ""
    verdict: str  # diagnostics summary line
    verdict_ok: bool
    summaries: tuple[tuple[str, str], ...]  # audience label, text
    value: Table
    estimates: Table
    checks: Table
    balance: Table
    sites: Table
    privacy: Table
    attrition: Table
    strata: Table
    figures: dict[str, Figure]
    warnings: tuple[str, ...]
    estimand: str
    spec_json: str
    signature: Signature | None


def report_view(doc: EvidenceReport, *, signature: Signature | None = None) -> ReportView:
    """Format ``doc`` for reading; ``signature`` describes the signed file when there is one."""
    failed = [c.label for c in doc.checks if not c.passed]
    smd_max = doc.smd_threshold  # as the signed document states it
    return ReportView(
        title=f"Evidence report: {doc.study.name}",
        facts=(
            ("Study", doc.study.name + (f" — {doc.study.description}" if doc.study.description else "")),
            ("Issuer", doc.issuer),
            ("Issued", doc.issued_at),
            ("Study run", f"{doc.study.started_at} to {doc.study.finished_at}"),
            ("Estimand", f"{doc.estimand.name} (average treatment effect on the treated)"),
            ("Spec SHA-256", doc.study.spec_hash),
            ("Software", f"{doc.software.report_generator}; study run with {doc.software.study_software}"),
            ("Schema", doc.schema_version),
        ),
        banner=(
            "SIMULATED STUDY: synthetic data with a known true effect, shown as "
            "'simulation truth'. Not real-world evidence."
        )
        if doc.synthetic
        else "",
        verdict=(
            f"All {len(doc.checks)} diagnostics passed."
            if not failed
            else f"{len(failed)} of {len(doc.checks)} diagnostics FAILED: {', '.join(failed)}."
        ),
        verdict_ok=not failed,
        summaries=tuple((label, getattr(doc.summaries, key)) for key, label in AUDIENCES),
        value=_value_table(doc),
        estimates=_estimates_table(doc),
        checks=Table(
            title="Diagnostics against stated thresholds",
            header=("Check", "Rule", "Value", "Threshold", "Result", "Detail"),
            rows=tuple(
                (
                    c.label,
                    c.rule,
                    fmt.num(c.value, digits=4),
                    fmt.num(c.threshold),
                    "pass" if c.passed else "fail",
                    c.detail + (" (reported by the study run)" if c.source == "study" else ""),
                )
                for c in doc.checks
            ),
            status_col=4,
        ),
        balance=Table(
            title="Covariate balance",
            header=(
                "Covariate",
                "SMD before",
                "SMD after",
                "Var. ratio before",
                "Var. ratio after",
                "Balanced",
            ),
            rows=tuple(
                (
                    b.covariate,
                    fmt.num(b.smd_before),
                    fmt.num(b.smd_after)
                    + (
                        f" ± {fmt.num(b.smd_after_noise_sd)}"
                        if b.smd_after is not None and b.smd_after_noise_sd
                        else ""
                    ),
                    fmt.num(b.var_ratio_before),
                    fmt.num(b.var_ratio_after),
                    {True: "pass", False: "fail", None: "not shown"}[doc.balanced(b)],
                )
                for b in doc.balance
            ),
            note="SMD: standardized mean difference, treated minus (reweighted) controls; "
            f"balanced when |SMD after| < {smd_max:g}; under DP ± is the SD the privacy noise gives "
            "the SMD, and a covariate passes only with a Bonferroni margin of noise SDs below the "
            "threshold, fails only with that margin above it, and is otherwise not shown. n/a: the "
            "privacy noise leaves the covariate's variance unresolved (noisy variance below 3 noise SDs).",
            status_col=5,
        ),
        sites=Table(
            title="Sites",
            header=("Site", "Status", "People", "Treated", "Control"),
            rows=tuple(
                (
                    s.name,
                    s.status + (f": {s.error}" if s.error else ""),
                    fmt.num(s.n),
                    fmt.num(s.n_treated),
                    fmt.num(s.n_control),
                )
                for s in doc.sites
            ),
            note="Counts as released by each site"
            + (" (with differential-privacy noise)." if doc.privacy.enabled else "."),
        ),
        privacy=_privacy_table(doc),
        attrition=_attrition_table(doc),
        strata=_strata_table(doc),
        figures={
            "estimates": Figure(
                "Estimates with 95% confidence intervals",
                plots.estimate_plot(doc.outcomes),
                "ATT per outcome: thin bar the full 95% CI, thick bar the part "
                "from sampling alone; the difference is privacy noise.",
            ),
            "love": Figure(
                "Love plot",
                plots.love_plot(doc.balance, threshold=smd_max),
                "Absolute SMD per covariate before (open) and after (filled) "
                f"weighting; dashed line: the {smd_max:g} threshold.",
            ),
            "overlap": Figure(
                "Propensity-score overlap by arm",
                plots.overlap_plot(doc.strata),
                "Share of each arm per stratum of the logit propensity score.",
            ),
        },
        warnings=doc.warnings,
        estimand=doc.estimand.description,
        spec_json=json.dumps(doc.study.spec, indent=2, sort_keys=True),
        signature=signature,
    )


def _strata_table(doc: EvidenceReport) -> Table:
    shown = [(i, s) for i, s in enumerate(doc.strata) if s.n_treated or s.n_control]
    empty = len(doc.strata) - len(shown)
    note = f"Method: {doc.estimand.strata_method}. Strata lacking either arm are outside common support."
    if empty:
        note += f" {empty} empty strata (no one in either arm) are not listed."
    return Table(
        title="Strata of the logit propensity score",
        header=("Stratum", "From", "To", "Treated", "Control", "In estimate"),
        rows=tuple(
            (
                str(i + 1),
                fmt.edge(s.lo, lower=True),
                fmt.edge(s.hi, lower=False),
                fmt.num(s.n_treated),
                fmt.num(s.n_control),
                "yes" if s.used else "no",
            )
            for i, s in shown
        ),
        note=note,
    )


def _value_table(doc: EvidenceReport) -> Table:
    v = doc.value
    figs = [
        f
        for f in (v.claims_saved, v.net_benefit, v.roi, v.events_averted, v.absence_days_averted)
        if f is not None
    ]
    header: tuple[str, ...] = ("Figure", "Estimate", "95% CI", "How computed")
    if doc.synthetic:
        header = header[:3] + ("Simulation truth",) + header[3:]
    rows = []
    for f in figs:
        cells = [
            f.label,
            _fig_value(f, f.estimate),
            f"{_fig_value(f, f.ci_low)} to {_fig_value(f, f.ci_high)}",
        ]
        if doc.synthetic:
            cells.append(_fig_value(f, f.truth) if f.truth is not None else "n/a")
        rows.append((*cells, f.formula))
    note = (
        f"Over the {fmt.num(v.n_treated)} treated in common support; intervention cost "
        f"{fmt.num(v.cost_per_person)} per person, {fmt.num(v.intervention_cost)} in total "
        f"(from the study spec). Amounts in the currency of the claims data."
    )
    if v.roi is None and v.claims_saved is not None:
        note += " ROI is not stated: the spec gives no intervention cost."
    return Table(title="What the effect is worth", header=header, rows=tuple(rows), note=note)


def _fig_value(f: ValueFigure, x: float | None) -> str:
    return fmt.pct(x, digits=0) if f.unit == "ratio" else fmt.num(x)


def _estimates_table(doc: EvidenceReport) -> Table:
    header = [
        "Outcome",
        "ATT",
        "SE",
        "95% CI",
        "Privacy share of CI",
        "Treated mean",
        "Control mean*",
        "Treated / control",
    ]
    if doc.synthetic:
        header.insert(4, "Sim. truth")
    rows = []
    for row in doc.outcomes:
        o = row.estimate
        cells = [
            o.name + (" (binary)" if o.kind == "binary" else ""),
            fmt.num(o.att),
            fmt.num(o.se),
            fmt.ci(*o.ci),
        ]
        if doc.synthetic:
            cells.append(fmt.num(row.truth))
        cells += [
            fmt.pct(o.privacy_share_of_ci),
            fmt.num(o.treated_mean),
            fmt.num(o.control_mean),
            f"{fmt.num(o.n_treated)} / {fmt.num(o.n_control)}",
        ]
        rows.append(tuple(cells))
    notes = [
        "*Control mean: the treated's counterfactual mean, controls reweighted to the "
        "treated within strata. Privacy share: part of the CI width due to privacy "
        "noise."
    ]
    for o in (row.estimate for row in doc.outcomes):
        if o.relative_risk is not None:
            rr_ci = f" (95% CI {fmt.ci(*o.relative_risk_ci)})" if o.relative_risk_ci else ""
            notes.append(f"{o.name}: relative risk {fmt.num(o.relative_risk)}{rr_ci}.")
        if o.reference:
            ref = ", ".join(f"{k} {fmt.num(v)}" for k, v in sorted(o.reference.items()))
            notes.append(f"{o.name}: 1:1 nearest-neighbour matching reference: {ref}.")
    return Table(title="Effect estimates (ATT)", header=tuple(header), rows=tuple(rows), note=" ".join(notes))


def _privacy_table(doc: EvidenceReport) -> Table:
    p = doc.privacy
    if not p.enabled:
        return Table(
            title="Privacy spent",
            header=("Item", "Value"),
            rows=(("Differential privacy", "off: no noise added"),),
        )
    rows = [
        ("Differential privacy", "on (Gaussian mechanism)"),
        ("Study budget ε", fmt.num(p.epsilon)),
        ("δ", "n/a" if p.delta is None else f"{p.delta:g}"),
        ("Accountant", p.accountant or "n/a"),
        ("Largest privacy share of a CI's width", fmt.pct(p.max_privacy_share_of_ci)),
    ]
    rows += [(f"ε charged at {b.site}", fmt.num(b.epsilon)) for b in p.per_site]
    limited = [row.estimate for row in doc.outcomes if row.estimate.ratio_limit is not None]
    for o in limited:
        rows.append((f"{o.name}: CI width ÷ physical limit", fmt.ratio(o.ratio_limit)))
        rows.append((f"{o.name}: CI width ÷ exact (estimated)", fmt.ratio(o.ratio_exact_est)))
    return Table(
        title="Privacy spent",
        header=("Item", "Value"),
        rows=tuple(rows),
        note=LIMIT_NOTE if limited else "",
    )


#: What the physical limit is, beside the ratios (:mod:`shared.dp.limit`).
LIMIT_NOTE = (
    "Physical limit: the 95% CI width if a trusted party holding all rows had released the ATT "
    "itself once with Gaussian noise at this ε and δ (sensitivity: the outcome's public range "
    "times the largest weight one person carries in the estimate), so a ratio near 1 means the "
    "privacy mechanism costs little beyond what the caps and strata impose. Exact (estimated): "
    "the CI width without privacy noise, from the sampling SE of the noisy table."
)


def _attrition_table(doc: EvidenceReport) -> Table:
    a = doc.attrition
    return Table(
        title="Attrition and common support",
        header=("Item", "Value"),
        rows=(
            ("Treated in common support", fmt.num(a.treated_in_support)),
            (
                "Treated dropped (no controls in their stratum)",
                f"{fmt.num(a.treated_dropped)} ({fmt.pct(a.treated_dropped_share)})",
            ),
            ("Controls in common support", fmt.num(a.control_in_support)),
            ("Strata used / total", f"{a.strata_used} / {a.strata_total}"),
        ),
    )
