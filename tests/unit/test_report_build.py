"""The report document: value figures by hand, checks against thresholds, honest narrative."""

from __future__ import annotations

import math
import re

import pytest
from report_fixtures import COST_PER_PERSON, ISSUED_AT, make_registration, make_result

from coordinator.report import ReportError, build_report, canonical_bytes
from coordinator.report.document import EvidenceReport
from shared.result import BalanceRow


def _doc(result=None, **kw):
    return build_report(result or make_result(**kw), issued_at=ISSUED_AT)


def test_value_figures_match_hand_computation_from_the_result():
    result = make_result(privacy=True)
    v = _doc(result).value
    cost, events, absence = (result.outcome(n) for n in ("claims_cost", "cv_event", "absence_days"))
    n = cost.n_treated
    assert v.n_treated == n == 533
    saved = -cost.att * n  # 412.5 × 533
    assert v.claims_saved.estimate == pytest.approx(219862.5, abs=1e-6)
    assert v.claims_saved.estimate == pytest.approx(saved, rel=1e-12)
    assert (v.claims_saved.ci_low, v.claims_saved.ci_high) == pytest.approx(
        (-cost.ci[1] * n, -cost.ci[0] * n), rel=1e-12
    )
    assert v.claims_saved.ci_low < v.claims_saved.estimate < v.claims_saved.ci_high
    outlay = COST_PER_PERSON * n  # 350 × 533 = 186,550
    assert v.intervention_cost == pytest.approx(186550.0)
    assert v.net_benefit.estimate == pytest.approx(saved - outlay)
    assert v.roi.estimate == pytest.approx((219862.5 - 186550.0) / 186550.0, rel=1e-12)
    assert (v.roi.ci_low, v.roi.ci_high) == pytest.approx(
        ((-cost.ci[1] * n - outlay) / outlay, (-cost.ci[0] * n - outlay) / outlay), rel=1e-12
    )
    assert v.events_averted.estimate == pytest.approx(0.0213 * 533, rel=1e-12)
    assert (v.events_averted.ci_low, v.events_averted.ci_high) == pytest.approx(
        (-events.ci[1] * n, -events.ci[0] * n), rel=1e-12
    )
    assert v.absence_days_averted.estimate == pytest.approx(1.84 * 533, rel=1e-12)
    assert v.absence_days_averted.ci_high == pytest.approx(-absence.ci[0] * n, rel=1e-12)
    assert v.claims_saved.truth == pytest.approx(450.0 * 533)
    assert v.roi.truth == pytest.approx((450.0 * 533 - outlay) / outlay)


def test_harmful_effect_gives_negative_saving_with_ordered_ci():
    result = make_result()
    cost = result.outcome("claims_cost")
    worse = cost.model_copy(update={"att": 100.0, "ci": (20.0, 180.0)})
    result = result.model_copy(update={"outcomes": (worse, *result.outcomes[1:])})
    v = _doc(result).value
    assert v.claims_saved.estimate == pytest.approx(-100.0 * 533)
    assert v.claims_saved.ci_low == pytest.approx(-180.0 * 533)
    assert v.claims_saved.ci_high == pytest.approx(-20.0 * 533)
    assert v.roi.estimate < -1


def test_no_intervention_cost_means_no_roi():
    result = make_result()
    spec = {**result.spec, "treatment": {**result.spec["treatment"], "cost_per_person": 0.0}}
    result = _with_spec(result, spec)
    doc = _doc(result)
    assert doc.value.roi is None and doc.value.intervention_cost == 0
    assert doc.value.claims_saved is not None
    assert "return on investment" not in doc.summaries.insurer


def _with_spec(result, spec):
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode())
    return result.model_copy(update={"spec": spec, "spec_hash": h.hexdigest()})


