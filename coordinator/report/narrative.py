"""Plain-language summaries per audience, written from the numbers in the report.

Every number in the prose is read from the document and formatted by :mod:`fmt`; none is typed
in. The sentences only choose words from the numbers (lower/higher, passed/failed, whether the
CI excludes zero), so the summary cannot disagree with the tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coordinator.report import fmt
from coordinator.report.document import per_site_figures
from coordinator.report.pooled import pooled_hr_paragraphs
from coordinator.report.value import ABSENCE, CLAIMS

if TYPE_CHECKING:
    from coordinator.report.document import EvidenceReport, Summaries, ValueFigure
    from shared.result import OutcomeEstimate


def write_summaries(doc: "EvidenceReport") -> "Summaries":
    """The three audience summaries of ``doc`` (its ``summaries`` field is ignored)."""
    from coordinator.report.document import Summaries

    return Summaries(insurer=_insurer(doc), hr=_hr(doc), regulator=_regulator(doc))


def _insurer(doc: "EvidenceReport") -> str:
    v = doc.value
    parts = [_who(doc)]
    claims = _get(doc, CLAIMS)
    if claims is not None:
        parts.append(
            f"Their claims cost was {fmt.num(abs(claims.att))} per person "
            f"{_direction(claims.att)} than the comparison group's "
            f"(ATT 95% CI {fmt.ci(*claims.ci)}); {_significance(claims)}"
        )
    if v.claims_saved is not None and v.saving_claimed:
        parts.append(f"Claims cost saved across the treated: {_figure(v.claims_saved)}.")
    elif v.claims_saved is not None:
        parts.append(_unclaimed(doc))
    if v.roi is not None and v.saving_claimed:
        parts.append(
            f"Against an intervention cost of {fmt.num(v.intervention_cost)} "
            f"({fmt.num(v.cost_per_person)} per person), the return on investment is "
            f"{fmt.pct(v.roi.estimate, digits=0)} (95% CI {fmt.pct(v.roi.ci_low, digits=0)} to "
            f"{fmt.pct(v.roi.ci_high, digits=0)}){_open(v.roi)}."
        )
    if v.events_averted is not None:
        parts.append(f"Cardiovascular events averted: {_figure(v.events_averted)}.")
    parts += [_checks_sentence(doc), _privacy_sentence(doc), _synthetic_sentence(doc)]
    return _join(parts)


def _hr(doc: "EvidenceReport") -> str:
    v = doc.value
    parts = [_who(doc)]
    absence = _get(doc, ABSENCE)
    if v.absence_days_averted is not None and absence is not None:  # the figure comes from the row
        parts.append(
            f"Absence days averted: {_figure(v.absence_days_averted)}, that is "
            f"{fmt.num(abs(absence.att))} {_direction(absence.att, 'fewer', 'more')} days per "
            f"participant than comparable colleagues who did not take part; "
            f"{_significance(absence)}"
        )
    if v.events_averted is not None:
        parts.append(f"Cardiovascular events averted: {_figure(v.events_averted)}.")
    if v.net_benefit is not None and v.saving_claimed:
        parts.append(
            f"Net benefit after the intervention cost: {_figure(v.net_benefit)}{_open(v.net_benefit)}."
        )
    elif v.net_benefit is not None:
        parts.append(_unclaimed(doc))
    if not per_site_figures(doc.study.spec):  # a pooled small-firm study (coordinator.report.pooled)
        parts += pooled_hr_paragraphs(doc)
    parts.append(_hr_privacy(doc))
    parts += [_checks_sentence(doc), _synthetic_sentence(doc)]
    return _join(parts)


def _hr_privacy(doc: "EvidenceReport") -> str:
    """What HR may say about privacy, exact to what was released (method.privacy_statement
    has the detail): DP studies released only noisy aggregates; exact studies released exact
    aggregates, which are not anonymous when a cell is small."""
    from coordinator.report.method import SMALL_CELL, smallest_treated_cell

    over = f"All figures are aggregates over {_over_sites(doc)}; no row, pseudonym or score left any site."
    if doc.privacy.enabled:
        return (
            over + " Every release carried differential-privacy noise, so publishing these "
            "figures discloses no more about any employee than the study's privacy budget allows."
        )
    smallest = smallest_treated_cell(doc.strata)
    small = (
        f", down to a stratum of {smallest} treated {'person' if smallest == 1 else 'people'}"
        if smallest is not None and smallest < SMALL_CELL
        else ""
    )
    return (
        over + f" The study ran without differential privacy: the sites released exact aggregates"
        f"{small}, which are not anonymous, so use the headline figures rather than the tables "
        "in management and ESG reporting."
    )


def _regulator(doc: "EvidenceReport") -> str:
    a, e = doc.attrition, doc.estimand
    parts = [
        f"Estimand: the average treatment effect on the treated (ATT), by propensity-score "
        f"stratification ({e.strata_method}, {e.n_strata_used} of {e.n_strata} strata with both "
        f"arms) over {_over_sites(doc)}.",
        f"{fmt.num(a.treated_dropped)} treated ({fmt.pct(a.treated_dropped_share)}) fell outside "
        f"common support and are not in the estimate.",
        _checks_sentence(doc),
        _billing_sentence(doc),
        _privacy_sentence(doc),
        _negative_control_sentence(doc),
        _registration_sentence(doc),
        f"The study specification has SHA-256 {doc.study.spec_hash}; the report was produced by "
        f"{doc.software.report_generator} and is signed with Ed25519 over its canonical JSON, so "
        f"any change to it is detectable offline with the issuer's public key.",
        _synthetic_sentence(doc),
    ]
    return _join(parts)


def _negative_control_sentence(doc: "EvidenceReport") -> str:
    """What the negative controls showed, with the calibrated claims CI ("" when none)."""
    nc = doc.negative_controls
    if nc is None:
        return ""
    if nc.ease is None or nc.null_mean is None:
        return f"The systematic error could not be estimated from the {nc.n} negative controls."
    verdict = "within" if nc.ease <= nc.ease_threshold else "above"
    cal = {c.outcome: c for c in nc.calibrated}.get("claims_cost")
    calibrated = (
        f" Calibrated against them, the claims ATT is {fmt.num(cal.calibrated_att)} "
        f"(95% CI {fmt.ci(*cal.calibrated_ci)}), assuming the error is the same for every effect size."
        if cal is not None and cal.calibrated_ci is not None
        else ""
    )
    return (
        f"{nc.n_used} negative-control outcomes (true effect zero) show a systematic error of "
        f"{nc.null_mean:+.3f} ± {nc.null_sd:.3f} on the log ratio of means: EASE {nc.ease:.3f}, "
        f"{verdict} the {nc.ease_threshold:g} threshold." + calibrated
    )


def _registration_sentence(doc: "EvidenceReport") -> str:
    """Whether the analysis was fixed before the data could steer it, in one sentence."""
    reg = doc.registration
    if reg is None:
        return (
            "The study was not pre-registered: nothing shows that its specification was fixed before it ran."
        )
    at = reg.record.get("registered_at", "?")
    if reg.spec_matches and reg.preceded_start:
        return (
            f"The specification and analysis plan were registered (signed with the report's key) at {at}, "
            "before the study started and so before any outcome was read, and were not changed since."
        )
    said = []
    if not reg.spec_matches:
        said.append("the specification was changed after it was registered")
    if not reg.preceded_start:
        said.append(f"the registration ({at}) does not precede the study's start")
    return "Pre-registration does not hold: " + " and ".join(said) + "."


def _over_sites(doc: "EvidenceReport") -> str:
    """The sites the figures come from, naming any that left the study (``min_nodes``): their
    data are not in the estimate, which a reader must not have to find in the sites table."""
    ok = [s.name for s in doc.sites if s.status == "ok"]
    gone = [s.name for s in doc.sites if s.status != "ok"]
    text = f"{len(ok)} site{'s' if len(ok) != 1 else ''}"
    if gone:
        verb = "is" if len(gone) == 1 else "are"
        text += f" ({', '.join(gone)} dropped out during the study and {verb} not in it)"
    return text


def _who(doc: "EvidenceReport") -> str:
    n_sites = sum(s.status == "ok" for s in doc.sites)
    return (
        f"Across {n_sites} site{'s' if n_sites != 1 else ''}, "
        f"{fmt.num(doc.value.n_treated)} people who received the intervention were compared "
        f"with similar people who did not."
    )


def _figure(f: "ValueFigure") -> str:
    return f"{fmt.num(f.estimate)} (95% CI {fmt.ci(f.ci_low, f.ci_high)})"


def _unclaimed(doc: "EvidenceReport") -> str:
    """Why no saving is claimed, with the estimate and its CI (the headline is always an
    estimate with its interval)."""
    v = doc.value
    assert v.claims_saved is not None
    why = (
        "the report is not for billing"
        if not doc.billable
        else "the interval includes zero, so the data are compatible with no saving"
        if v.claims_saved.ci_low <= 0 <= v.claims_saved.ci_high
        else "claims rose"
    )
    return (
        f"No saving is claimed ({why}); the estimated claims saved across the treated are "
        f"{_figure(v.claims_saved)}."
    )


def _open(f: "ValueFigure") -> str:
    """A clause when a net figure's CI includes zero: the saving is shown, a net gain is not."""
    if f.ci_low < 0 < f.ci_high:
        return "; its interval includes zero, so a net gain after the intervention's cost is not established"
    return ""


