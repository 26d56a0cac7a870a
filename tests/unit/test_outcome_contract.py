"""One outcome type from estimator to report, and one place for each threshold (issue #17,
item 3).

A small exact study runs through the study driver over in-process sites, is assembled into the
study result as the coordinator does it and built into the evidence report. The report's
outcome must be the very object the estimator built (not a copy into a parallel type), and a
threshold changed in :mod:`shared.thresholds` must move both the estimator's diagnostic and the
report's check.
"""

from __future__ import annotations

import pytest

from coordinator.files import load_spec
from coordinator.report import build_report
from coordinator.study.assemble import assemble_result
from coordinator.synth import write_federation
from node.study_service import load_site_arrays
from shared import thresholds
from shared.driver import run_study
from shared.inprocess_sites import InProcessSites
from shared.protocol import Describe, StudyQuery
from shared.psm.estimator import estimate_att
from shared.result import BalanceRow, Diagnostic, OutcomeEstimate
from shared.synth import generate_federation

STAMP = "2026-12-01T00:00:00+00:00"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("fed")
    spec = load_spec(write_federation(generate_federation(seed=5, sites=3, scale=0.12), out, epsilon=None))
    query = StudyQuery.for_spec(spec, (Describe(),))
    arrays = {s.name: load_site_arrays(s.data, query, None) for s in spec.sites}
    run = run_study(spec, InProcessSites(arrays, min_cell=1))
    result = assemble_result(run, dropped={}, started_at=STAMP, finished_at=STAMP, total_s=1.0)
    return spec, run, result


def test_the_report_carries_the_estimators_own_objects(study):
    _, run, result = study
    doc = build_report(result, issued_at=STAMP)
    for o in run.estimate.outcomes:
        assert type(o) is OutcomeEstimate
        assert result.outcome(o.name) is o
        assert doc.outcome(o.name).estimate is o  # held, not copied field by field
    assert all(type(b) is BalanceRow for b in run.estimate.balance)
    assert doc.balance == result.balance and doc.balance[0] is run.estimate.balance[0]
    assert all(type(d) is Diagnostic for d in run.estimate.diagnostics)
    assert result.diagnostics == run.estimate.diagnostics


def _verdicts(study, monkeypatch, name: str, value: float) -> tuple[dict, dict]:
    """The estimator's diagnostics and the report's checks with ``thresholds.<name> = value``."""
    spec, run, result = study
    monkeypatch.setattr(thresholds, name, value)
    est = estimate_att(table=run.table, outcomes=spec.outcomes, covariates=[c.name for c in spec.covariates])
    doc = build_report(result.model_copy(update={"diagnostics": est.diagnostics}), issued_at=STAMP)
    return ({d.name: d for d in est.diagnostics}, {c.name: c for c in doc.checks})


# threshold, the estimator's diagnostic, the report's check, True if passing means value < threshold
GATES = [
    ("SMD_MAX", "balance_after", "balance_smd", True),
    ("MIN_TREATED", "size_gate_treated", "size_treated", False),
    ("MIN_CONTROL_RATIO", "size_gate_control_ratio", "size_control_pool", False),
    ("MIN_SUPPORT", "common_support", "overlap", False),
]


@pytest.mark.parametrize("name, diagnostic, check, below", GATES)
def test_a_threshold_changed_in_its_one_place_moves_estimator_and_report(
    study, monkeypatch, name, diagnostic, check, below
):
    _, run, _ = study
    value = next(d.value for d in run.estimate.diagnostics if d.name == diagnostic)
    assert value and value > 0
    for factor in (0.999, 1.001):  # just under, then just over the measured value
        threshold = value * factor
        est, report = _verdicts(study, monkeypatch, name, threshold)
        expected = (value < threshold) if below else (value >= threshold)
        assert est[diagnostic].passed is expected and est[diagnostic].threshold == threshold
        assert report[check].passed is expected and report[check].threshold == threshold
        assert f"{threshold:g}"[:4] in report[check].rule or name == "MIN_SUPPORT"


def test_the_rendered_balance_states_the_documents_threshold(study, monkeypatch):
    """A signed report is read with the threshold it states, not today's constant."""
    from coordinator.report.view import report_view

    _, _, result = study
    monkeypatch.setattr(thresholds, "SMD_MAX", 0.25)
    doc = build_report(result, issued_at=STAMP)
    monkeypatch.setattr(thresholds, "SMD_MAX", 0.1)
    view = report_view(doc)
    assert "|SMD after| < 0.25" in view.balance.note
    worst = max(abs(b.smd_after) for b in doc.balance if b.smd_after is not None)
    assert doc.balanced(doc.balance[0]) is (abs(doc.balance[0].smd_after) < 0.25)
    assert worst < 0.25 or not doc.check("balance_smd").passed
