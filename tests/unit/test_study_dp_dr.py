"""``estimator = "dr"`` under DP as a study: its releases are the noise plan's, each node's
ledger pays exactly the plan, and a node releases the slope only as its own plan says."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.files import load_spec
from coordinator.synth import write_federation
from node.ledger import PrivacyLedger
from node.study_service import load_site_arrays
from shared.answer import ledger_step, planned_releases
from shared.dp.accounting import epsilon_spent
from shared.driver import noise_plan, run_study
from shared.errors import PolicyRefused, PrivacyError, QueryRefused, SpecError
from shared.inprocess_sites import InProcessSites, node_plan
from shared.protocol import Describe, PsmStats, PsmWsum, StudyQuery
from shared.study import BudgetSplit, StudySpec
from shared.synth import generate_federation

EPSILON = 4.0


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("fed")
    spec = load_spec(write_federation(generate_federation(seed=5, sites=3, scale=0.12), out))
    spec = spec.model_copy(
        update={
            "estimator": "dr",
            "privacy": spec.privacy.model_copy(
                update={"enabled": True, "epsilon": EPSILON, "unresolved_fit": "warn"}
            ),
        }
    )
    query = StudyQuery.for_spec(spec, (Describe(),))
    return spec, {s.name: load_site_arrays(s.data, query, None) for s in spec.sites}


def test_dp_dr_plan_releases_the_weighted_sums_with_the_imbalance_and_the_slope(study):
    spec, _ = study
    plan = noise_plan(spec)
    stratified = noise_plan(spec.model_copy(update={"estimator": "stratified"}))
    assert all(plan.has(q) for q in ("psm_wsum", "dr_dsum", "dr_slope"))
    assert not stratified.has("dr_slope") and not stratified.has("dr_dsum")
    # the same total ρ; psm_stats' 90 % past psm_sumsq in four equal shares (plan.DR_SHARES)
    # where the stratified study gives psm_main and psm_wsum 45 % each
    assert plan.rho == pytest.approx(stratified.rho, rel=1e-5)
    mu = {r.query: r.noise_multiplier for r in plan.releases}
    for q in ("psm_main", "psm_wsum", "dr_dsum", "dr_slope"):
        assert mu[q] == pytest.approx(stratified.release("psm_wsum").noise_multiplier * 2**0.5, rel=1e-6), q
    assert mu["psm_sumsq"] == pytest.approx(stratified.release("psm_sumsq").noise_multiplier, rel=1e-6)
    assert mu["psm_balance"] == pytest.approx(stratified.release("psm_balance").noise_multiplier, rel=1e-6)
    assert plan.release("dr_slope").sensitivity == pytest.approx(
        np.sqrt(1 + 3 / 4 + 16 / 4 + (16 * 17 / 2 + 16 * 3) / 16), rel=1e-12
    )
    assert plan.epsilon_planned <= EPSILON
    # the node derives the same plan from the query's signed terms
    assert node_plan(StudyQuery.for_spec(spec, (Describe(),))).to_dict() == plan.to_dict()


def _assert_ledger_is_the_plan(charges, plan) -> None:
    """Every planned release charged once at the plan's μ; at the plan's (σ, Δ) too except the
    two weighted sums, whose Δ the node computes from the weights it is asked for."""
    assert sorted(c.query for c in charges) == sorted(r.query for r in plan.releases)
    for c in charges:
        r = next(r for r in plan.releases if r.query == c.query)
        assert c.sigma / c.sensitivity == pytest.approx(r.noise_multiplier, rel=1e-12)
        if c.query not in ("psm_wsum", "dr_dsum"):
            assert (c.sigma, c.sensitivity) == pytest.approx((r.sigma, r.sensitivity), rel=1e-12)


def test_dp_dr_study_charges_each_node_exactly_its_plan(study, tmp_path):
    """End to end in-process through each node's own ledger step: every planned release is
    charged once (dr_slope, psm_wsum and dr_dsum included), each ledger's study ε is the plan's,
    the reservation completes, and the estimate is DR's (adjusted, its stratified ATT beside)."""
    spec, arrays = study
    plan = noise_plan(spec)
    urls = {s: f"sqlite:///{tmp_path / s}.db" for s in arrays}
    for url in urls.values():
        PrivacyLedger(url).ensure_budget(epsilon=10.0, delta=spec.privacy.delta)
    fed = InProcessSites(
        arrays,
        rngs=lambda site: np.random.default_rng(3),
        ledgers={s: PrivacyLedger(u) for s, u in urls.items()},
    )
    run = run_study(spec, fed)
    eps_plan = epsilon_spent(
        noise_multipliers=[r.noise_multiplier for r in plan.releases],
        delta=spec.privacy.delta,
        accountant=plan.accountant,
    )
    for site, url in urls.items():
        led = PrivacyLedger(url)
        _assert_ledger_is_the_plan(led.history(), plan)
        assert led.study_spent(spec.spec_hash()) == pytest.approx(eps_plan, rel=1e-9)
        assert run.privacy_study[site] == pytest.approx(eps_plan, rel=1e-9)
        assert [r.status for r in led.reservations()] == ["completed"]
    assert [r.name for r in run.rounds][-2:] == ["psm-stats", "psm-wsum"]
    for o in run.estimate.outcomes:
        assert o.att_stratified is not None and o.att != o.att_stratified
        assert np.isfinite(o.se) and o.se > o.se_sampling
        assert o.ci[0] < o.att < o.ci[1]


