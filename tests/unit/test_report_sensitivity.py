"""E-values against hand-computed published examples, and each outcome's line in the report."""

from __future__ import annotations

import math

import pytest
from report_fixtures import ISSUED_AT, make_result

from coordinator.report import build_report
from coordinator.report.sensitivity import e_value, e_value_ci, outcome_evalue, rr_from_smd


def test_vanderweele_ding_breastfeeding_example():
    """VanderWeele & Ding 2017 (Ann Intern Med 167:268): RR 3.9 (95% CI 1.8 to 8.7) for infant
    respiratory death without breastfeeding gives E = 7.26, and 3.0 for the CI's lower bound
    (1.8 + √(1.8 × 0.8) = 1.8 + 1.2)."""
    assert e_value(3.9) == pytest.approx(7.26, abs=0.005)
    assert e_value_ci(1.8, 8.7) == pytest.approx(3.0, rel=1e-12)
    # by hand: 3.9 + sqrt(3.9 × 2.9)
    assert e_value(3.9) == pytest.approx(3.9 + math.sqrt(3.9 * 2.9), rel=1e-12)


def test_protective_estimate_uses_the_inverse_and_the_upper_bound():
    """RR 0.80 (0.71 to 0.91): 1/0.8 = 1.25 → 1.25 + √(1.25 × 0.25) = 1.81; the CI's bound
    nearest 1 is 0.91 → 1/0.91 → 1.43 (as the EValue R package's evalues.RR gives)."""
    assert e_value(0.8) == pytest.approx(1.25 + math.sqrt(1.25 * 0.25), rel=1e-12)
    assert e_value(0.8) == pytest.approx(1.81, abs=0.005)
    assert e_value_ci(0.71, 0.91) == pytest.approx(1.43, abs=0.005)


def test_a_ci_that_holds_the_null_needs_no_confounding():
    assert e_value_ci(0.6, 1.2) == 1.0 and e_value_ci(1.0, 2.0) == 1.0
    assert e_value(1.0) == 1.0


def test_nonsense_risk_ratios_are_refused():
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="risk ratio"):
            e_value(bad)


def test_standardised_difference_maps_to_exp_091_d():
    """VanderWeele & Ding's continuous-outcome approximation: d = 0.5 → RR = exp(0.455) = 1.576,
    E = 2.53 (EValue's evalues.MD(0.5, ...))."""
    assert rr_from_smd(0.5) == pytest.approx(math.exp(0.455), rel=1e-12)
    assert e_value(rr_from_smd(0.5)) == pytest.approx(2.53, abs=0.005)


def _doc(**kw):
    return build_report(make_result(**kw), issued_at=ISSUED_AT)


def test_each_outcome_gets_evalues_and_a_plain_line():
    doc = _doc()
    by = {e.outcome: e for e in doc.sensitivity.evalues}
    assert set(by) == {"claims_cost", "cv_event", "absence_days"}

    # binary: the estimator's relative risk 0.847 (0.74 to 0.97), exact study → not widened;
    # the risk difference −0.0213 (CI ± 1.96 × 0.0081) over the control risk 0.118 + 0.0213
    ev = by["cv_event"]
    o = doc.outcome("cv_event").estimate
    p_c = 0.118 + 0.0213
    from_rd = (1 + o.ci[0] / p_c, 1 + o.ci[1] / p_c)
    assert from_rd[0] < 0.74 and from_rd[1] < 0.97  # so the union is (from_rd low, 0.97)
    assert ev.scale == "risk_ratio" and ev.rr == 0.847
    assert ev.rr_ci == pytest.approx((from_rd[0], 0.97), rel=1e-9)
    r = 1 / 0.847
    assert ev.e_value == pytest.approx(r + math.sqrt(r * (r - 1)), rel=1e-12)
    r_ci = 1 / 0.97
    assert ev.e_value_ci == pytest.approx(r_ci + math.sqrt(r_ci * (r_ci - 1)), rel=1e-6)
    assert f"{ev.e_value:.2f}" in ev.statement and f"{ev.e_value_ci:.2f}" in ev.statement
    assert "cardiovascular events" in ev.statement and "explain away" in ev.statement

    # continuous: d = −412.5 / 4870 on the claims, by hand
    ev = by["claims_cost"]
    cost = doc.outcome("claims_cost").estimate
    d = -412.5 / 4870.0
    assert ev.scale == "smd" and ev.control_sd == 4870.0
    assert ev.rr == pytest.approx(math.exp(0.91 * d), rel=1e-12)
    assert ev.rr_ci == pytest.approx((math.exp(0.91 * cost.ci[0] / 4870), math.exp(0.91 * cost.ci[1] / 4870)))
    assert ev.e_value == pytest.approx(e_value(math.exp(0.91 * d)), rel=1e-12)
    assert ev.e_value_ci == pytest.approx(e_value(math.exp(0.91 * cost.ci[1] / 4870)), rel=1e-12)
    assert "approximate" in ev.note and "noisy" not in ev.note
    assert "claims cost" in ev.statement


