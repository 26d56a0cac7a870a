"""The report as a reader sees it: titled tables of formatted cells, shared by HTML and PDF.

Both renderings draw from this one view, so the HTML and the PDF show the same numbers in the
same words; formatting lives in :mod:`fmt`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from coordinator.report import fmt, plots
from coordinator.report.document import EvidenceReport, ValueFigure, per_site_figures
from shared.features import FEATURES

#: The 16 clinical features' units (a study's own covariates are "as declared").
UNITS = {f.name: f.unit or ("0/1" if f.kind == "binary" else "") for f in FEATURES}

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
    billing_banner: str  # "NOT FOR BILLING: ..." when a gate failed, else ""
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
    sensitivity: Table
    sensitivity_lines: tuple[str, ...]  # one plain-language line per outcome
    method: tuple[tuple[str, str], ...]  # heading, paragraph
    assumptions: tuple[str, ...]
    limitations: tuple[str, ...]
    spec_covariates: Table
    spec_outcomes: Table
    figures: dict[str, Figure]
    warnings: tuple[str, ...]
    estimand: str
    spec_json: str
    signature: Signature | None
    #: the negative controls, the fitted null and the calibrated outcomes (None: none declared)
    negative_controls: Table | None = None
    calibrated: Table | None = None


def report_view(doc: EvidenceReport, *, signature: Signature | None = None) -> ReportView:
    """Format ``doc`` for reading; ``signature`` describes the signed file when there is one."""
    failed = [c.label for c in doc.checks if c.failed]
    n_gates, n_info = len(doc.gates), len(doc.checks) - len(doc.gates)
    info = (
        f" {n_info} further check{'s' if n_info != 1 else ''} shown as information (no threshold)."
        if n_info
        else ""
    )
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
        billing_banner=""
        if doc.billable
        else (
            f"NOT FOR BILLING: {len(doc.failed_gates)} diagnostic gate"
            f"{'s' if len(doc.failed_gates) != 1 else ''} failed ({', '.join(failed)}). "
            "No saving is claimed; the estimates are shown for information only."
        ),
        verdict=(
            f"All {n_gates} diagnostic gates passed.{info}"
            if not failed
            else f"{len(failed)} of {n_gates} diagnostic gates FAILED: {', '.join(failed)}.{info}"
        ),
        verdict_ok=not failed,
        summaries=tuple((label, getattr(doc.summaries, key)) for key, label in AUDIENCES),
        value=_value_table(doc),
        estimates=_estimates_table(doc),
        checks=Table(
            title="Diagnostics against stated thresholds",
            header=("Check", "Rule", "Value", "Threshold", "Result", "Detail"),
            note="Result: pass or fail for a gate (a threshold; a failed gate makes the report not "
            "for billing); info for a check with no threshold, shown as information and never "
            "counted as a pass.",
            rows=tuple(
                (
                    c.label,
                    c.rule,
                    fmt.num(c.value, digits=4),
                    _threshold(c.threshold),
                    "info" if c.kind == "info" else ("pass" if c.passed else "fail"),
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
        sites=_sites_table(doc),
        privacy=_privacy_table(doc),
        attrition=_attrition_table(doc),
        strata=_strata_table(doc),
        figures={
            **_nc_figures(doc),
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
        sensitivity=_sensitivity_table(doc),
        sensitivity_lines=tuple(
            e.statement + (f" ({e.note[:1].upper()}{e.note[1:]}.)" if e.note else "")
            for e in doc.sensitivity.evalues
        ),
        method=(
            ("Design", doc.method.design),
            ("Propensity model", doc.method.propensity_model),
            ("Strata", doc.method.strata),
            ("Outcome model", doc.method.outcome_model),
            ("Variance", doc.method.variance),
            ("Privacy: what was released", doc.method.privacy),
            ("Per-site estimates", doc.method.per_site),
            ("Multiplicity", doc.method.multiplicity),
            *(
                (("Negative controls and empirical calibration", doc.method.negative_controls),)
                if doc.method.negative_controls
                else ()
            ),
        ),
        assumptions=doc.method.assumptions,
        limitations=doc.method.limitations,
        spec_covariates=_spec_covariates(doc),
        spec_outcomes=_spec_outcomes(doc),
        warnings=doc.warnings,
        estimand=doc.estimand.description,
        spec_json=json.dumps(doc.study.spec, indent=2, sort_keys=True),
        signature=signature,
        negative_controls=_negative_controls_table(doc),
        calibrated=_calibrated_table(doc),
    )


def _sites_table(doc: EvidenceReport) -> Table:
    """The participating sites; their released counts unless the spec says ``[report]
    per_site = false`` (a pooled small-firm study: names only, no per-company figure)."""
    if not per_site_figures(doc.study.spec):
        return Table(
            title="Participating sites",
            header=("Site", "Status"),
            rows=tuple((s.name, s.status + (f": {s.error}" if s.error else "")) for s in doc.sites),
            note="A pooled study ([report] per_site = false): every figure in this report is over "
            "all participants together; no site's own count or estimate is shown.",
        )
    return Table(
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
    )


def _threshold(x: float | None) -> str:
    """A threshold as stated (``1e-08``, not ``0.0000000100``)."""
    return f"{x:g}" if x is not None and 0 < abs(x) < 1e-3 else fmt.num(x)


def _bound(x) -> str:
    return "n/a" if x is None else f"{x:g}"


def _nc_figures(doc: EvidenceReport) -> dict[str, Figure]:
    if doc.negative_controls is None:
        return {}
    return {
        "negative_controls": Figure(
            "Negative controls and the fitted systematic error",
            plots.negative_control_plot(doc.negative_controls),
            "Each negative control's estimate (true effect 0) on the log ratio of means with its "
            "95% CI; shaded: the fitted systematic-error distribution (mean ± 1.96 SD); dashed: "
            f"± the EASE threshold {doc.negative_controls.ease_threshold:g}.",
        )
    }


def _negative_controls_table(doc: EvidenceReport) -> Table | None:
    nc = doc.negative_controls
    if nc is None:
        return None
    rows = tuple(
        (
            r.name,
            fmt.num(r.att),
            fmt.ci(*r.ci),
            "n/a" if r.log_ratio is None else _signed(r.log_ratio),
            "n/a"
            if r.log_ratio_ci is None
            else f"{_signed(r.log_ratio_ci[0])} to {_signed(r.log_ratio_ci[1])}",
        )
        for r in nc.controls
    )
    fitted = (
        "no null fitted (too few controls with a log ratio)"
        if nc.ease is None or nc.null_mean is None or nc.null_sd is None
        else f"fitted systematic error N({nc.null_mean:.3f}, {nc.null_sd:.3f}²), "
        f"EASE {nc.ease:.3f} (gate: ≤ {nc.ease_threshold:g})"
    )
    return Table(
        title=f"Negative controls ({nc.n}; true effect 0)",
        header=("Negative control", "ATT", "95% CI", "log ratio", "95% CI (log ratio)"),
        rows=rows,
        note=f"Scale: {nc.scale}. {fitted}, by maximum likelihood from {nc.n_used} of {nc.n} "
        "controls (Schuemie et al. 2014)"
        + (f"; left out (an arm's mean not positive): {', '.join(nc.excluded)}" if nc.excluded else "")
        + ".",
    )


def _signed(x: float) -> str:
    """A log ratio to three decimals with a true minus sign, as the other tables write numbers."""
    return f"{x:.3f}".replace("-", "−")


def _calibrated_table(doc: EvidenceReport) -> Table | None:
    nc = doc.negative_controls
    if nc is None:
        return None

    def p(x: float | None) -> str:
        return "n/a" if x is None else (f"{x:.3g}" if x >= 1e-4 else "< 0.0001")

    att = {o.estimate.name: o.estimate.att for o in doc.outcomes}
    rows = tuple(
        (
            c.outcome,
            fmt.num(att.get(c.outcome)),
            fmt.ci(*c.ci),
            p(c.p),
            fmt.num(c.calibrated_att),
            "n/a" if c.calibrated_ci is None else fmt.ci(*c.calibrated_ci),
            p(c.calibrated_p),
        )
        for c in nc.calibrated
    )
    return Table(
        title="Empirically calibrated p-values and confidence intervals",
        header=("Outcome", "ATT", "95% CI", "p", "Calibrated ATT", "Calibrated 95% CI", "Calibrated p"),
        rows=rows,
        note="Calibrated against the systematic error the negative controls show (Schuemie et al. "
        "2014 for p, 2018 for the CI), on the log ratio of means and mapped back to the outcome's "
        f"units. {nc.assumption}",
    )


def _sensitivity_table(doc: EvidenceReport) -> Table:
    rows = []
    for e in doc.sensitivity.evalues:
        rr = "n/a" if e.rr is None else fmt.num(e.rr)
        if e.rr_ci is not None:
            rr += f" ({fmt.ci(*e.rr_ci)})"
        rows.append(
            (
                e.outcome,
                {"risk_ratio": "risk ratio", "smd": "SMD → RR ≈ exp(0.91·d)"}[e.scale],
                rr,
                "n/a" if e.e_value is None else f"{e.e_value:.2f}",
                "n/a" if e.e_value_ci is None else f"{e.e_value_ci:.2f}",
            )
        )
    return Table(
        title="Sensitivity to an unmeasured confounder (E-values)",
        header=("Outcome", "Scale", "Risk ratio (95% CI)", "E-value", "E-value, CI"),
        rows=tuple(rows),
        note=doc.sensitivity.method,
    )


def _spec_covariates(doc: EvidenceReport) -> Table:
    covs = doc.study.spec.get("covariates", [])
    return Table(
        title="Specification: covariates and their public bounds",
        header=("Covariate", "Kind", "Unit", "Lower bound", "Upper bound"),
        rows=tuple(
            (
                str(c.get("name")),
                str(c.get("kind", "")),
                UNITS.get(str(c.get("name")), "as declared"),
                _bound(c.get("lo")),
                _bound(c.get("hi")),
            )
            for c in covs
        ),
        note="Each covariate is scaled to [0, 1] by these bounds; a site clips values outside them "
        "and counts them.",
    )


#: What an outcome's number is counted in; the spec names no currency.
OUTCOME_UNITS = {
    "claims_cost": "currency of the claims data (the spec names none)",
    "cv_event": "0/1 (event in follow-up)",
    "absence_days": "days",
}


def _spec_outcomes(doc: EvidenceReport) -> Table:
    outs = doc.study.spec.get("outcomes", [])
    return Table(
        title="Specification: outcomes, caps and units",
        header=("Outcome", "Kind", "Lower bound", "Cap", "Unit"),
        rows=tuple(
            (
                str(o.get("name")),
                str(o.get("kind", "")),
                _bound(o.get("lo", 0.0)),
                fmt.num(o.get("cap")),
                OUTCOME_UNITS.get(str(o.get("name")), "not stated"),
            )
            for o in outs
        ),
        note="Outcomes are clipped to [lower bound, cap] before they are summed; the follow-up "
        "window is set at each site (see Design).",
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
    unclaimed = {"claims_saved", "net_benefit", "roi"} if not v.saving_claimed else set()
    for f in figs:
        cells = [
            f.label + (" (estimate, not claimed)" if f.name in unclaimed else ""),
            _fig_value(f, f.estimate),
            f"{_fig_value(f, f.ci_low)} to {_fig_value(f, f.ci_high)}",
        ]
        if doc.synthetic:
            cells.append(_fig_value(f, f.truth) if f.truth is not None else "n/a")
        rows.append((*cells, f.formula))
    note = (
        v.claim_note
        + " "
        + (
            f"Over the {fmt.num(v.n_treated)} treated in common support; intervention cost "
            f"{fmt.num(v.cost_per_person)} per person, {fmt.num(v.intervention_cost)} in total "
            f"(from the study spec). Amounts in the currency of the claims data."
        )
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
            rows=(
                ("Differential privacy", "off: no noise added"),
                ("What was released", "exact aggregates, see Method and provenance: Privacy"),
            ),
        )
    rows = [
        ("Differential privacy", "on (Gaussian mechanism)"),
        ("Study budget ε", fmt.num(p.epsilon)),
        ("δ", "n/a" if p.delta is None else f"{p.delta:g}"),
        ("Accountant", p.accountant or "n/a"),
        ("Largest privacy share of a CI's width", fmt.pct(p.max_privacy_share_of_ci)),
    ]
    for b in p.per_site:
        rows.append((f"ε this study charged at {b.site}", fmt.num(b.epsilon)))
        if b.ledger_total is not None:
            rows.append((f"ε spent at {b.site} in all (its ledger)", fmt.num(b.ledger_total)))
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
