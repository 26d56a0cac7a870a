"""What the effect is worth: claims saved, ROI, events and absence days averted.

Formulas (docs/STATISTICS.md, "Value"), with n the treated in common support (the people the ATT is
about) and C = cost per person × n the intervention cost:

.. math::

    \\text{saved} = -\\mathrm{ATT}_{cost}\\, n, \\qquad
    \\text{ROI} = (\\text{saved} - C) / C, \\qquad
    \\text{averted}_k = -\\mathrm{ATT}_k\\, n .

Each figure is monotone in its ATT, so its 95% CI follows from the ATT's CI endpoints (negated,
hence swapped). ROI is undefined when the intervention cost is zero and then omitted.

A saving is *claimed* (``saving_claimed``) only when every gate passed and the claims saved CI
lies wholly above zero; otherwise the figures are still stated, with their CI, as estimates,
and ``claim_note`` says why nothing is claimed.
"""

from __future__ import annotations

from coordinator.report import fmt
from coordinator.report.document import OutcomeRow, ValueFigure, ValueSection

CLAIMS = "claims_cost"
EVENTS = "cv_event"
ABSENCE = "absence_days"


def averted(*, att: float, ci: tuple[float, float], n_treated: int) -> tuple[float, float, float]:
    """``(estimate, ci_low, ci_high)`` of ``-ATT × n``: the amount removed among the treated."""
    lo, hi = sorted((-ci[0] * n_treated, -ci[1] * n_treated))
    return -att * n_treated, lo, hi


def roi(*, saved: float, cost: float) -> float:
    """Return on the intervention's cost: ``(saved - cost) / cost``; ``cost`` must be > 0."""
    return (saved - cost) / cost


def value_section(
    outcomes: tuple[OutcomeRow, ...], *, cost_per_person: float, failed_gates: tuple[str, ...] = ()
) -> ValueSection:
    """The value figures from the outcome estimates and the spec's cost per person; a saving
    is claimed only with no failed gate and a claims CI above zero."""
    by_name = {o.estimate.name: o for o in outcomes}
    basis = by_name.get(CLAIMS, outcomes[0])
    n = basis.estimate.n_treated
    cost = cost_per_person * n
    saved = _averted_figure(
        by_name.get(CLAIMS), name="claims_saved", label="Claims cost saved", unit="claims currency"
    )
    net = roi_fig = None
    if saved is not None:
        net = _shifted(saved, name="net_benefit", label="Net benefit (saved − intervention cost)", cost=cost)
        if cost > 0:
            roi_fig = _roi_figure(saved, cost=cost)
    claimed, note = _claim(saved, failed_gates)
    return ValueSection(
        saving_claimed=claimed,
        claim_note=note,
        n_treated=n,
        cost_per_person=cost_per_person,
        intervention_cost=cost,
        claims_saved=saved,
        net_benefit=net,
        roi=roi_fig,
        events_averted=_averted_figure(
            by_name.get(EVENTS), name="events_averted", label="Cardiovascular events averted", unit="events"
        ),
        absence_days_averted=_averted_figure(
            by_name.get(ABSENCE), name="absence_days_averted", label="Absence days averted", unit="days"
        ),
    )


def _claim(saved: ValueFigure | None, failed_gates: tuple[str, ...]) -> tuple[bool, str]:
    if saved is None:
        return False, "No saving is claimed: the study has no claims cost outcome."
    if failed_gates:
        return False, (
            f"No saving is claimed: {len(failed_gates)} diagnostic gate"
            f"{'s' if len(failed_gates) != 1 else ''} failed ({', '.join(failed_gates)}), so the "
            "estimate is not for billing."
        )
    if saved.ci_low > 0:
        return True, "A saving is claimed: every gate passed and the claims saved CI lies above zero."
    if saved.ci_high < 0:
        return False, "No saving is claimed: the claims saved CI lies below zero (claims rose)."
    return False, (
        f"No saving is claimed: the claims saved CI ({fmt.ci(saved.ci_low, saved.ci_high)}) "
        "includes zero, so the data are compatible with no saving."
    )


def _averted_figure(row: OutcomeRow | None, *, name: str, label: str, unit: str) -> ValueFigure | None:
    if row is None:
        return None
    o = row.estimate
    est, lo, hi = averted(att=o.att, ci=o.ci, n_treated=o.n_treated)
    truth = None if row.truth is None else -row.truth * o.n_treated
    return ValueFigure(
        name=name,
        label=label,
        unit=unit,
        estimate=est,
        ci_low=lo,
        ci_high=hi,
        truth=truth,
        formula=f"−ATT({o.name}) × treated = −({fmt.num(o.att)}) × {fmt.num(o.n_treated)}",
    )


def _shifted(saved: ValueFigure, *, name: str, label: str, cost: float) -> ValueFigure:
    return ValueFigure(
        name=name,
        label=label,
        unit=saved.unit,
        estimate=saved.estimate - cost,
        ci_low=saved.ci_low - cost,
        ci_high=saved.ci_high - cost,
        truth=None if saved.truth is None else saved.truth - cost,
        formula=f"claims saved − intervention cost = {fmt.num(saved.estimate)} − {fmt.num(cost)}",
    )


def _roi_figure(saved: ValueFigure, *, cost: float) -> ValueFigure:
    return ValueFigure(
        name="roi",
        label="Return on investment",
        unit="ratio",
        estimate=roi(saved=saved.estimate, cost=cost),
        ci_low=roi(saved=saved.ci_low, cost=cost),
        ci_high=roi(saved=saved.ci_high, cost=cost),
        truth=None if saved.truth is None else roi(saved=saved.truth, cost=cost),
        formula=f"(saved − cost) / cost = ({fmt.num(saved.estimate)} − {fmt.num(cost)}) / {fmt.num(cost)}",
    )
