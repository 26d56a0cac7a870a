"""The federated study on Flower's Deployment Engine: a real SuperLink and real SuperNodes
(separate processes, gRPC/HTTP on 127.0.0.1), the real ClientApp and ServerApp."""

import numpy as np
import pandas as pd
import pytest

from coordinator.files import load_spec
from coordinator.study.runner import (
    node_state_dir,
    run_local,
)
from coordinator.synth import write_federation
from shared.psm.reference import estimate_att_pooled
from shared.synth import generate_federation

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    fed = generate_federation(seed=3, sites=4, scale=0.05)
    return write_federation(fed, out, epsilon=None), fed  # exact: the sites are one owner's


def _pooled(spec, fed):
    cohort = pd.concat([s.cohort for s in fed.sites], ignore_index=True)
    feats = spec.features
    lo = np.array([f.lo for f in feats])
    hi = np.array([f.hi for f in feats])
    z = (cohort[[f.name for f in feats]].to_numpy(float) - lo) / (hi - lo)
    return estimate_att_pooled(
        z=z,
        t=cohort[spec.treatment.column].to_numpy(float),
        y=cohort[[o.name for o in spec.outcomes]].to_numpy(float),
        outcomes=spec.outcomes,
        covariates=[c.name for c in spec.covariates],
        tol=spec.federation.tol,
        ridge=spec.federation.ridge,
        caliper_sd=spec.strata.caliper_sd,
    )


def test_real_federation_equals_pooled_estimator(synthetic, tmp_path):
    spec_path, fed = synthetic
    spec = load_spec(spec_path)
    events = []
    result = run_local(spec_path, tmp_path / "run", on_event=events.append, timeout_s=400)
    pooled = _pooled(spec, fed)
    assert {s.name for s in result.sites if s.status == "ok"} == {s.name for s in spec.sites}
    np.testing.assert_allclose(result.propensity.beta, pooled.fitter.beta, rtol=1e-9, atol=1e-12)
    # exact nodes withhold cells of fewer than 11: the in-process run of the same ServerApp and
    # ClientApp code (checked against the pooled reference with those cells withheld, to 1e-9,
    # in tests/unit/test_study_inprocess.py) is what the real processes must give
    from flower_inprocess import signed_federation

    from shared.driver import run_study

    inproc_fed, grant = signed_federation(spec, tmp_path / "inprocess")
    ref_est = run_study(spec, inproc_fed, grant=grant).estimate
    for o in spec.outcomes:
        got, ref = result.outcome(o.name), ref_est.outcome(o.name)
        assert got.att == pytest.approx(ref.att, rel=1e-9, abs=1e-12), o.name
        assert got.se == pytest.approx(ref.se, rel=1e-9), o.name
        assert (got.n_treated, got.n_control) == (ref.n_treated, ref.n_control)
        assert abs(got.att - pooled.estimate.outcome(o.name).att) < 3 * ref.se
    # rounds really went through the SuperLink, and the progress events reached the runner
    assert [r.name for r in result.rounds][0] == "describe"
    assert any(e.get("event") == "round_end" for e in events)
    assert result.timings["startup_s"] > 0 and result.truth  # truth.json beside the spec


def test_real_nodes_append_their_own_site_effects_and_the_chosen_terms(synthetic, tmp_path):
    """``[terms] sites = "all"`` and ``select = "stepwise"``: each real node appends the
    indicators of the site name in its own configuration, and the terms each query names after
    checking them against the candidates it derives itself (protocol 10 through the real
    codec, TLS and authentication); the real run chooses the same terms as the in-process run
    of the same code and equals it to 1e-9, and the fit carries one slope per non-reference
    site and per chosen term."""
    from flower_inprocess import signed_federation

    from coordinator.synth.io import study_document, to_toml
    from shared.driver import run_study

    # six covariates, not sixteen: 55 candidates instead of 230, so a few score rounds fewer
    # each over a far smaller Hessian (every round is a ClientApp process per node), while
    # squares, products of a binary and a continuous covariate and hinges are all candidates
    doc = study_document(synthetic[1], epsilon=None)
    keep = ("age", "sex", "sbp", "diabetes", "smoker", "bmi")  # in the features' order
    doc["covariates"] = [c for c in doc["covariates"] if c["name"] in keep]
    doc["terms"] = {"sites": "all", "select": "stepwise"}
    spec_path = synthetic[0].with_name("study-sites.toml")
    spec_path.write_text(to_toml(doc))
    spec = load_spec(spec_path)
    assert [c.name for c in spec.covariates] == list(keep)
    assert len(spec.terms.sites) == len(spec.sites) == 4
    result = run_local(spec_path, tmp_path / "run", timeout_s=400)
    inproc_fed, grant = signed_federation(spec, tmp_path / "inprocess")
    ref = run_study(spec, inproc_fed, grant=grant)
    assert ref.chosen is not None and ref.selection is not None
    chosen = len(ref.chosen.interactions) + len(ref.chosen.hinges)
    assert chosen >= 1  # the queries named chosen terms, so the nodes' check ran
    sel = result.propensity.selection
    assert sel is not None and len(sel.terms) == chosen and sel.rounds == ref.selection.rounds
    assert len(result.propensity.beta) == 1 + len(spec.covariates) + chosen + 3
    np.testing.assert_allclose(result.propensity.beta, ref.fitter.beta, rtol=1e-9, atol=1e-12)
    for o in spec.outcomes:
        assert result.outcome(o.name).att == pytest.approx(
            ref.estimate.outcome(o.name).att, rel=1e-9, abs=1e-12
        )


