"""The ATT released as one weighted sum per outcome (``psm_wsum``): its sensitivity against a
brute-force recomputation, the node's checks of the query, the analytic privacy SE against
re-drawing both noises, and exactness without noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.answer import check_query, planned_releases
from shared.dp.plan import plan_study
from shared.dp.wsum import (
    att_weights,
    max_weight,
    node_weights,
    weighted_sums,
    wsum_att,
    wsum_centers,
    wsum_privacy_se,
    wsum_sensitivity,
)
from shared.errors import QueryRefused
from shared.protocol import PrivacyQuery, PsmWsum, StudyQuery
from shared.psm.estimator import estimate_att
from shared.psm.table import psm_table
from shared.study import BudgetSplit, Covariate, Outcome

BETA = np.array([-1.0, 1.4, -0.8])
EDGES = np.array([-np.inf, -1.0, -0.6, -0.2, np.inf])
OUTCOMES = (Outcome(name="cost", cap=1000.0), Outcome(name="event", cap=1.0, kind="binary"))


def _data(rng: np.random.Generator, n: int):
    """Confounded rows whose outcome means sit near 0.05 (like claims and event rates on their
    [0, 1] scales), where the counts' noise through the weights weighs most."""
    z = rng.uniform(size=(n, 2))
    t = (rng.uniform(size=n) < 1 / (1 + np.exp(-(BETA[0] + z @ BETA[1:])))).astype(float)
    mu = 0.03 + 0.05 * z[:, 0] - 0.01 * t
    y = np.column_stack([np.clip(mu + rng.exponential(0.03, n) - 0.03, 0, 1), rng.uniform(size=n) < mu])
    return z, t, y.astype(float)


def test_sensitivity_is_the_largest_change_one_row_can_make():
    """Brute force over every cell and the outcome values that move the sum most (y at 0 or 1
    in each outcome): the largest L2 change equals :func:`wsum_sensitivity`, and the coordinator's
    centres keep it within √O·v_max/2."""
    rng = np.random.default_rng(0)
    count = np.array([[40.0, 10.0], [12.0, 30.0], [50.0, 20.0], [5.0, 25.0]])
    used = np.array([True, True, True, False])
    sum_y = rng.uniform(0.01, 0.2, size=(4, 2, 2)) * count[..., None]
    v = att_weights(count, used)
    c = wsum_centers(count=count, sum_y=sum_y, used=used)
    worst = 0.0
    for b in range(4):
        for arm in range(2):
            for y in ([0, 0], [0, 1], [1, 0], [1, 1]):
                worst = max(worst, float(np.linalg.norm(v[b, arm] * (np.array(y) - c[b, arm]))))
    assert worst == pytest.approx(wsum_sensitivity(v, c))
    assert wsum_sensitivity(v, c) <= math.sqrt(2) * max_weight(v) / 2 * (1 + 1e-12)
    assert max_weight(v) == pytest.approx(30 / 12)
    # a row's actual change in the node's sum never exceeds it
    z, t, ys = _data(rng, 400)
    full = weighted_sums(z=z, t=t, y=ys, beta=BETA, edges=EDGES, v=v, centers=c)
    for i in range(0, 400, 7):
        keep = np.arange(400) != i
        less = weighted_sums(z=z[keep], t=t[keep], y=ys[keep], beta=BETA, edges=EDGES, v=v, centers=c)
        assert np.linalg.norm(full - less) <= wsum_sensitivity(v, c) + 1e-12


def test_without_noise_the_weighted_sum_is_the_stratified_att():
    rng = np.random.default_rng(1)
    z, t, y = _data(rng, 6000)
    table = psm_table(z=z, t=t, y=y, beta=BETA, edges=EDGES)
    used = np.ones(table.n_strata, dtype=bool)
    c = wsum_centers(count=table.count, sum_y=table.sum_y, used=used)
    w = weighted_sums(z=z, t=t, y=y, beta=BETA, edges=EDGES, v=att_weights(table.count, used), centers=c)
    exact = estimate_att(table=table, outcomes=OUTCOMES, covariates=["a", "b"])
    want = np.array([e.att / o.cap for e, o in zip(exact.outcomes, OUTCOMES)])
    assert wsum_att(wsum=w, count=table.count, used=used, centers=c) == pytest.approx(want, abs=1e-12)