def test_a_node_releases_the_slope_only_as_its_own_plan_says(study, tmp_path):
    """Attack: a coordinator asking for less noise on the slope. The node never takes a σ from
    the query: it derives every (σ, Δ) from the signed terms. So the coordinator's levers are
    the terms and the ops, and each is refused before anything is charged: the slope asked of a
    study signed stratified (its plan has no dr_slope: the cross-products would leave unpaid)
    and a charge of dr_slope at a σ below the plan's (the ledger holds the study to the ρ it
    reserved). The imbalance's release: test_a_node_releases_the_imbalance_only_as_its_plan_says."""
    spec, _ = study
    stratified = spec.model_copy(update={"estimator": "stratified"})
    beta, edges = (0.0,) * (len(spec.covariates) + 1), (-np.inf, 0.0, np.inf)
    slope_ask = StudyQuery.for_spec(stratified, (PsmStats(beta=beta, edges=edges, slope=True),))
    led = PrivacyLedger(f"sqlite:///{tmp_path / 'a.db'}")
    led.ensure_budget(epsilon=10.0, delta=spec.privacy.delta)
    plan_s = node_plan(slope_ask)
    with pytest.raises(QueryRefused, match="no dr_slope"):
        planned_releases(slope_ask, plan_s)
    led.reserve(
        study_id=slope_ask.study_id, releases=[(r.query, r.sigma, r.sensitivity) for r in plan_s.releases]
    )
    with pytest.raises(QueryRefused, match="no dr_slope"):
        ledger_step(slope_ask, plan_s, led, ttl_s=60)
    assert led.history() == []  # nothing charged, nothing released

    # a DR study's reservation: the slope at a quarter of its σ (16× its ρ) does not fit
    dr_ask = StudyQuery.for_spec(spec, (PsmStats(beta=beta, edges=edges, slope=True),))
    plan = node_plan(dr_ask)
    led.reserve(study_id=dr_ask.study_id, releases=[(r.query, r.sigma, r.sensitivity) for r in plan.releases])
    slope = plan.release("dr_slope")
    with pytest.raises(PrivacyError, match="beyond"):
        led.charge_reserved(
            study_id=dr_ask.study_id, query="dr_slope", sigma=slope.sigma / 4, sensitivity=slope.sensitivity
        )
    # what the node charges is its plan's, whatever the query
    assert {k: (r.sigma, r.sensitivity) for k, r in planned_releases(dr_ask, plan).items()} == {
        q: (plan.release(q).sigma, plan.release(q).sensitivity)
        for q in ("psm_main", "psm_sumsq", "psm_balance", "dr_slope")
    }