def test_report_carries_the_issue_contents_without_person_level_data():
    result = make_result(privacy=True)
    doc = _doc(result)
    assert doc.schema_version == "rehealth.evidence-report/3"
    assert doc.study.spec_hash == result.spec_hash and doc.study.spec == result.spec
    assert doc.estimand.name == "ATT"
    assert [s.name for s in doc.sites] == [s.name for s in result.sites]
    assert len(doc.balance) == 16 and len(doc.outcomes) == 3 and len(doc.strata) == 20
    assert doc.strata[0].lo is None and doc.strata[-1].hi is None  # ±inf outer edges
    assert doc.privacy.enabled and doc.privacy.epsilon == 3.0 and doc.privacy.accountant == "rdp"
    assert [b.site for b in doc.privacy.per_site] == sorted(result.privacy.per_site)
    assert doc.privacy.max_privacy_share_of_ci == pytest.approx(
        max(o.privacy_share_of_ci for o in result.outcomes)
    )
    assert doc.attrition.treated_dropped == 12 and doc.attrition.strata_used == 18
    assert doc.software.study_software == "0.1.0" and doc.issued_at == ISSUED_AT
    assert doc.synthetic and doc.outcome("claims_cost").truth == -450.0
    assert EvidenceReport.model_validate_json(canonical_bytes(doc.model_dump(mode="json"))) == doc


def test_checks_pass_and_fail_against_stated_thresholds():
    result = make_result()
    doc = build_report(result, issued_at=ISSUED_AT, registration=make_registration(result))
    by = {c.name: c for c in doc.checks}
    assert set(by) >= {
        "balance_smd",
        "variance_ratio",
        "size_treated",
        "size_control_pool",
        "overlap",
        "propensity_converged",
        "equipoise",
        "min_stratum_cells",
        "pre_registration",
    }
    assert all(c.passed for c in doc.gates) and doc.billable
    # the only information lines: each outcome's minimum detectable effect (never a pass)
    info = {c.name for c in doc.checks if c.kind == "info"}
    assert info == {f"mdrr_{o.name}" for o in result.outcomes}
    assert all(by[n].passed is None and by[n].value > 1 for n in info)
    assert by["size_treated"].value == 545 and by["size_control_pool"].value == pytest.approx(4262 / 545)
    assert by["overlap"].value == pytest.approx(533 / 545)
    assert by["min_stratum_cells"].source == "study"

    result = make_result()
    bad_row = BalanceRow(covariate="age", smd_before=0.4, smd_after=0.13, var_ratio_after=2.6)
    sites = tuple(s.model_copy(update={"n_treated": 15, "n_control": 30}) for s in result.sites)
    result = result.model_copy(update={"balance": (bad_row, *result.balance[1:]), "sites": sites})
    doc = build_report(result, issued_at=ISSUED_AT, registration=make_registration(result))
    failed = {c.name for c in doc.checks if c.failed}
    assert failed == {"balance_smd", "variance_ratio", "size_treated", "size_control_pool"}
    assert set(doc.failed_gates) == failed and not doc.billable
    assert doc.balanced(doc.balance[0]) is False
    assert f"4 of {len(doc.gates)} diagnostic gates failed" in doc.summaries.insurer


def test_summaries_are_written_from_the_numbers():
    base = _doc(privacy=True)
    result = make_result(privacy=True)
    cost = result.outcome("claims_cost")
    moved = cost.model_copy(update={"att": -300.25, "ci": (-500.0, -100.5)})
    doc = _doc(result.model_copy(update={"outcomes": (moved, *result.outcomes[1:])}))
    assert "412 per person lower" in base.summaries.insurer
    assert "300 per person lower" in doc.summaries.insurer
    assert "412" not in doc.summaries.insurer
    assert f"{533 * 300.25:,.0f}" in doc.summaries.insurer  # claims saved follows the ATT
    assert "ε = 3" in doc.summaries.regulator and base.study.spec_hash in base.summaries.regulator
    off = _doc(privacy=False)
    assert "No differential-privacy noise" in off.summaries.insurer
    real = _doc(truth=False)
    assert not real.synthetic and "simulated" not in real.summaries.hr
    # every number in a summary is one the document states (formatted), none typed in
    numbers = set(re.findall(r"\d+(?:,\d{3})*(?:\.\d+)?", base.summaries.insurer))
    assert numbers <= _formatted_numbers(base)