def test_under_dp_the_rr_ci_is_widened_and_the_noisy_sd_is_said():
    doc = _doc(privacy=True)
    by = {e.outcome: e for e in doc.sensitivity.evalues}
    o = doc.outcome("cv_event").estimate
    factor = (o.ci[1] - o.ci[0]) / (2 * 1.959963984540054 * o.se_sampling)
    assert factor > 1.05  # the fixture's privacy noise
    lo, hi = by["cv_event"].rr_ci
    delta = (
        0.847 * math.exp(-factor * math.log(0.847 / 0.74)),
        0.847 * math.exp(factor * math.log(0.97 / 0.847)),
    )
    from_rd = (1 + o.ci[0] / o.control_mean, 1 + o.ci[1] / o.control_mean)
    assert (lo, hi) == pytest.approx((min(delta[0], from_rd[0]), max(delta[1], from_rd[1])), rel=1e-9)
    assert "widened" in by["cv_event"].note
    assert "noisy sums" in by["claims_cost"].note and "noisy sums" in by["absence_days"].note


def test_a_risk_difference_ci_through_zero_keeps_the_rr_evalue_at_one():
    """The demo's DP case: the delta-method RR CI (sampling only) excluded 1 while the risk
    difference's CI held 0; the E-value of the CI must then be 1."""
    o = make_result().outcome("cv_event")
    o = o.model_copy(
        update={"att": -0.012, "ci": (-0.028, 0.004), "relative_risk": 0.5, "relative_risk_ci": (0.43, 0.59)}
    )
    ev = outcome_evalue(o, private=True)
    assert ev.rr_ci[0] <= 1.0 <= ev.rr_ci[1] and ev.e_value_ci == 1.0


def test_a_ci_through_zero_says_no_confounding_is_needed():
    result = make_result()
    cost = result.outcome("claims_cost").model_copy(update={"att": -100.0, "ci": (-300.0, 100.0)})
    ev = outcome_evalue(cost, private=False)
    assert ev.e_value_ci == 1.0 and "already includes no effect" in ev.statement


def test_without_a_control_sd_the_continuous_evalue_is_not_computed():
    result = make_result()
    cost = result.outcome("claims_cost").model_copy(update={"control_sd": None})
    ev = outcome_evalue(cost, private=False)
    assert ev.e_value is None and ev.rr is None and "no E-value" in ev.statement


def test_the_rendered_report_shows_the_evalues(tmp_path):
    from coordinator.report.html import render_html
    from coordinator.report.view import report_view

    doc = _doc()
    html = render_html(report_view(doc))
    assert "Sensitivity to an unmeasured confounder (E-values)" in html
    for e in doc.sensitivity.evalues:
        assert e.statement.split(":")[0] in html and f"{e.e_value:.2f}" in html
