r"""Sensitivity to an unmeasured confounder: the E-value of each estimate and of its CI.

The E-value (VanderWeele & Ding 2017, *Ann Intern Med* 167:268) is the minimum strength of
association, on the risk-ratio scale, that an unmeasured confounder would need with both the
treatment and the outcome, above the measured covariates, to move the estimate to no effect.
For a risk ratio RR (taking 1/RR when RR < 1):

.. math::
    E = RR + \sqrt{RR\,(RR - 1)}.

For the CI, the bound nearest the null is used; a CI that holds the null has E = 1 (no
confounding is needed).

* Binary outcome (the CV event): the estimator's relative risk. Its CI is the wider of two: the
  estimator's delta-method CI, which holds the sampling error only and is therefore widened on
  the log scale by the factor by which the risk difference's CI exceeds its sampling-only width
  (privacy noise and, under DP, the fit-bias margin; 1 in an exact study); and 1 + the risk
  difference's CI divided by the control risk. The second keeps the E-value of the CI at 1
  whenever the risk difference's CI holds 0 (under DP the delta-method CI alone excluded 1 on
  the demo while the risk difference's CI held 0: the noise on the arm risks is not in it).
* Continuous outcome (claims cost, absence days): the standardised difference d = ATT / SD,
  SD the outcome's SD among the controls reweighted to the treated (``control_sd``), mapped to
  RR ≈ exp(0.91·d) and the CI to exp(0.91·CI/SD) (VanderWeele & Ding 2017, Table; Hasselblad &
  Hedges 1995). Under DP the SD comes from noisy sums and the report says so.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from coordinator.report import fmt
from coordinator.report.document import EValue, SensitivitySection

if TYPE_CHECKING:
    from shared.result import OutcomeEstimate

#: Hasselblad & Hedges' conversion of a standardised mean difference to a log odds ratio
#: (π/√3 ≈ 1.81, halved on the log-RR scale for a common outcome): RR ≈ exp(0.91·d).
SMD_TO_LOG_RR = 0.91
Z_95 = 1.959963984540054

METHOD = (
    "E-value (VanderWeele & Ding 2017): the minimum strength of association, on the risk-ratio "
    "scale, that an unmeasured confounder would need with both taking part and the outcome, "
    "above the measured covariates, to explain the estimate away; E = RR + √(RR(RR − 1)), with "
    "1/RR for RR < 1, and for the CI the bound nearest no effect (1 when the CI already holds it). "
    "Binary outcomes use the estimated relative risk; continuous outcomes the standardised "
    "difference d = ATT / SD of the reweighted controls, RR ≈ exp(0.91·d). An E-value is not a "
    "test: it says how strong confounding would have to be, not whether it exists."
)

#: How the plain-language line names an outcome (others by their spec name).
OUTCOME_WORDS = {
    "claims_cost": "claims cost",
    "cv_event": "cardiovascular events",
    "absence_days": "absence days",
}


def e_value(rr: float) -> float:
    """The E-value of a risk ratio (> 0): ``RR + sqrt(RR (RR − 1))``, with 1/RR below 1."""
    if not (rr > 0 and math.isfinite(rr)):
        raise ValueError(f"a risk ratio must be positive and finite, got {rr!r}")
    r = rr if rr >= 1 else 1.0 / rr
    return r + math.sqrt(r * (r - 1.0))


def e_value_ci(lo: float, hi: float) -> float:
    """The E-value of a CI: of the bound nearest 1, or 1 when the CI holds 1."""
    if lo <= 1.0 <= hi:
        return 1.0
    return e_value(lo if lo > 1.0 else hi)


def rr_from_smd(d: float) -> float:
    """A standardised mean difference on the approximate risk-ratio scale, exp(0.91·d)."""
    return math.exp(SMD_TO_LOG_RR * d)


def outcome_evalue(o: "OutcomeEstimate", *, private: bool) -> EValue:
    """The E-values of one outcome estimate, with its plain-language line."""
    if o.kind == "binary":
        return _binary(o)
    return _continuous(o, private=private)


def sensitivity_section(outcomes: "tuple[OutcomeEstimate, ...]", *, private: bool) -> SensitivitySection:
    return SensitivitySection(
        method=METHOD, evalues=tuple(outcome_evalue(o, private=private) for o in outcomes)
    )


def _ci_widening(o: "OutcomeEstimate") -> float:
    """The ATT's CI width over its sampling-only width (≥ 1) under privacy noise; 1 in an exact
    study, whose CI differs from ± 1.96 SE only by its skewness correction
    (:mod:`shared.psm.skew`), not by noise."""
    if not o.se_privacy > 0:
        return 1.0
    sampling = 2.0 * Z_95 * o.se_sampling
    factor = (o.ci[1] - o.ci[0]) / sampling if sampling > 0 else 1.0
    return factor if factor > 1.005 else 1.0


def _binary(o: "OutcomeEstimate") -> EValue:
    if o.relative_risk is None or o.relative_risk_ci is None or o.relative_risk <= 0:
        return _not_computable(
            o, "risk_ratio", "the relative risk is undefined (a weighted arm's risk is 0)", sd=None
        )
    rr = o.relative_risk
    factor = _ci_widening(o)
    lo, hi = o.relative_risk_ci
    if lo <= 0:
        return _not_computable(o, "risk_ratio", "the relative risk's CI reaches 0", sd=None)
    delta = (rr * math.exp(-math.log(rr / lo) * factor), rr * math.exp(math.log(hi / rr) * factor))
    # the risk difference's own CI over the control risk: holds 1 exactly when that CI holds 0
    p_c = o.control_mean
    from_rd = (1.0 + o.ci[0] / p_c, 1.0 + o.ci[1] / p_c) if p_c > 0 else delta
    ci = (max(min(delta[0], from_rd[0]), 0.0), max(delta[1], from_rd[1]))
    if ci[1] <= 0:
        return _not_computable(
            o, "risk_ratio", "the risk difference's CI lies below minus the control risk", sd=None
        )
    note = (
        "on the relative risk the estimator states; its CI is the wider of the delta-method CI"
        + (f" (widened ×{factor:.2f} on the log scale for privacy noise)" if factor > 1.0 else "")
        + " and 1 + the risk difference's CI ÷ the control risk, so it holds 1 whenever the risk "
        "difference's CI holds 0"
    )
    return _evalue(o, "risk_ratio", rr, ci, sd=None, note=note)


def _continuous(o: "OutcomeEstimate", *, private: bool) -> EValue:
    sd = o.control_sd
    if sd is None or not sd > 0:
        why = "the result carries no control SD" if sd is None else "the controls' SD is 0"
        return _not_computable(o, "smd", why, sd=sd)
    d = o.att / sd
    rr = rr_from_smd(d)
    ci = (rr_from_smd(o.ci[0] / sd), rr_from_smd(o.ci[1] / sd))
    note = (
        f"approximate: d = ATT / SD = {fmt.num(o.att)} / {fmt.num(sd)} = {fmt.num(d)}, "
        f"RR ≈ exp(0.91·d) (the approximation assumes a roughly normal outcome; capped, skewed "
        f"outcomes such as costs make it rough)"
    )
    if private:
        note += (
            "; under differential privacy the SD is computed from noisy sums, so the E-values "
            "carry that noise too"
        )
    return _evalue(o, "smd", rr, ci, sd=sd, note=note)


def _evalue(
    o: "OutcomeEstimate", scale, rr: float, ci: tuple[float, float], *, sd: float | None, note: str
) -> EValue:
    e, e_ci = e_value(rr), e_value_ci(*ci)
    return EValue(
        outcome=o.name,
        scale=scale,
        rr=rr,
        rr_ci=ci,
        e_value=e,
        e_value_ci=e_ci,
        control_sd=sd,
        statement=_statement(o.name, rr, e, e_ci),
        note=note,
    )


def _not_computable(o: "OutcomeEstimate", scale, why: str, *, sd: float | None) -> EValue:
    return EValue(
        outcome=o.name,
        scale=scale,
        rr=None,
        rr_ci=None,
        e_value=None,
        e_value_ci=None,
        control_sd=sd,
        statement=f"{_words(o.name).capitalize()}: no E-value: {why}.",
        note=why,
    )


def _statement(name: str, rr: float, e: float, e_ci: float) -> str:
    """One sentence a non-statistician can read, from the numbers only."""
    what = _words(name)
    head = (
        f"{what.capitalize()}: an unmeasured confounder associated with both taking part and "
        f"{what} by a risk ratio of {e:.2f} each, above the measured covariates, could explain "
        f"away the estimate (risk-ratio scale {rr:.2f})"
    )
    if e_ci <= 1.0:
        return (
            head
            + "; the confidence interval already includes no effect, so no confounding is needed for that."
        )
    return head + f"; one of {e_ci:.2f} each could move the confidence interval to include no effect."


def _words(name: str) -> str:
    return OUTCOME_WORDS.get(name, name.replace("_", " "))