def _formatted_numbers(doc) -> set[str]:
    from coordinator.report import fmt

    values = []
    for o in doc.outcomes:
        values += [abs(o.estimate.att), *o.estimate.ci]
        # DP studies: CI width ÷ physical limit and ÷ exact (shared.dp.limit)
        values += [r for r in (o.estimate.ratio_limit, o.estimate.ratio_exact_est) if r is not None]
    for f in (doc.value.claims_saved, doc.value.events_averted, doc.value.roi):
        values += [f.estimate, f.ci_low, f.ci_high]
    values += [
        doc.value.intervention_cost,
        doc.value.cost_per_person,
        doc.value.n_treated,
        doc.privacy.epsilon,
        doc.privacy.delta,
        len(doc.sites),
        len(doc.checks),
        len(doc.gates),
        len(doc.checks) - len(doc.gates),
        len(doc.failed_gates),
        doc.privacy.max_privacy_share_of_ci,
        *(doc.privacy.split or {}).values(),
    ]
    out = set()
    for x in values:
        for s in (fmt.num(x), fmt.pct(x), fmt.pct(x, digits=0), f"{x:g}", f"{x:.2f}"):
            out |= set(re.findall(r"\d+(?:,\d{3})*(?:\.\d+)?", s))
    return out | {"95", "5"}  # "95% CI", "the 5% level": the CI's stated confidence


def test_spec_that_does_not_match_its_hash_is_refused():
    result = make_result()
    spec = {**result.spec, "study": {**result.spec["study"], "name": "other"}}
    with pytest.raises(ReportError, match="spec_hash .* does not match"):
        _doc(result.model_copy(update={"spec": spec}))


def test_non_finite_number_is_refused_naming_its_field():
    result = make_result()
    cost = result.outcome("claims_cost").model_copy(update={"se": math.nan})
    with pytest.raises(ReportError, match=r"outcomes\[0\]\.estimate\.se"):
        _doc(result.model_copy(update={"outcomes": (cost, *result.outcomes[1:])}))


def test_study_diagnostics_are_shown_once_unless_they_disagree():
    from shared.result import Diagnostic

    result = make_result()
    own = {c.name: c for c in _doc(result).checks}
    same = Diagnostic(
        name="size_gate_treated",
        passed=True,
        value=own["size_treated"].value,
        threshold=100.0,
        message="restated",
    )
    stricter = Diagnostic(
        name="common_support",
        passed=False,
        value=own["overlap"].value,
        threshold=1.0,
        message="12 treated dropped",
    )
    doc = _doc(result.model_copy(update={"diagnostics": (same, stricter)}))
    names = [c.name for c in doc.checks]
    assert "size_gate_treated" not in names and names.count("size_treated") == 1
    assert "common_support" in names  # disagrees with the report's overlap verdict: kept
    assert not doc.billable and "common_support" in doc.failed_gates


def test_dp_fit_is_judged_by_its_planned_rounds_not_by_convergence():
    result = make_result(privacy=True)
    result = result.model_copy(
        update={"propensity": result.propensity.model_copy(update={"converged": False, "iterations": 4})}
    )
    check = {c.name: c for c in _doc(result).checks}["propensity_converged"]
    # information, not a pass: nothing was tested
    assert check.kind == "info" and check.passed is None and "not tested under DP" in check.detail
    exact = make_result(privacy=False)
    exact = exact.model_copy(update={"propensity": exact.propensity.model_copy(update={"converged": False})})
    gate = {c.name: c for c in _doc(exact).checks}["propensity_converged"]
    assert gate.kind == "gate" and gate.passed is False and gate.threshold == 1e-8


def test_the_report_states_the_budget_shares_behind_the_estimate():
    """The spec's split, or the re-split the study chose after describe, is in the document and
    its summary; an exact study states none."""
    result = make_result(privacy=True)
    spec_split = _doc(result).privacy
    assert spec_split.split == result.spec["privacy"]["split"] and not spec_split.resplit
    resplit = {"describe": 0.05, "ps_fit": 0.31, "psm_stats": 0.59, "balance": 0.05}
    doc = _doc(result.model_copy(update={"privacy": result.privacy.model_copy(update={"resplit": resplit})}))
    assert doc.privacy.split == resplit and doc.privacy.resplit
    assert "propensity fit 0.31, PSM table 0.59" in doc.summaries.regulator
    assert "re-split after the describe round" in doc.summaries.regulator
    assert _doc(privacy=False).privacy.split is None
    assert "secure sum" not in doc.summaries.regulator
    secure = _doc(
        result.model_copy(update={"privacy": result.privacy.model_copy(update={"secure_nodes": 4})})
    )
    assert secure.privacy.secure_nodes == 4
    assert "secure sum (SecAgg+) over 4 nodes" in secure.summaries.regulator