def _direction(att: float, lower: str = "lower", higher: str = "higher") -> str:
    return lower if att < 0 else higher


def _significance(o: "OutcomeEstimate") -> str:
    if o.ci[0] > 0 or o.ci[1] < 0:
        return "the interval excludes zero, so the effect is statistically clear at the 5% level."
    return "the interval includes zero, so the effect is not statistically clear at the 5% level."


def _checks_sentence(doc: "EvidenceReport") -> str:
    """Counts the gates only: an information check has no threshold and is never a pass."""
    gates = doc.gates
    info = len(doc.checks) - len(gates)
    shown = f" ({info} further check{'s are' if info != 1 else ' is'} information only)" if info else ""
    failed = [c.label for c in gates if c.failed]
    if not failed:
        return f"All {len(gates)} diagnostic gates passed their stated thresholds{shown}."
    return (
        f"{len(failed)} of {len(gates)} diagnostic gates failed their stated thresholds "
        f"({'; '.join(failed)}){shown}: the estimate is not for billing."
    )


def _billing_sentence(doc: "EvidenceReport") -> str:
    if doc.billable and doc.synthetic:
        return "Every gate passed; the estimate would be billable were the data real."
    if doc.billable:
        return "Every gate passed, so the estimate may be used for billing."
    return "Because a gate failed, the report is marked NOT FOR BILLING."