# A killed SuperNode (the error names site and round, within the bound): tests/integration/test_faults.py


def test_private_study_charges_each_real_node_ledger(synthetic, tmp_path):
    from coordinator.synth.io import study_document, to_toml
    from node.ledger import PrivacyLedger
    from shared.dp.accounting import epsilon_spent
    from shared.dp.plan import NC_RELEASES
    from shared.driver import noise_plan

    # its own copy of the data: a site's ledger lives beside its data file, for every run over it
    spec_path = write_federation(synthetic[1], tmp_path / "data").with_name("study-dp.toml")
    # with the 24 negative controls: the local sites' policy lists them, and they travel in
    # releases of their own (nc_*) at their signed share of psm_stats, within the study's ε
    doc = study_document(synthetic[1], epsilon=1.0, negative_controls=True)
    # about 800 treated cannot resolve the propensity fit at ε = 1 (a study would stop after
    # describe by default); this test is about every round charging the real ledgers
    doc["privacy"]["unresolved_fit"] = "warn"
    # two Newton rounds, not four: every round kind (describe, ps-fit, score-hist, psm-stats)
    # still runs and is charged, and each round costs a ClientApp process per node
    doc["privacy"]["ps_rounds"] = 2
    spec_path.write_text(to_toml(doc))
    spec = load_spec(spec_path)
    assert spec.privacy.enabled and spec.privacy.epsilon == 1.0
    result = run_local(spec_path, tmp_path / "run", timeout_s=500)
    assert result.privacy.enabled and result.privacy.epsilon == spec.privacy.epsilon
    plan = noise_plan(spec)
    assert plan.n_negative_controls == 24 and result.privacy.negative_control_share == plan.control_share
    without = noise_plan(spec.model_copy(update={"negative_controls": ()}))
    for s in spec.sites:
        ledger = PrivacyLedger(f"sqlite:///{node_state_dir(s.data) / 'ledger.db'}")
        history = ledger.history()
        queries = [h.query for h in history]
        # every release of the plan was charged at this node once (ps_fit once per Newton
        # round), the controls' own releases too, and nothing else
        assert sorted(queries) == sorted(r.query for r in plan.releases)
        assert queries.count("ps_fit") == spec.privacy.ps_rounds
        assert all(queries.count(q) == 1 for q in NC_RELEASES)

        # the study cost the node the plan's ε to 1e-9 (at the ledger's δ): what it would cost
        # without controls, and within the spec's ε
        def at_ledger(p) -> float:
            return epsilon_spent(
                noise_multipliers=[r.noise_multiplier for r in p.releases],
                delta=ledger.state().delta,
                accountant=ledger.accountant,
            )

        assert ledger.spent() == pytest.approx(at_ledger(plan), rel=1e-9)
        assert at_ledger(plan) == pytest.approx(at_ledger(without), rel=1e-9)
        assert plan.epsilon_planned == pytest.approx(without.epsilon_planned, rel=1e-9)
        assert plan.epsilon_planned <= spec.privacy.epsilon
        assert result.privacy.per_site[s.name] == pytest.approx(ledger.spent())
    for o in result.outcomes:
        assert o.se_privacy > 0 and o.ci[0] < o.att < o.ci[1]
    assert [o.name for o in result.negative_controls] == [o.name for o in spec.negative_controls]
    assert len(result.negative_controls) == 24 and all(o.se_privacy > 0 for o in result.negative_controls)


# SecAgg+ between real SuperNodes (each ledger charged the plan's central σ once per release):
# tests/integration/test_small_firms.py, over twenty firms.