def _dsum_op(spec, **update) -> PsmWsum:
    """A DR study's weighted-sums operation over two strata (weights 1 and −2 for the controls
    of the first: 4 treated, 2 controls), outcome and covariate centres spread over [0, 1]."""
    o, d = len(spec.analysed_outcomes), len(spec.design_covariates)
    op = PsmWsum(
        beta=(0.0,) * (d + 1),
        edges=(-np.inf, 0.0, np.inf),
        count=(2.0, 4.0, 6.0, 3.0),
        center=tuple(np.linspace(0.1, 0.9, 4 * o)),
        max_weight=2.0,
        z_center=tuple(np.linspace(0.0, 1.0, 4 * d)),
    )
    return op.model_copy(update=update)


def test_a_node_releases_the_imbalance_only_as_its_plan_says(study, tmp_path):
    """Attacks on ``dr_dsum`` (the covariates' weighted sums), each refused on the query alone,
    before any charge (each succeeds with its check removed: verified by reverting it):

    * asked of a study signed stratified (its plan has no dr_dsum: the covariates' sums would
      leave unpaid) — refused by the query check and, behind it, by the plan;
    * a DR study's weighted sums without it (off the signed plan, whose last release holds it);
    * a declared largest weight other than the counts' (the coordinator's CI would assume a σ
      the node does not add), centres outside [0, 1] or of the wrong size;
    * and whatever centres it is sent, the node charges μ·Δ with the Δ it computes from them."""
    from shared.answer import check_query
    from shared.dp.wsum import att_weights, wsum_sensitivity

    spec, _ = study
    stratified = spec.model_copy(update={"estimator": "stratified"})
    op = _dsum_op(spec)
    strat_ask = StudyQuery.for_spec(stratified, (op,))
    with pytest.raises(QueryRefused, match='only of a study signed with estimator = "dr"'):
        check_query(strat_ask)
    with pytest.raises(QueryRefused, match="no dr_dsum"):
        planned_releases(strat_ask, node_plan(strat_ask))
    led = PrivacyLedger(f"sqlite:///{tmp_path / 'd.db'}")
    led.ensure_budget(epsilon=10.0, delta=spec.privacy.delta)
    plan_s = node_plan(strat_ask)
    led.reserve(
        study_id=strat_ask.study_id, releases=[(r.query, r.sigma, r.sensitivity) for r in plan_s.releases]
    )
    with pytest.raises(QueryRefused, match="no dr_dsum"):
        ledger_step(strat_ask, plan_s, led, ttl_s=60)
    assert led.history() == []

    with pytest.raises(QueryRefused, match="carry the imbalance"):
        check_query(StudyQuery.for_spec(spec, (op.model_copy(update={"z_center": ()}),)))
    d = len(spec.design_covariates)
    for bad, said in (
        (dict(max_weight=1.0), "declared largest weight"),
        (dict(max_weight=2.0 * (1 + 1e-6)), "declared largest weight"),
        (dict(z_center=(0.5,) * (4 * d - 1)), "centers must be"),
        (dict(z_center=(1.5,) + (0.5,) * (4 * d - 1)), "centers must be"),
        (dict(z_center=(float("nan"),) + (0.5,) * (4 * d - 1)), "centers must be"),
    ):
        with pytest.raises(QueryRefused, match=said):
            check_query(StudyQuery.for_spec(spec, (_dsum_op(spec, **bad),)))

    dr_ask = StudyQuery.for_spec(spec, (op,))
    check_query(dr_ask)
    plan = node_plan(dr_ask)
    charged = planned_releases(dr_ask, plan)
    assert set(charged) == {"psm_wsum", "dr_dsum"}
    v = att_weights(np.array(op.count).reshape(2, 2), np.array([True, True]))
    delta = wsum_sensitivity(v, np.array(op.z_center).reshape(2, 2, d))
    # centres away from ½ raise Δ above √D·v_max/2 (at most √D·v_max): the node charges its own
    assert np.sqrt(d) * 2.0 / 2 < delta <= np.sqrt(d) * 2.0
    assert charged["dr_dsum"].sensitivity == pytest.approx(delta, rel=1e-12)
    assert charged["dr_dsum"].noise_multiplier == plan.release("dr_dsum").noise_multiplier


