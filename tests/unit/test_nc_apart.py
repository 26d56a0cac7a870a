"""Negative controls released apart from the outcomes (issue #21, item 2): their own releases
(``nc_main``, ``nc_sumsq``, ``nc_wsum``) take a signed share f of ``psm_stats``' ρ *within* the
study's ε, so a node's charge for a study is its ε with or without controls; their number and
share signed with the study; the node's ledger holds and charges exactly the plan."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tomli_w
from flower_inprocess import signed_grid

import shared.protocol as protocol
from node.runtime import NodeRuntime
from shared.dp.accounting import epsilon_spent
from shared.dp.plan import NC_RELEASES, default_control_share, plan_study
from shared.dp.sensitivity import nc_main_sensitivity, psm_main_sensitivity, psm_sumsq_sensitivity
from shared.dp.wsum import att_weights, max_weight
from shared.errors import PrivacyError, UnauthorizedQuery
from shared.protocol import PrivacyQuery, PsmStats, PsmWsum, Reserve, StudyQuery
from shared.study import BudgetSplit
from shared.synth import generate_federation

C = 24
F = default_control_share(3)


def _composed(plan) -> float:
    return epsilon_spent(
        noise_multipliers=[r.noise_multiplier for r in plan.releases],
        delta=plan.delta,
        accountant=plan.accountant,
    )


@pytest.mark.parametrize("estimator,cap_round", [("stratified", False), ("dr", False), ("stratified", True)])
def test_24_controls_cost_the_study_its_epsilon_and_take_their_share_of_psm_stats(estimator, cap_round):
    split = BudgetSplit(balance=0.05) if estimator == "dr" else BudgetSplit()
    kw = dict(epsilon=1.0, delta=1e-6, split=split, n_covariates=16, n_outcomes=3)
    kw.update(estimator=estimator, cap_round=cap_round)
    plain, apart = plan_study(**kw), plan_study(**kw, n_negative_controls=C)
    ridden = plan_study(**{**kw, "n_outcomes": 3 + C})  # the controls riding in the outcomes' releases
    assert apart.control_share == pytest.approx(1 / (1 + math.sqrt(3))) and plain.control_share == 0
    # within ε: every release, the controls' included, composes to the plain study's ε (to 1e-9)
    assert _composed(apart) == pytest.approx(_composed(plain), rel=1e-9)
    assert apart.epsilon_planned == pytest.approx(plain.epsilon_planned, rel=1e-9)
    assert apart.epsilon_planned <= 1.0
    assert apart.rho == pytest.approx(plain.rho, rel=1e-9)  # the exact accountant adds ρ
    # the cap histogram covers every column, controls included (as it did when they rode along)
    assert apart.sigma("cap_hist") == ridden.sigma("cap_hist") if cap_round else not apart.has("cap_hist")
    last = "dr_slope" if estimator == "dr" else "psm_wsum"
    for q in ("describe", "ps_fit", "score_hist") + (() if estimator == "dr" else ("psm_balance",)):
        assert apart.sigma(q) == pytest.approx(plain.sigma(q), rel=1e-9), q
    for q in ("psm_main", "psm_sumsq", last):  # the outcomes' psm_stats releases keep 1 − f
        assert apart.sigma(q) == pytest.approx(plain.sigma(q) / math.sqrt(1 - F), rel=1e-9), q
    assert ridden.sigma("psm_main") > 2.0 * plain.sigma("psm_main") > 1.5 * apart.sigma("psm_main")
    # the controls' own releases: f of psm_stats in the stratified proportions, their own Δ
    nc = {r.query: r for r in apart.releases if r.query in NC_RELEASES}
    assert set(nc) == set(NC_RELEASES)
    assert nc["nc_main"].sensitivity == nc_main_sensitivity(n_controls=C) == pytest.approx(np.sqrt(C) / 2)
    assert nc["nc_sumsq"].sensitivity == psm_sumsq_sensitivity(n_outcomes=C)
    if estimator == "stratified":
        for q, o in (("nc_main", "psm_main"), ("nc_sumsq", "psm_sumsq"), ("nc_wsum", "psm_wsum")):
            mu = plain.release(o).noise_multiplier / math.sqrt(F)
            assert nc[q].noise_multiplier == pytest.approx(mu, rel=1e-9)
    assert apart.n_negative_controls == C and "n_negative_controls" not in plain.to_dict()
    assert type(apart).from_dict(apart.to_dict()) == apart


def test_the_rdp_accountant_recalibrates_the_whole_plan_within_epsilon():
    kw = dict(epsilon=1.0, delta=1e-6, split=BudgetSplit(), n_covariates=16, n_outcomes=3, accountant="rdp")
    apart = plan_study(**kw, n_negative_controls=C)
    assert 0.999 < apart.epsilon_planned <= 1.0
    assert _composed(apart) == pytest.approx(apart.epsilon_planned, rel=1e-9)


def test_a_declared_share_is_used_and_a_share_outside_zero_one_refused():
    kw = dict(
        epsilon=1.0, delta=1e-6, split=BudgetSplit(), n_covariates=4, n_outcomes=3, n_negative_controls=C
    )
    half = plan_study(**kw, control_share=0.5)
    assert half.control_share == 0.5
    assert half.release("nc_wsum").noise_multiplier == pytest.approx(
        half.release("psm_wsum").noise_multiplier
    )
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(PrivacyError, match="share"):
            plan_study(**kw, control_share=bad)
    with pytest.raises(ValueError, match="share"):  # a share without controls
        PrivacyQuery(epsilon=1.0, delta=1e-6, split=BudgetSplit(), n_ps_rounds=4, negative_control_share=0.3)
    implicit = PrivacyQuery(epsilon=1.0, delta=1e-6, split=BudgetSplit(), n_ps_rounds=4, negative_controls=C)
    assert implicit.plan(n_covariates=4, n_outcomes=3 + C).control_share == F  # the default for O = 3


def test_a_re_split_moves_the_controls_with_psm_stats_and_keeps_the_study_epsilon():
    apart = plan_study(
        epsilon=1.0, delta=1e-6, split=BudgetSplit(), n_covariates=4, n_outcomes=3, n_negative_controls=C
    )
    s = BudgetSplit()
    moved = apart.with_split(
        BudgetSplit(describe=s.describe, ps_fit=0.2, psm_stats=s.psm_stats + s.ps_fit - 0.2)
    )
    assert moved.sigma("psm_main") < apart.sigma("psm_main")
    assert moved.sigma("nc_wsum") < apart.sigma("nc_wsum") and moved.control_share == apart.control_share
    assert moved.epsilon_planned == pytest.approx(apart.epsilon_planned, rel=1e-6)


def _signed_node(tmp_path, monkeypatch, *, apart_when_signed: bool):
    from coordinator.files import load_spec
    from coordinator.synth import write_federation

    fed = generate_federation(seed=5, sites=2, scale=0.1)
    spec = load_spec(write_federation(fed, tmp_path / "fed", epsilon=4.0, negative_controls=True))
    assert len(spec.negative_controls) == C and len(spec.outcomes) == 3
    policy = tmp_path / "policy.toml"
    policy.write_text(
        tomli_w.dumps({"outcomes": [o.model_dump(mode="json") for o in spec.analysed_outcomes]})
    )
    monkeypatch.setattr(protocol, "NEGATIVE_CONTROLS_APART", apart_when_signed)
    grid, grant = signed_grid(
        spec, tmp_path / "dp", extra={"budget-epsilon": 10.0, "policy-path": str(policy)}
    )
    monkeypatch.setattr(protocol, "NEGATIVE_CONTROLS_APART", True)  # what the queries claim
    rt = NodeRuntime.from_node_config(grid.node_configs[1])
    return spec, grant, rt


def test_the_node_reserves_and_charges_the_controls_own_releases_exactly_as_planned(tmp_path, monkeypatch):
    spec, grant, rt = _signed_node(tmp_path, monkeypatch, apart_when_signed=True)
    q = StudyQuery.for_spec(spec, (Reserve(),), grant=grant)
    assert q.privacy is not None and q.privacy.negative_controls == C
    plan = rt._plan(q)
    assert plan.n_negative_controls == C and plan.control_share == pytest.approx(F)
    rt.respond(q)
    ledger = rt.ledger()

    def at_ledger(plan) -> float:  # a plan's composed ε at the ledger's δ
        return epsilon_spent(
            noise_multipliers=[r.noise_multiplier for r in plan.releases],
            delta=rt.budget_delta,
            accountant=ledger.accountant,
        )

    without = q.privacy.model_copy(update={"negative_controls": 0, "negative_control_share": None})
    plain = without.plan(n_covariates=len(q.design_covariates), n_outcomes=3)
    # the node reserves the whole plan, controls included: what the study without them costs
    assert ledger.state(rt.dataset).reserved == pytest.approx(at_ledger(plan), rel=1e-9)
    assert (
        at_ledger(plan) == pytest.approx(at_ledger(plain), rel=1e-9)
        and at_ledger(plan) <= spec.privacy.epsilon
    )
    beta = (0.0,) * (len(spec.design_covariates) + 1)
    edges = (-np.inf, 0.0, np.inf)
    answers, _, _ = rt.respond(StudyQuery.for_spec(spec, (PsmStats(beta=beta, edges=edges),), grant=grant))
    a = answers["psm_stats"]
    assert np.shape(a["sum_y"])[-1] == 3 and np.shape(a["sumsq_y"])[-1] == 3
    assert np.shape(a["nc_sum_y"]) == (2, 2, C) and np.shape(a["nc_sumsq_y"]) == (2, 2, C)
    n = np.full((2, 2), 50.0)
    v = att_weights(n, np.ones(2, dtype=bool))
    op = PsmWsum(
        beta=beta,
        edges=edges,
        count=tuple(n.ravel()),
        center=(0.5,) * (4 * (3 + C)),
        max_weight=max_weight(v),
    )
    answers, _, _ = rt.respond(StudyQuery.for_spec(spec, (op,), grant=grant))
    assert np.shape(answers["psm_wsum"]["wsum"]) == (3,) and np.shape(answers["psm_wsum"]["nc_wsum"]) == (C,)
    charged = {h.query: h for h in ledger.history(rt.dataset)}
    assert {"psm_main", "psm_sumsq", "psm_wsum", *NC_RELEASES} <= set(charged)
    for q_name in ("psm_main", "psm_sumsq", "nc_main", "nc_sumsq"):
        assert charged[q_name].sigma == pytest.approx(plan.sigma(q_name), rel=1e-12)
    # the outcomes' weighted sums at their own 3 outcomes' sensitivity, the controls' at theirs
    assert charged["psm_wsum"].sigma == pytest.approx(
        plan.release("psm_wsum").noise_multiplier * v.max() * np.sqrt(3) / 2
    )
    assert charged["nc_wsum"].sigma == pytest.approx(
        plan.release("nc_wsum").noise_multiplier * v.max() * np.sqrt(C) / 2
    )
    assert plan.sigma("psm_main") == pytest.approx(
        plan.release("psm_main").noise_multiplier * psm_main_sensitivity(n_outcomes=3), rel=1e-12
    )


def test_a_node_refuses_controls_apart_in_a_study_signed_without_them(tmp_path, monkeypatch):
    """The attack: a coordinator claims the study's last 24 outcomes are controls released apart
    (moving part of psm_stats' budget off the outcomes). Unsigned, the node would plan and charge
    them so; the count is a signed term, so the query no longer matches its grant and is refused
    before any charge."""
    spec, grant, rt = _signed_node(tmp_path, monkeypatch, apart_when_signed=False)
    q = StudyQuery.for_spec(spec, (Reserve(),), grant=grant)
    assert q.privacy is not None and q.privacy.negative_controls == C
    honest = q.model_copy(update={"privacy": q.privacy.model_copy(update={"negative_controls": 0})})
    assert rt.respond(honest)[1]["epsilon_reserved"] > 0  # the study as signed is answered
    with pytest.raises(UnauthorizedQuery, match="privacy terms differ"):
        rt.respond(q)
    # the one difference is the signed count: without it in the terms the claim would pass
    diff = {k for k in q.terms()["privacy"]} ^ {k for k in honest.terms()["privacy"]}
    assert diff == {"negative_controls", "negative_control_share"}


@pytest.mark.parametrize("claim", [{"negative_control_share": 0.05}, {"negative_controls": C + 1}])
def test_a_node_refuses_another_share_or_more_controls_than_signed(tmp_path, monkeypatch, claim):
    """The attack: the study is signed with 24 controls at share f; the coordinator claims a
    smaller share (the controls' noise up, the outcomes' down: a plan the operator did not sign)
    or one more control (an outcome read at the controls' noise and estimated as a control).
    Both are signed terms, so the node refuses before it reserves anything; take the share or
    the count out of :meth:`StudyQuery.terms` and the claim is planned and reserved."""
    spec, grant, rt = _signed_node(tmp_path, monkeypatch, apart_when_signed=True)
    q = StudyQuery.for_spec(spec, (Reserve(),), grant=grant)
    assert q.privacy is not None and q.privacy.negative_control_share == pytest.approx(F)
    forged = q.model_copy(update={"privacy": q.privacy.model_copy(update=claim)})
    with pytest.raises(UnauthorizedQuery, match="privacy terms differ"):
        rt.respond(forged)
    assert rt.ledger().state(rt.dataset).reserved == 0  # refused before any reservation
    assert rt.respond(q)[1]["epsilon_reserved"] > 0  # the study as signed is answered


def test_dp_outcomes_with_24_controls_apart_widen_by_their_share_not_by_riding_along(monkeypatch):
    """In process, the nodes' own release code with seeded noise: the same ε buys the outcomes'
    CIs within ~1/√(1 − f) = 1.26× of the study without controls (only psm_stats' releases
    are noisier), where riding along widened them > 2×; the controls get estimates of their own.
    (Each answer's noise generator starts afresh, and a node draws the outcomes' releases first.)"""
    from coordinator.synth.io import study_document
    from node.study_service import prepare_arrays
    from shared.driver import run_study
    from shared.inprocess_sites import InProcessSites
    from shared.protocol import Describe
    from shared.study import StudySpec

    fed = generate_federation(seed=0, sites=3, scale=0.2)

    def run(apart: bool, controls: bool):
        monkeypatch.setattr(protocol, "NEGATIVE_CONTROLS_APART", apart)
        spec = StudySpec.from_dict(study_document(fed, epsilon=1.0, negative_controls=controls))
        q = StudyQuery.for_spec(spec, (Describe(),))
        sites = {s.name: prepare_arrays(s.cohort, q) for s in fed.sites}
        names = sorted(sites)  # a fresh generator per answer, as a real node starts one per message
        return run_study(
            spec, InProcessSites(sites, rngs=lambda site: np.random.default_rng(names.index(site)))
        )

    none, ride, apart = run(False, False), run(False, True), run(True, True)
    assert apart.plan is not None and none.plan is not None and apart.plan.n_negative_controls == C
    assert apart.plan.epsilon_planned == pytest.approx(none.plan.epsilon_planned, rel=1e-9)
    for a, b, r in zip(apart.estimate.outcomes, none.estimate.outcomes, ride.estimate.outcomes):
        assert a.name == b.name == r.name
        width = {k: (o.ci[1] - o.ci[0]) / (b.ci[1] - b.ci[0]) for k, o in (("apart", a), ("ride", r))}
        assert 1.0 < width["apart"] < 1.35 < 1.5 < width["ride"], (a.name, width)
        assert 1.0 < a.se_privacy / b.se_privacy < 1.0 / math.sqrt(1 - F) + 0.05
    assert len(apart.negative_controls) == C and all(o.se_privacy > 0 for o in apart.negative_controls)
    assert [o.name for o in apart.negative_controls] == [o.name for o in ride.negative_controls]