def _privacy_sentence(doc: "EvidenceReport") -> str:
    p = doc.privacy
    if not p.enabled:
        return "No differential-privacy noise was added to this study's releases."
    return (
        f"Differential privacy protected every release (ε = {fmt.num(p.epsilon)}, "
        f"δ = {'n/a' if p.delta is None else format(p.delta, 'g')}, "
        f"{p.accountant or 'accountant not stated'}); privacy noise accounts "
        f"for at most {fmt.pct(p.max_privacy_share_of_ci)} of a confidence interval's width."
        + _split_clause(p)
        + _secure_clause(p)
        + _caps_clause(p)
        + _limit_clause(doc)
    )


def _caps_clause(p) -> str:
    """The large-loss cap round: each lowered cap, its share of the budget and the clipping
    (shared/dp/capround.py); empty without the round."""
    if p.cap_share is None:
        return ""
    if not p.large_loss_caps:
        return (
            f" A large-loss cap round ({fmt.pct(p.cap_share)} of the budget) left every cap at the "
            "spec's value."
        )
    parts = "; ".join(
        f"{c.name} at {fmt.num(c.cap)} instead of {fmt.num(c.signed_cap)}"
        + ("" if c.clipped_share is None else f" (about {fmt.pct(c.clipped_share)} of rows at or above it)")
        + (
            ""
            if c.shift_bound is None
            else f", so the uncapped estimate lies within ±{fmt.num(c.shift_bound)} of the capped one"
        )
        for c in p.large_loss_caps
    )
    return (
        f" A large-loss cap round ({fmt.pct(p.cap_share)} of the budget: a noisy histogram, the "
        f"99.5 % quantile rounded up to a public edge) capped {parts}. Those ATTs are of the "
        "outcome capped there: the large-loss layer above the cap is excluded."
    )


def _limit_clause(doc: "EvidenceReport") -> str:
    """How the intervals compare with the physical limit and with no noise (DP studies that
    state it, :mod:`shared.dp.limit`); empty otherwise."""
    rows = [r.estimate for r in doc.outcomes if r.estimate.ratio_limit is not None]
    if not rows:
        return ""
    to_limit = ", ".join(f"{o.name} {fmt.ratio(o.ratio_limit)}" for o in rows)
    to_exact = ", ".join(f"{o.name} {fmt.ratio(o.ratio_exact_est)}" for o in rows)
    return (
        f" Confidence-interval width against the physical limit (one noisy release of the ATT "
        f"itself at this ε and δ, as if a trusted party held all rows): {to_limit}; against the "
        f"width without privacy noise (estimated): {to_exact}."
    )


def _secure_clause(p) -> str:
    if not p.secure_nodes:
        return ""
    return (
        f" Every release after the describe round was a secure sum (SecAgg+) over "
        f"{p.secure_nodes} nodes: each node added 1/√{p.secure_nodes} of the noise, and the "
        "coordinator saw only the masked sums."
    )


def _split_clause(p) -> str:
    if not p.split:
        return ""
    parts = ", ".join(f"{SPLIT_LABELS.get(k, k)} {v:.2f}" for k, v in p.split.items())
    return f" Shares of the privacy budget (zCDP ρ): {parts}" + (
        " (re-split after the describe round from its public counts)." if p.resplit else "."
    )


SPLIT_LABELS = {
    "describe": "describe",
    "ps_fit": "propensity fit",
    "psm_stats": "PSM table",
    "balance": "balance",
}


def _synthetic_sentence(doc: "EvidenceReport") -> str:
    if not doc.synthetic:
        return ""
    return (
        "This study ran on simulated data with a known true effect; it demonstrates the "
        "method and is not real-world evidence."
    )


def _get(doc: "EvidenceReport", name: str) -> "OutcomeEstimate | None":
    return next((o.estimate for o in doc.outcomes if o.estimate.name == name), None)


def _join(parts: list[str]) -> str:
    return " ".join(p for p in parts if p)
