"""The large-loss cap as a study round (issue #19, :mod:`shared.dp.capround`).

(a) The cap histogram is a planned release: a fixed share of ρ, reserved with the study and
charged on the node's ledger before it is answered; a second histogram (averaging two halves
the noise variance) is refused. (b) Its noise is the plan's, σ/√K under SecAgg+. (c) A node
refuses released caps below its policy's lowest, off the public edges, on a binary outcome, or
in a study not signed with a cap round — each attack answered at the lowered caps without the
check. (d) Rescaling to a released cap equals clipping the raw outcome there. (e) The benchmark
measures a cap-round study against the true ATT at the released caps.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from node.ledger import PrivacyLedger
from node.policy import NodePolicy
from shared.answer import at_released_caps, check_query, dp_release, exact_answer, ledger_step
from shared.dp.capquantile import CAP_SHARE, cap_bins, cap_histogram
from shared.dp.capround import large_loss_caps, outcomes_at_caps
from shared.dp.plan import plan_study
from shared.errors import PolicyRefused, QueryRefused, ReplayRefused
from shared.grant import canonical_json
from shared.protocol import CapHist, Describe, PrivacyQuery, PsFit, Reserve, StudyQuery
from shared.psm.table import scale_outcomes
from shared.study import DEFAULT_OUTCOMES, BudgetSplit

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

COVS = NodePolicy().covariates
CLAIMS_SPAN = 100_000.0


def _query(ops, *, cap_round=True, caps=(), secure_nodes=None) -> StudyQuery:
    return StudyQuery(
        study_id="study-cap-0001",
        treatment_column="treated",
        covariates=COVS,
        outcomes=DEFAULT_OUTCOMES,
        ops=ops,
        privacy=PrivacyQuery(
            epsilon=1.0,
            delta=1e-6,
            split=BudgetSplit(),
            n_ps_rounds=4,
            cap_round=cap_round,
            caps=caps,
            secure_nodes=secure_nodes,
            secure_aggregation=secure_nodes is not None,
        ),
    )


def _plan(query: StudyQuery):
    assert query.privacy is not None
    return query.privacy.plan(n_covariates=len(COVS), n_outcomes=len(DEFAULT_OUTCOMES))


def _arrays(n=2000, seed=0):
    from shared.answer import SiteArrays

    rng = np.random.default_rng(seed)
    y = np.column_stack(
        [
            rng.lognormal(-4, 1.3, n).clip(0, 1),
            rng.uniform(size=n) < 0.1,
            rng.lognormal(-4, 1.0, n).clip(0, 1),
        ]
    )
    return SiteArrays(z=rng.uniform(size=(n, len(COVS))), t=(rng.uniform(size=n) < 0.3) * 1.0, y=y * 1.0)


def test_the_cap_histogram_is_planned_reserved_charged_before_release_and_never_twice(tmp_path):
    query = _query((CapHist(),))
    plan = _plan(query)
    rel = plan.release("cap_hist")
    assert plan.releases[0].query == "cap_hist" and plan.epsilon_planned <= 1.0
    assert 1 / (2 * rel.noise_multiplier**2) == pytest.approx(CAP_SHARE * plan.rho)
    assert rel.sensitivity == pytest.approx(np.sqrt(len(DEFAULT_OUTCOMES)))
    without = plan_study(epsilon=1.0, delta=1e-6, split=BudgetSplit(), n_covariates=len(COVS), n_outcomes=3)
    assert not without.has("cap_hist")  # off by default: no cap round, no charge
    ledger = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.ensure_budget(epsilon=1.0, delta=1e-6)
    reserve = _query((Reserve(),))
    ledger_step(reserve, plan, ledger, ttl_s=600)
    ids = ledger_step(query, plan, ledger, ttl_s=600)
    assert [h.query for h in ledger.history()] == ["cap_hist"] and len(ids) == 1
    assert ledger.history()[0].sigma == pytest.approx(rel.sigma)
    # the attack: ask the histogram again and average the two (half the noise variance)
    with pytest.raises(ReplayRefused):
        ledger_step(query, plan, ledger, ttl_s=600)
    assert len(ledger.history()) == 1


@pytest.mark.parametrize("k", [None, 4])
def test_a_nodes_cap_histogram_carries_the_plans_noise(k):
    query = _query((CapHist(),), secure_nodes=k)
    check_query(query)
    plan, data = _plan(query), _arrays()
    exact = exact_answer(CapHist(), query, data)["count"]
    assert exact.shape == (cap_bins().size - 1, 3) and exact.sum() == 3 * data.n
    rng = np.random.default_rng(1)
    release = dp_release(query, plan, rng)
    draws = np.array([release("cap_hist", {"count": exact})["count"] for _ in range(300)])
    want = plan.sigma("cap_hist") / np.sqrt(k or 1)
    assert np.std(draws - exact) == pytest.approx(want, rel=0.03)
    assert abs(np.mean(draws - exact)) < 0.05 * want


def test_a_cap_histogram_is_refused_outside_a_signed_cap_round_or_after_caps_are_lowered():
    with pytest.raises(QueryRefused, match="signed with a cap round"):
        check_query(_query((CapHist(),), cap_round=False))
    with pytest.raises(QueryRefused, match="before any cap"):
        check_query(_query((CapHist(),), caps=(50_000.0, 1.0, 365.0)))


EDGE = float(cap_bins()[16])  # 2^-2.5 of the span: 17,678 claims units
LOW = float(cap_bins()[14])  # 2^-3.5: 8,839


@pytest.mark.parametrize(
    ("caps", "cap_round", "why"),
    [
        ((LOW * CLAIMS_SPAN, 1.0, 365.0), True, "below the lowest this node accepts"),
        ((30_000.0, 1.0, 365.0), True, "not one of the public edges"),
        ((EDGE * CLAIMS_SPAN, 0.5, 365.0), True, "is binary"),
        ((EDGE * CLAIMS_SPAN, 1.0, 365.0), False, "not signed with a large-loss cap round"),
    ],
)
def test_a_node_refuses_caps_its_policy_does_not_allow(caps, cap_round, why):
    policy = NodePolicy(min_caps={"claims_cost": 10_000.0})
    query = _query((PsFit(beta=(0.0,) * (len(COVS) + 1)),), caps=caps, cap_round=cap_round)
    with pytest.raises(PolicyRefused, match=why):
        policy.check(query, None)
    # without the check the node would answer on outcomes capped there: the attack's gain
    data = _arrays()
    if cap_round and caps[1] == 1.0:
        assert not np.array_equal(at_released_caps(query, data).y, data.y)
    # what the policy accepts: an edge at or above its floor, binary outcomes kept
    ok = _query((PsFit(beta=(0.0,) * (len(COVS) + 1)),), caps=(EDGE * CLAIMS_SPAN, 1.0, 365.0))
    policy.check(ok, None)


def test_released_caps_are_not_signed_terms_and_travel_on_the_wire():
    from protos.codec import query_entry, query_from_entry

    signed = _query((Describe(),))
    lowered = _query((PsFit(beta=(0.0,) * (len(COVS) + 1)),), caps=(EDGE * CLAIMS_SPAN, 1.0, 365.0))
    assert canonical_json(lowered.terms()) == canonical_json(signed.terms())  # the grant still matches
    assert query_from_entry(query_entry(lowered)) == lowered
    assert query_from_entry(query_entry(_query((CapHist(),)))) == _query((CapHist(),))
    off = _query((Describe(),), cap_round=False)
    assert canonical_json(off.terms()) != canonical_json(signed.terms())  # the round is signed


def test_rescaling_to_a_released_cap_equals_clipping_the_raw_outcome_there():
    rng = np.random.default_rng(5)
    raw = np.column_stack([rng.lognormal(7, 1.5, 500), rng.uniform(size=500) < 0.2, rng.gamma(0.5, 20, 500)])
    lo, cap = np.array([0.0, 0.0, 0.0]), np.array([1e5, 1.0, 365.0])
    y01, _ = scale_outcomes(y=raw, lo=lo, cap=cap)
    from shared.answer import SiteArrays

    data = SiteArrays(z=np.zeros((500, len(COVS))), t=np.zeros(500), y=y01)
    caps = (EDGE * CLAIMS_SPAN, 1.0, float(cap_bins()[12]) * 365.0)
    got = at_released_caps(_query((Describe(),), caps=caps), data)
    want, n_clipped = scale_outcomes(y=raw, lo=lo, cap=np.array(caps))
    assert np.allclose(got.y, want, atol=1e-12)
    assert np.array_equal(got.n_clipped, np.asarray(n_clipped, dtype=float))


def test_the_round_releases_a_cap_at_or_above_the_quantile_and_keeps_binary_spans():
    data = _arrays(20_000, seed=3)
    plan = _plan(_query((CapHist(),)))
    caps = large_loss_caps(hist=cap_histogram(data.y), outcomes=DEFAULT_OUTCOMES, plan=plan, n_nodes=1)
    (claims, event, absence) = DEFAULT_OUTCOMES
    assert caps.caps[1] == event.cap and caps.caps[0] < claims.cap and caps.caps[2] < absence.cap
    assert np.mean(data.y[:, 0] * claims.cap > caps.caps[0]) <= 0.005
    above = np.mean(data.y[:, 0] * claims.cap >= caps.caps[0])
    assert caps.clipped_share("claims_cost") == pytest.approx(above)
    assert [o.cap for o in outcomes_at_caps(DEFAULT_OUTCOMES, caps)] == list(caps.caps)
    bound = caps.shift_bound("claims_cost", n_treated=6000, max_weight=2.0)
    assert bound == pytest.approx(
        (caps.clipped[0] + 1.96 * caps.sigma) * 2.0 * (claims.cap - caps.caps[0]) / 6000
    )


def test_the_benchmark_measures_a_cap_round_study_against_the_att_at_its_released_caps():
    from _grid import Cell, run_seed

    from shared.dp.capquantile import CAP_QUANTILE
    from shared.synth.outcomes import OUTCOMES

    cell = Cell(
        dgp="baseline",
        layout="k5_1k",
        epsilon=1.0,
        modes=("secagg",),
        outcomes=tuple(OUTCOMES),
        cap_quantile=CAP_QUANTILE,
    )
    r = run_seed(cell, 0)["modes"]["secagg"]
    caps = r["caps"]
    assert caps["claims_cost"] < 100_000 and caps["cv_event"] == 1.0
    from _layouts import LAYOUTS, build_nodes

    at = tuple(o.model_copy(update={"cap": caps[o.name]}) for o in OUTCOMES)
    _, truth = build_nodes(layout=LAYOUTS["k5_1k"], dgp="baseline", seed=0, outcomes=at)
    assert r["truth"] == pytest.approx(truth)  # the estimand: the ATT at the released caps
    assert r["truth"]["claims_cost"] != pytest.approx(r["truth_raw"]["claims_cost"])
    with pytest.raises(ValueError, match="fixed"):
        Cell(dgp="baseline", layout="k5_1k", epsilon=1.0, modes=(), outcomes=(), cap_quantile=0.99)


def test_a_study_with_a_cap_round_through_the_node_code_states_its_caps_in_result_and_report(tmp_path):
    """The real ServerApp/ClientApp code (in-process grid): every node charges the histogram,
    checks and applies the released caps; the result and the report's summary state them."""
    from flower_inprocess import signed_federation

    from coordinator.files import load_spec
    from coordinator.report.build import build_report
    from coordinator.study.assemble import assemble_result
    from coordinator.synth import write_federation
    from node.runtime import NodeRuntime
    from shared.driver import run_study
    from shared.synth import generate_federation

    spec = load_spec(write_federation(generate_federation(seed=5, sites=3, scale=0.15), tmp_path / "fed"))
    spec = spec.model_copy(
        update={
            "privacy": spec.privacy.model_copy(
                update={
                    "enabled": True,
                    "epsilon": 4.0,
                    "large_loss_cap": True,
                    "unresolved_fit": "warn",
                    "ps_rounds": 1,
                }
            )
        }
    )
    fed, grant = signed_federation(spec, tmp_path / "run", extra={"budget-epsilon": 10.0})
    run = run_study(spec, fed, grant=grant)
    assert run.caps is not None and run.plan is not None and run.plan.has("cap_hist")
    claims = run.caps.names.index("claims_cost")
    assert run.caps.caps[claims] < run.caps.signed[claims]  # a lowered claims cap
    for s in spec.sites:
        rt = NodeRuntime.from_node_config(
            {"site": s.name, "state-dir": str(tmp_path / "run" / "nodes" / s.name)}
        )
        queries = [h.query for h in rt.ledger().history(rt.dataset)]
        assert queries.count("cap_hist") == 1 and queries.index("cap_hist") == 1  # after describe
    result = assemble_result(run, dropped={}, started_at="a", finished_at="b", total_s=1.0)
    stated = {r["name"]: r for r in result.privacy.large_loss_caps["outcomes"]}
    assert stated["claims_cost"]["cap"] == run.caps.caps[claims] and stated["claims_cost"]["shift_bound"] > 0
    claims_est = next(o for o in result.outcomes if o.name == "claims_cost")
    assert abs(claims_est.att) < run.caps.caps[claims]  # reported in units of the capped outcome
    report = build_report(result)
    assert report.privacy.cap_share == CAP_SHARE
    assert any(c.name == "claims_cost" for c in report.privacy.large_loss_caps)
    text = " ".join(str(v) for v in report.model_dump().values())
    assert "large-loss cap round" in text and "claims_cost at" in text