def test_node_refuses_a_query_whose_weights_do_not_hold():
    counts, cen = (40.0, 10.0, 12.0, 30.0), (0.5,) * 8
    v, c, delta = node_weights(counts=counts, centers=cen, n_strata=2, n_outcomes=2, declared_max=2.5)
    assert delta == pytest.approx(math.sqrt(2) * 2.5 / 2) and v[1, 0] == pytest.approx(-2.5)
    bad = [
        dict(declared_max=1.0),  # not the largest weight of its counts: the node would charge less
        dict(counts=(40.0, 0.0, 12.0, 30.0)),  # one arm without the other
        dict(counts=(0.5, 10.0, 12.0, 30.0)),  # a used count below 1: a weight above the treated
        dict(counts=(0.0, 0.0, 0.0, 0.0)),  # nothing to estimate
        dict(counts=(40.0, -10.0, 12.0, 30.0)),
        dict(counts=(40.0, 10.0, 12.0)),
        dict(centers=(1.5,) + (0.5,) * 7),  # a centre outside [0, 1] would break the bound
        dict(centers=(0.5,) * 6),
    ]
    for change in bad:
        kw = dict(counts=counts, centers=cen, n_strata=2, n_outcomes=2, declared_max=2.5) | change
        with pytest.raises(QueryRefused) as e:
            node_weights(**kw)
        assert "40" not in str(e.value) and "12" not in str(e.value)  # no count is named


def _query(op, *, privacy=True) -> StudyQuery:
    return StudyQuery(
        study_id="study-wsum-0001",
        treatment_column="treated",
        covariates=(Covariate(name="a", lo=0, hi=1), Covariate(name="b", lo=0, hi=1)),
        outcomes=OUTCOMES,
        ops=(op,),
        privacy=PrivacyQuery(epsilon=1.0, delta=1e-6, split=BudgetSplit(), n_ps_rounds=4)
        if privacy
        else None,
    )


def test_the_node_charges_the_plans_multiplier_at_the_weights_sensitivity():
    """σ = μ·Δ with μ the plan's (so the privacy loss is the plan's) and Δ from the weights asked:
    a query with larger weights gets proportionally more noise, never a smaller charge."""
    plan = plan_study(epsilon=1.0, delta=1e-6, split=BudgetSplit(), n_covariates=2, n_outcomes=2)
    beta, edges = tuple(BETA), (-math.inf, 0.0, math.inf)
    small = PsmWsum(beta=beta, edges=edges, count=(40, 10, 12, 30), center=(0.5,) * 8, max_weight=2.5)
    large = PsmWsum(beta=beta, edges=edges, count=(4, 10, 1, 30), center=(0.5,) * 8, max_weight=30.0)
    rel_s = planned_releases(_query(small), plan)["psm_wsum"]
    rel_l = planned_releases(_query(large), plan)["psm_wsum"]
    mu = plan.release("psm_wsum").noise_multiplier
    assert rel_s.noise_multiplier == rel_l.noise_multiplier == mu
    assert rel_s.sigma == pytest.approx(mu * math.sqrt(2) * 2.5 / 2)
    assert rel_l.sigma == pytest.approx(12 * rel_s.sigma)
    check_query(_query(small))
    with pytest.raises(QueryRefused):  # only under DP
        check_query(_query(small, privacy=False))
    with pytest.raises(QueryRefused):  # declared weight below the counts' before any data is read
        check_query(_query(large.model_copy(update={"max_weight": 2.5})))