def test_a_dr_grant_does_not_match_a_query_claiming_another_estimator(study):
    """The estimator is in the signed terms of a DR study (so its plan is), and absent from a
    stratified study's, whose grants signed before the field existed stay valid."""
    spec, _ = study
    dr_terms = StudyQuery.for_spec(spec, (Describe(),)).terms()
    strat_terms = StudyQuery.for_spec(
        spec.model_copy(update={"estimator": "stratified"}), (Describe(),)
    ).terms()
    assert dr_terms["privacy"]["estimator"] == "dr" and "estimator" not in strat_terms["privacy"]
    assert dr_terms != strat_terms


def test_dp_dr_needs_the_balance_release(study):
    spec, _ = study
    data = spec.model_dump(mode="json")
    data["privacy"]["split"] = BudgetSplit(
        describe=0.05, ps_fit=0.5, psm_stats=0.45, balance=0.0
    ).model_dump()
    with pytest.raises(SpecError, match="balance must be positive"):
        StudySpec.from_dict(data)


def test_policy_floor_applies_to_the_slope_release(study):
    from node.policy import NodePolicy

    spec, _ = study
    q = StudyQuery.for_spec(spec, (PsmStats(beta=(0.0,) * 17, edges=(-np.inf, np.inf), slope=True),))
    tiny = BudgetSplit(describe=0.05, ps_fit=0.895, psm_stats=0.005, balance=0.05)
    q = q.model_copy(update={"privacy": q.privacy.model_copy(update={"split": tiny})})
    policy = NodePolicy(covariates=spec.covariates, outcomes=spec.analysed_outcomes)
    with pytest.raises(PolicyRefused, match="dr_slope|psm_main"):
        policy.check(q, None)


def test_dp_dr_study_over_the_client_app(study, tmp_path, monkeypatch):
    """The same study through the real ClientApp on an in-process Grid: the signed grant
    carries the estimator, each node derives the DR plan, its policy judges the slope release,
    the wire carries the slope arrays, and each node's own ledger holds exactly the plan's
    releases (the ε it reports is at its budget's δ). Seeded alike, it equals the in-process
    study to 1e-9: one driver, one release code."""
    from flower_inprocess import signed_federation
    from test_psm_federated import assert_estimates_equal

    spec, arrays = study
    monkeypatch.setattr("shared.dp.mechanisms.secure_rng", lambda: np.random.default_rng(7))
    fed, grant = signed_federation(spec, tmp_path, extra={"budget-epsilon": 10.0})
    run = run_study(spec, fed, grant=grant)
    local = run_study(spec, InProcessSites(arrays, rngs=lambda site: np.random.default_rng(7)))
    assert_estimates_equal(run.estimate, local.estimate)
    plan = noise_plan(spec)
    for site in spec.sites:
        led = PrivacyLedger(f"sqlite:///{tmp_path / 'nodes' / site.name / 'ledger.db'}")
        _assert_ledger_is_the_plan(led.history(), plan)
        eps_plan = epsilon_spent(  # the plan's releases at the node's budget δ
            noise_multipliers=[r.noise_multiplier for r in plan.releases],
            delta=led.state().delta,
            accountant=plan.accountant,
        )
        assert led.study_spent(grant_id(grant)) == pytest.approx(eps_plan, rel=1e-9)
        assert run.privacy_study[site.name] == pytest.approx(led.study_spent(grant_id(grant)), rel=1e-12)
    assert [r.name for r in run.rounds][-2:] == ["psm-stats", "psm-wsum"]
    assert all(o.att_stratified is not None and o.att != o.att_stratified for o in run.estimate.outcomes)


def grant_id(grant) -> str:
    from shared.grant import Grant

    return Grant.model_validate_json(grant.body).grant_id
