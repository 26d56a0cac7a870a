"""The method section: privacy exact to what was released, multiplicity, per-site, the spec."""

from __future__ import annotations

from statistics import NormalDist

import pytest
from report_fixtures import ISSUED_AT, make_result

from coordinator.report import build_report
from coordinator.report.html import render_html
from coordinator.report.view import report_view


def _doc(result):
    return build_report(result, issued_at=ISSUED_AT)


def _with_one_treated_stratum(result):
    strata = list(result.strata)
    strata[1] = strata[1].model_copy(update={"n_treated": 1})
    return result.model_copy(update={"strata": tuple(strata)})


def test_an_exact_study_with_tiny_strata_does_not_claim_no_individual_data_left():
    """The issue's case: an exact study released a stratum of one treated person; the HR
    summary said no individual's data left any site."""
    doc = _doc(_with_one_treated_stratum(make_result()))
    hr = doc.summaries.hr
    assert "no individual's data left" not in hr
    assert "without differential privacy" in hr and "a stratum of 1 treated person" in hr
    assert "as they stand" not in hr  # the DP wording is not used
    p = doc.method.privacy
    assert "not anonymous" in p and "smallest non-empty treated stratum holds 1 person" in p
    assert "below the default floor of 11, so at least one site" in p
    assert "Each of the 5 sites sent the coordinator exact aggregates" in p
    assert "can be differenced" in p
    # the fixture's own smallest treated stratum (2) is below the floor too; at the floor, no claim
    at_floor = make_result()
    strata = tuple(
        s.model_copy(update={"n_treated": max(s.n_treated, 11) if s.n_treated else 0})
        for s in at_floor.strata
    )
    p = _doc(at_floor.model_copy(update={"strata": strata})).method.privacy
    assert "holds 11 people" in p and "below the default floor" not in p


def test_the_stated_cell_floor_is_the_nodes_default():
    from coordinator.report.method import SMALL_CELL
    from node.policy import NodePolicy

    assert NodePolicy().min_cell == SMALL_CELL


def test_a_dp_study_states_its_budget_per_site_and_its_noise():
    doc = _doc(make_result(privacy=True))
    p = doc.method.privacy
    assert "ε = 3" in p and "δ = 1e-06" in p and "insurer_large ε = 3" in p
    assert "differential-privacy noise" in doc.summaries.hr
    assert "no further privacy" in doc.method.per_site  # noisy per-site tables, not computed
    secure = make_result(privacy=True)
    secure = secure.model_copy(update={"privacy": secure.privacy.model_copy(update={"secure_nodes": 5})})
    doc = _doc(secure)
    assert "SecAgg+ sum over 5 sites" in doc.method.privacy
    assert "secure aggregation" in doc.method.per_site


def test_multiplicity_note_by_hand():
    """Bonferroni over 3 outcomes: z = Φ⁻¹(1 − 0.05/6) = 2.394. Absence −0.9 (SE 0.42) excludes
    zero at 95% (|z| 2.14) but not after correction; claims and CV events still do."""
    result = make_result()
    absence = result.outcome("absence_days")
    moved = absence.model_copy(
        update={"att": -0.9, "se": 0.42, "ci": (-0.9 - 1.96 * 0.42, -0.9 + 1.96 * 0.42)}
    )
    result = result.model_copy(update={"outcomes": (*result.outcomes[:2], moved)})
    z = NormalDist().inv_cdf(1 - 0.05 / 6)
    assert z == pytest.approx(2.394, abs=1e-3) and 1.96 < 0.9 / 0.42 < z
    note = _doc(result).method.multiplicity
    assert "up to 14.3%" in note  # 1 − 0.95³
    assert "claims_cost, cv_event still exclude zero" in note and "absence_days" not in note


def test_the_report_renders_its_method_assumptions_and_spec():
    doc = _doc(make_result())
    html = render_html(report_view(doc))
    for heading in ("Design", "Propensity model", "Variance", "Privacy: what was released", "Multiplicity"):
        assert f"<h3>{heading}</h3>" in html
    assert "No unmeasured confounding" in html and "Positivity" in html and "Consistency" in html
    assert "Specification: covariates and their public bounds" in html
    assert "Specification: outcomes, caps and units" in html
    assert "the spec names none" in html  # the currency, stated as missing rather than guessed
    assert "not part of the signed specification" in doc.method.design  # the window is not in the spec


def test_the_privacy_statement_lists_the_rounds_that_released():
    from shared.result import RoundLog

    result = make_result(privacy=True)
    names = ("reserve", "describe", "ps-fit-1", "ps-fit-2", "ps-fit-3", "ps-fit-4", "score-hist", "psm-stats")
    result = result.model_copy(update={"rounds": tuple(RoundLog(name=n, seconds=0.1) for n in names)})
    p = _doc(result).method.privacy
    assert p.startswith("Released by each site, each with Gaussian noise: per-arm counts")
    assert "gradient and Hessian (4 rounds)" in p and "log-likelihood" not in p
    assert "histogram of the logit score" in p and "Σy and Σy² of each outcome" in p
    assert "weighted sum per outcome" not in p  # no psm-wsum round ran
    # under DP describe sends counts only: the statement must not claim more left, nor less
    assert "per-arm counts (describe)" in p and "cross-products" not in p and "Σy³" not in p


def test_the_privacy_statement_names_every_release_of_a_dp_dr_study_and_the_cap_round():
    """Each round's text is what the nodes answered: the cap round's histograms, and in a DR
    study the weighted-sum round's one sum per covariate (``dr_dsum``) beside the outcomes'."""
    from shared.result import RoundLog

    names = ("describe", "cap-hist", "ps-fit-1", "score-hist", "psm-stats", "psm-wsum")
    rounds = tuple(RoundLog(name=n, seconds=0.1) for n in names)
    dr = make_result(privacy=True).model_copy(update={"rounds": rounds, "estimator": "dr"})
    p = _doc(dr).method.privacy
    assert "values on a public grid (the large-loss caps)" in p
    assert "one weighted sum per outcome (the ATT's numerator) and one per covariate" in p
    assert "Σzzᵀ and Σzyᵀ (doubly robust)" in p
    strat = _doc(dr.model_copy(update={"estimator": "stratified"})).method.privacy
    assert "one per covariate" not in strat and "Σzzᵀ" not in strat
    # an exact study's describe sends the covariates' moments, and its tables the higher sums
    exact = make_result().model_copy(
        update={"rounds": tuple(RoundLog(name=n, seconds=0.1) for n in names[:3])}
    )
    e = _doc(exact).method.privacy
    assert "covariate sums and cross-products (describe)" in e and "Σy³ and Σy⁴" in e


def test_the_variance_text_names_each_outcomes_interval():
    """An exact stratified study's CIs are the skewness-corrected ones and the method says so;
    where some outcome kept the Wald interval it is named; a Wald-only study says ± 1.96 SE."""
    result = make_result()
    assert "estimate ± 1.96 SE" in _doc(result).method.variance  # the fixture's CIs are Wald
    skewed = tuple(o.model_copy(update={"ci_method": "skew_t"}) for o in result.outcomes)
    text = _doc(result.model_copy(update={"outcomes": skewed})).method.variance
    assert "Hall's (1992) skewness-corrected interval" in text and "± 1.96 SE" not in text
    mixed = (*skewed[:2], result.outcomes[2])
    text = _doc(result.model_copy(update={"outcomes": mixed})).method.variance
    assert f"Outcomes with it: {skewed[0].name}, {skewed[1].name}; the others:" in text
    assert "± 1.96 SE" in text