@pytest.mark.parametrize("on_means", [True, False])
def test_analytic_privacy_se_matches_re_drawing_both_noises(on_means):
    """Re-draw the counts' noise (the weights and centres follow it, as the coordinator computes
    them) and the weighted sum's noise; the delta-method SE follows the spread of the estimate,
    with the coordinator's centres and with every centre at ½ (where the counts' term is most
    of the noise: without it the SE would be far too narrow)."""
    rng = np.random.default_rng(2)
    z, t, y = _data(rng, 20_000)
    table = psm_table(z=z, t=t, y=y, beta=BETA, edges=EDGES)
    used = np.ones(table.n_strata, dtype=bool)
    sigma_n, mu = 25.0, 8.0
    atts, ses, wsum_only = [], [], []
    draws = np.random.default_rng(3)
    for _ in range(1500):
        count = table.count + draws.normal(0, sigma_n, table.count.shape)
        sum_y = table.sum_y + draws.normal(0, sigma_n, table.sum_y.shape)
        c = wsum_centers(count=count, sum_y=sum_y, used=used) if on_means else np.full(sum_y.shape, 0.5)
        v = att_weights(count, used)
        sigma_w = mu * wsum_sensitivity(v, c)
        w = weighted_sums(z=z, t=t, y=y, beta=BETA, edges=EDGES, v=v, centers=c)
        w = w + draws.normal(0, sigma_w, w.shape)
        att = wsum_att(wsum=w, count=count, used=used, centers=c)
        atts.append(att)
        kw = dict(count=count, sum_y=sum_y, used=used, att=att, centers=c, sigma_wsum=sigma_w)
        ses.append(wsum_privacy_se(**kw, sigma_count=sigma_n))
        wsum_only.append(wsum_privacy_se(**kw, sigma_count=0.0))
    empirical = np.std(np.array(atts), axis=0, ddof=1)
    assert np.mean(ses, axis=0) == pytest.approx(empirical, rel=0.08)
    if not on_means:
        assert np.all(np.mean(wsum_only, axis=0) < 0.8 * empirical)


def test_the_ratio_bias_of_few_controls_is_removed():
    """A stratum of few controls (3σ) whose centre stays at ½ for its large weight: E[n/n̂] > 1
    biases the estimate; the second-order correction removes most of it."""
    rng = np.random.default_rng(4)
    z, t, y = _data(rng, 20_000)
    top = BETA[0] + z @ BETA[1:] >= EDGES[-2]
    keep = ~(top & (t == 0) & (rng.uniform(size=t.size) > 0.04))  # ~65 controls, 1600 treated
    z, t, y = z[keep], t[keep], y[keep]
    table = psm_table(z=z, t=t, y=y, beta=BETA, edges=EDGES)
    used = np.ones(table.n_strata, dtype=bool)
    exact = wsum_att(
        wsum=weighted_sums(
            z=z,
            t=t,
            y=y,
            beta=BETA,
            edges=EDGES,
            v=att_weights(table.count, used),
            centers=np.full((4, 2, 2), 0.5),
        ),
        count=table.count,
        used=used,
        centers=np.full((4, 2, 2), 0.5),
    )
    sigma = table.count[:, 0].min() / 3.0
    draws = np.random.default_rng(5)
    plain, corrected = [], []
    for _ in range(4000):
        count = table.count + draws.normal(0, sigma, table.count.shape)
        if np.any(count < 1):
            continue
        c = np.full((4, 2, 2), 0.5)
        w = weighted_sums(z=z, t=t, y=y, beta=BETA, edges=EDGES, v=att_weights(count, used), centers=c)
        plain.append(wsum_att(wsum=w, count=count, used=used, centers=c))
        corrected.append(
            wsum_att(wsum=w, count=count, used=used, centers=c, sum_y=table.sum_y, sigma_count=sigma)
        )
    bias_plain = np.abs(np.mean(plain, axis=0) - exact)
    bias_corrected = np.abs(np.mean(corrected, axis=0) - exact)
    assert np.all(bias_corrected < 0.5 * bias_plain), (bias_plain, bias_corrected)
