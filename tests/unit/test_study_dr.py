"""``estimator = "dr"`` as a study: through the real ClientApp on an in-process Grid, with the
nodes' small-cell floor, into the result and the report's method section; and the spec's rules."""

from __future__ import annotations

import numpy as np
import pytest
from flower_inprocess import signed_grid

from coordinator.files import load_spec
from coordinator.flower.federation import GridFederation
from coordinator.report import build_report
from coordinator.study.assemble import assemble_result
from coordinator.synth import write_federation
from shared.driver import run_study
from shared.errors import SpecError
from shared.psm import scale_outcomes
from shared.psm.dr import dr_stats, estimate_dr
from shared.study import Outcome, StudySpec
from shared.synth import generate_federation


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    out = tmp_path_factory.mktemp("fed")
    fed = generate_federation(seed=11, sites=4, scale=0.08)
    spec = load_spec(write_federation(fed, out, epsilon=None))  # exact: one owner's sites
    return spec.model_copy(update={"estimator": "dr"}), fed


def _scaled(spec, cohort):
    feats = [c.as_feature() for c in spec.covariates]
    lo, hi = np.array([f.lo for f in feats]), np.array([f.hi for f in feats])
    z = (cohort[[f.name for f in feats]].to_numpy(float) - lo) / (hi - lo)
    return (
        z,
        cohort[spec.treatment.column].to_numpy(float),
        cohort[[o.name for o in spec.outcomes]].to_numpy(float),
    )


def _pooled_dr_without_small_cells(spec, fed, beta, edges, k=11):
    """DR on the pooled rows minus every row in a stratum × arm cell of fewer than ``k`` at its
    own site (what an exact node withholds), computed from rows."""
    beta, edges = np.asarray(beta, dtype=float), np.asarray(edges, dtype=float)
    zs, ts, ys = [], [], []
    for s in fed.sites:
        z, t, y = _scaled(spec, s.cohort)
        score = np.hstack([np.ones((len(t), 1)), z]) @ beta
        cell = (np.searchsorted(edges, score, side="right") - 1) * 2 + t.astype(int)
        keep = np.bincount(cell, minlength=2 * (len(edges) - 1))[cell] >= k
        zs.append(z[keep]), ts.append(t[keep]), ys.append(y[keep])
    y01, _ = scale_outcomes(
        y=np.vstack(ys), lo=[o.lo for o in spec.outcomes], cap=[o.cap for o in spec.outcomes]
    )
    stats = dr_stats(z=np.vstack(zs), t=np.concatenate(ts), y=y01, beta=beta, edges=edges)
    return estimate_dr(stats=stats, outcomes=spec.outcomes)


def test_dr_study_over_the_client_app_equals_pooled_dr_and_states_it(federation, tmp_path):
    """Federated DR = pooled DR over the rows the nodes release, to 1e-9: the controls'
    cross-products of a withheld cell are withheld with it (were they sent, the slope would
    hold rows the table lacks and the two would differ). The result and the report say DR."""
    spec, fed = federation
    grid, grant = signed_grid(spec, tmp_path)
    gf = GridFederation(grid, poll_s=0.0)
    gf.wait_for_nodes(len(spec.sites))
    run = run_study(spec, gf, grant=grant)
    reference = _pooled_dr_without_small_cells(spec, fed, run.fitter.beta, run.table.edges)
    everyone = _pooled_dr_without_small_cells(spec, fed, run.fitter.beta, run.table.edges, k=0)
    assert all(abs(a.att - b.att) > 1e-6 * abs(b.att) for a, b in zip(reference, everyone))  # cells were cut
    for o, r in zip(run.estimate.outcomes, reference):
        assert o.att == pytest.approx(r.att, rel=1e-9, abs=1e-12)
        assert o.se == pytest.approx(r.se, rel=1e-9)
        assert o.att_stratified == pytest.approx(r.att_stratified, rel=1e-9, abs=1e-12)
    result = assemble_result(run, dropped={}, started_at="t0", finished_at="t1", total_s=1.0)
    assert result.estimator == "dr" and result.spec["estimator"] == "dr"
    doc = build_report(result, issued_at="2026-11-23T20:00:00+00:00")
    assert doc.method.outcome_model.startswith("Doubly robust")
    # why stratified stays the default, exact and DP: the measurements the report cites
    assert "docs/benchmarks/dr.md" in doc.method.outcome_model
    assert "docs/benchmarks/dr_privacy.md" in doc.method.outcome_model
    for o in result.outcomes:
        assert o.name in doc.method.outcome_model  # each stratified estimate stated beside it
    assert "σ̂² dᵀS_zz⁻¹d" in doc.method.variance


def test_spec_estimator_default_keeps_the_hash_and_dp_dr_needs_the_balance_release():
    from shared.psm.reference import reference_spec

    spec = reference_spec(outcomes=(Outcome(name="y", cap=1.0),), covariates=("a", "b"), n_sites=2)
    assert spec.estimator == "stratified"
    # the hash main gave this spec before the field existed (registrations and grants name it)
    assert spec.spec_hash() == "7a2a62741f0d01a3dd1183fac2fe6e48eb451ad157d3e4fde2e819c3f9ad6ecc"
    assert spec.model_copy(update={"estimator": "dr"}).spec_hash() != spec.spec_hash()
    data = spec.model_dump(mode="json")
    data["privacy"] = {"enabled": True}
    data["estimator"] = "dr"
    assert StudySpec.from_dict(data).estimator == "dr"  # DP DR: planned releases (test_study_dp_dr.py)
    data["privacy"]["split"] = {"describe": 0.05, "ps_fit": 0.5, "psm_stats": 0.45, "balance": 0.0}
    with pytest.raises(SpecError, match="balance must be positive"):
        StudySpec.from_dict(data)
    toml = "\n".join(
        (
            'estimator = "dr"',
            "[study]",
            'name = "s"',
            "[privacy]",
            "enabled = false",
            "[[outcomes]]",
            'name = "y"',
        )
    )
    assert StudySpec.from_toml_text(toml + "\ncap = 1.0\n").estimator == "dr"
