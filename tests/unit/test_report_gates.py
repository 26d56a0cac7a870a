"""Gates and information: only gates pass or fail, a failed gate makes the report not
billable (visibly), a saving is claimed only when billable and its CI excludes zero."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError
from report_fixtures import ISSUED_AT, make_registration, make_result

from coordinator.report import build_report, canonical_bytes
from coordinator.report.checks import equipoise_check, variance_ratio_check
from coordinator.report.document import Check, EvidenceReport, StratumRow
from coordinator.report.html import render_html
from coordinator.report.view import report_view
from shared.result import BalanceRow, Diagnostic


def _registered(result):
    return build_report(result, issued_at=ISSUED_AT, registration=make_registration(result))


def _with_claims_ci(result, ci):
    cost = result.outcome("claims_cost")
    moved = cost.model_copy(update={"att": (ci[0] + ci[1]) / 2, "ci": ci})
    return result.model_copy(update={"outcomes": (moved, *result.outcomes[1:])})


def test_information_checks_are_never_counted_as_passes():
    """The issue's case: "All 7 diagnostics passed" counted an overlap coefficient with no
    threshold. It is information now, and the sentence counts gates only."""
    result = make_result()
    overlap = Diagnostic(name="score_overlap", passed=True, value=0.55, threshold=None, message="overlap")
    doc = _registered(result.model_copy(update={"diagnostics": (*result.diagnostics, overlap)}))
    info = {c.name for c in doc.checks if c.kind == "info"}
    mdrr = {f"mdrr_{o.name}" for o in result.outcomes}  # each outcome's minimum detectable effect
    assert info == {"score_overlap"} | mdrr and doc.check("score_overlap").passed is None
    gates = len(doc.checks) - len(info)
    assert len(doc.gates) == gates and doc.billable
    said = (
        f"All {gates} diagnostic gates passed their stated thresholds "
        f"({len(info)} further checks are information only)."
    )
    assert said in doc.summaries.insurer
    view = report_view(doc)
    assert view.verdict.startswith(f"All {gates} diagnostic gates passed.")
    assert dict((r[0], r[4]) for r in view.checks.rows)["Score overlap"] == "info"


def test_a_study_diagnostic_without_a_threshold_is_information_not_a_pass():
    """The demo's DP report showed the fit-noise bias bound and the merged strata's largest
    weight as "pass" with threshold "n/a": a check without a threshold passed nothing."""
    result = make_result()
    extra = (
        Diagnostic(
            name="dp_fit_bias", passed=True, value=0.056, threshold=None, message="bias bound in the CI"
        ),
        Diagnostic(name="dp_weight_bound", passed=True, value=2.7, threshold=None, message="strata merged"),
    )
    doc = _registered(result.model_copy(update={"diagnostics": (*result.diagnostics, *extra)}))
    for name in ("dp_fit_bias", "dp_weight_bound"):
        assert doc.check(name).kind == "info" and doc.check(name).passed is None
    assert doc.check("dp_weight_bound").label == "Largest control weight after merging strata (DP)"
    assert doc.billable
    unbounded = Diagnostic(name="dp_fit_bias", passed=False, value=None, threshold=None, message="unbounded")
    doc = _registered(result.model_copy(update={"diagnostics": (*result.diagnostics, unbounded)}))
    assert doc.check("dp_fit_bias").kind == "gate" and not doc.billable  # a stated failure still fails


def test_a_check_is_a_gate_with_a_verdict_or_information_without_one():
    kw = dict(name="x", label="x", rule="r", value=None, threshold=None, source="report", detail="")
    with pytest.raises(ValidationError, match="info check"):
        Check(kind="info", passed=True, **kw)
    with pytest.raises(ValidationError, match="gate passes or fails"):
        Check(kind="gate", passed=None, **kw)


def test_a_failed_gate_makes_the_report_not_billable_and_says_so_everywhere():
    result = make_result()
    bad = BalanceRow(covariate="age", smd_before=0.4, smd_after=0.13, var_ratio_after=1.0)
    doc = _registered(result.model_copy(update={"balance": (bad, *result.balance[1:])}))
    assert not doc.billable and doc.failed_gates == ("balance_smd",)
    # the claims CI excludes zero, but nothing is claimed from a study that failed a gate
    assert doc.value.claims_saved.ci_low > 0 and not doc.value.saving_claimed
    assert "balance_smd" in doc.value.claim_note
    assert "Claims cost saved across the treated" not in doc.summaries.insurer
    assert "NOT FOR BILLING" in doc.summaries.regulator
    view = report_view(doc)
    assert view.billing_banner.startswith("NOT FOR BILLING") and "Covariate balance" in view.billing_banner
    html = render_html(view)
    assert '<div class="billing">NOT FOR BILLING' in html
    assert "Claims cost saved (estimate, not claimed)" in html


def test_billable_cannot_be_flipped_in_the_document():
    """A reader who edits billable or failed_gates gets a document that does not parse (and,
    signed, a signature that fails)."""
    result = make_result()
    doc = build_report(result, issued_at=ISSUED_AT)  # not registered: pre_registration failed
    assert not doc.billable and doc.failed_gates == ("pre_registration",)
    data = json.loads(canonical_bytes(doc.model_dump(mode="json")))
    assert EvidenceReport.model_validate(data) == doc
    for change in ({"billable": True}, {"billable": True, "failed_gates": []}, {"failed_gates": []}):
        with pytest.raises(ValidationError, match="disagree with the checks"):
            EvidenceReport.model_validate({**data, **change})


def test_without_a_registration_the_pre_registration_gate_fails():
    doc = build_report(make_result(), issued_at=ISSUED_AT)
    check = doc.check("pre_registration")
    assert check.kind == "gate" and check.passed is False and "no registration" in check.detail
    late = make_result()
    doc = build_report(
        late, issued_at=ISSUED_AT, registration=make_registration(late, at="2026-11-23T19:45:00Z")
    )
    assert (
        doc.failed_gates == ("pre_registration",)
        and "not before the study started" in doc.check("pre_registration").detail
    )


def test_a_saving_is_claimed_only_when_its_ci_excludes_zero():
    doc = _registered(make_result())
    assert doc.billable and doc.value.saving_claimed
    assert "Claims cost saved across the treated" in doc.summaries.insurer
    assert "return on investment" in doc.summaries.insurer
    # the issue's case: saved CI from about −315k to 1.37M
    wide = _registered(_with_claims_ci(make_result(), (-2570.0, 591.0)))
    v = wide.value
    assert v.claims_saved.ci_low < 0 < v.claims_saved.ci_high
    assert wide.billable and not v.saving_claimed and "includes zero" in v.claim_note
    assert "Claims cost saved across the treated" not in wide.summaries.insurer
    assert "return on investment" not in wide.summaries.insurer
    assert "includes zero" in wide.summaries.insurer  # the estimate is still stated, with its CI
    rows = {r[0]: r for r in report_view(wide).value.rows}
    assert (
        "Claims cost saved (estimate, not claimed)" in rows
        and "Return on investment (estimate, not claimed)" in rows
    )


def test_equipoise_by_hand():
    """Treated 100, controls 200: logit P = ln ½, so the preference window [0.3, 0.7] is the
    logit-score window [logit 0.3 + ln ½, logit 0.7 + ln ½] = [−1.540, 0.154]."""
    strata = (
        StratumRow(lo=None, hi=-2.0, n_treated=0, n_control=100, used=False),
        StratumRow(lo=-2.0, hi=-1.0, n_treated=10, n_control=60, used=True),
        StratumRow(lo=-1.0, hi=0.0, n_treated=30, n_control=30, used=True),
        StratumRow(lo=0.0, hi=1.0, n_treated=30, n_control=10, used=True),
        StratumRow(lo=1.0, hi=None, n_treated=30, n_control=0, used=False),
    )
    lo_w = math.log(0.3 / 0.7) + math.log(0.5)
    hi_w = math.log(0.7 / 0.3) + math.log(0.5)
    check = equipoise_check(strata)
    share = (70 * (-1.0 - lo_w) + 60 + 40 * (hi_w - 0.0)) / 300
    assert check.kind == "gate" and check.value == pytest.approx(share, rel=1e-12)
    assert check.passed  # lower bound 60 / 300 = 0.2, the CohortMethod threshold
    assert "between 20.0% and 56.7%" in check.detail
    # arms far apart: few people in equipoise
    apart = (
        StratumRow(lo=None, hi=-3.0, n_treated=5, n_control=195, used=True),
        StratumRow(lo=-3.0, hi=-1.0, n_treated=5, n_control=5, used=True),
        StratumRow(lo=-1.0, hi=None, n_treated=90, n_control=0, used=False),
    )
    assert equipoise_check(apart).passed is False


def test_variance_ratios_the_noise_hides_are_information_not_a_pass():
    rows = (BalanceRow(covariate="age", smd_before=0.1, smd_after=0.01, var_ratio_after=None),)
    check = variance_ratio_check(rows)
    assert check.kind == "info" and check.passed is None and "not tested" in check.detail
    some = (*rows, BalanceRow(covariate="sbp", smd_before=0.1, smd_after=0.01, var_ratio_after=2.5))
    check = variance_ratio_check(some)
    assert (
        check.kind == "gate" and check.passed is False and "1 of 2 covariates not computable" in check.detail
    )
