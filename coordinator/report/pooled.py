"""HR's summary of a pooled small-firm study (``[report] per_site = false``).

Small firms (< 500 staff) pool their staff because none has enough treated on its own; their
HR needs three things from the pooled numbers: savings per participating employee, absence days
averted, and an ESG paragraph. All three are read from the report's value figures (so they
cannot disagree with the tables), and a benefit is claimed only when every gate passed and its
95% CI excludes zero in the beneficial direction; otherwise the text says the evidence does not
support a claim. No company's own figure appears: the pool is the unit of analysis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coordinator.report import fmt
from coordinator.report.value import ABSENCE, CLAIMS

if TYPE_CHECKING:
    from coordinator.report.document import EvidenceReport, ValueFigure


def supported(doc: "EvidenceReport", f: "ValueFigure | None") -> bool:
    """A benefit may be claimed: the report is billable (no gate failed) and the averted or
    saved amount's CI lies above zero."""
    return f is not None and doc.billable and f.ci_low > 0


def pooled_hr_paragraphs(doc: "EvidenceReport") -> list[str]:
    """Participants, savings per employee, absence days averted and the ESG paragraph."""
    ok = [s.name for s in doc.sites if s.status == "ok"]
    out = [
        f"Pooled study of {len(ok)} companies ({', '.join(ok)}): every figure is over all of them "
        "together; no company's own count or estimate is shown, and size gates apply to the pool."
    ]
    out += [_savings(doc), _absence(doc), _esg(doc, len(ok))]
    return [s for s in out if s]


def _per_person(doc: "EvidenceReport", name: str) -> tuple[float, float, float] | None:
    """``-ATT`` with its CI, per treated person (the amount removed per participant)."""
    row = next((o.estimate for o in doc.outcomes if o.estimate.name == name), None)
    if row is None:
        return None
    lo, hi = sorted((-row.ci[0], -row.ci[1]))
    return -row.att, lo, hi


def _savings(doc: "EvidenceReport") -> str:
    v = doc.value
    per = _per_person(doc, CLAIMS)
    if per is None:
        return "Savings per employee: not estimated (the study has no claims cost outcome)."
    est, lo, hi = per
    figure = f"{fmt.num(est)} in claims cost per participating employee (95% CI {fmt.ci(lo, hi)})"
    if not v.saving_claimed:
        why = v.claim_note.removeprefix("No saving is claimed: ").rstrip(".")
        return (
            f"Savings per employee: the evidence does not support a savings claim ({why}); "
            f"the estimate is {figure}."
        )
    c = v.cost_per_person
    if c <= 0:
        return f"Savings per employee: {figure}."
    net = f"{fmt.num(est - c)} (95% CI {fmt.ci(lo - c, hi - c)})"
    open_ = (
        "; its interval includes zero, so a net gain per employee is not established"
        if lo - c < 0 < hi - c
        else ""
    )
    return (
        f"Savings per employee: {figure}; after the programme's cost of {fmt.num(c)} per "
        f"person, {net}{open_}."
    )


def _absence(doc: "EvidenceReport") -> str:
    """Per participant (the total is in the sentence before), and whether a claim holds."""
    f = doc.value.absence_days_averted
    per = _per_person(doc, ABSENCE)
    if f is None or per is None:
        return ""
    est, lo, hi = per
    text = f"Absence days averted per participating employee: {fmt.num(est)} (95% CI {fmt.ci(lo, hi)})"
    if supported(doc, f):
        return text + "."
    return text + "; the evidence does not support a claim that absence fell."


def _esg(doc: "EvidenceReport", n_firms: int) -> str:
    v = doc.value
    claims = [
        f"{fmt.num(f.estimate)} {what} (95% CI {fmt.ci(f.ci_low, f.ci_high)})"
        for f, what in ((v.absence_days_averted, "absence days"), (v.events_averted, "cardiovascular events"))
        if f is not None and supported(doc, f)
    ]
    if not claims:
        why = (
            f"diagnostic gates failed ({', '.join(doc.failed_gates)})"
            if doc.failed_gates
            else "the confidence intervals include no benefit or include zero"
        )
        return (
            "ESG: the evidence does not support a claim of health or absence benefit "
            f"({why}); disclose the programme and its reach ({fmt.num(v.n_treated)} participants across "
            f"{n_firms} companies), not an effect."
        )
    return (
        f"ESG: across {n_firms} companies, the workplace health programme averted an estimated "
        + " and ".join(claims)
        + f" among {fmt.num(v.n_treated)} participants, in a pre-specified causal analysis "
        "(propensity-score stratification against comparable colleagues) with every diagnostic gate passed"
        + (" and every release under differential privacy." if doc.privacy.enabled else ".")
    )
