"""Federated evaluation from additive aggregates vs scikit-learn on the pooled rows."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import brier_score_loss, roc_auc_score

from shared.errors import DataError, EstimationError
from shared.risk.metrics import (
    EVAL_SENSITIVITY,
    EvalAggregate,
    calibration_by_decile,
    clean_scores,
    eval_aggregate,
    evaluate,
    merge_aggregates,
    noisy_aggregate,
    pooled_auc,
)


def _scores(rng, n):
    x = rng.normal(size=n)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-(x - 2)))).astype(float)
    p = 1 / (1 + np.exp(-(0.8 * x - 2)))
    return p, y


def _tie_bound(agg):
    # Pairs sharing a bin are scored ½; the exact AUC can differ by at most that mass.
    return float(np.sum(agg.pos * agg.neg) / (agg.pos.sum() * agg.neg.sum())) / 2


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 5))
def test_pooled_metrics_match_sklearn_on_pooled_rows(seed, k):
    rng = np.random.default_rng(seed)
    parts = [_scores(rng, int(rng.integers(200, 3000))) for _ in range(k)]
    if sum(p[1].sum() for p in parts) == 0:
        return
    agg = merge_aggregates(eval_aggregate(prob=p, y=y) for p, y in parts)
    p = np.concatenate([a for a, _ in parts])
    y = np.concatenate([b for _, b in parts])
    assert agg.n == len(y) and agg.events == y.sum()
    assert abs(pooled_auc(agg) - roc_auc_score(y, p)) <= _tie_bound(agg) + 1e-12
    assert evaluate(agg).brier == pytest.approx(brier_score_loss(y, p), rel=1e-12)


def test_auc_is_exact_when_no_pos_neg_pair_shares_a_bin():
    p = np.array([0.01, 0.2, 0.35, 0.5, 0.77, 0.9])
    y = np.array([0, 0, 1, 0, 1, 1])
    agg = eval_aggregate(prob=p, y=y)
    assert pooled_auc(agg) == pytest.approx(roc_auc_score(y, p), abs=1e-15)


def test_merge_is_order_free_and_round_trips_through_arrays():
    rng = np.random.default_rng(0)
    a, b, c = (eval_aggregate(prob=p, y=y) for p, y in (_scores(rng, 500) for _ in range(3)))
    left, right = a.merge(b).merge(c), c.merge(a.merge(b))
    np.testing.assert_allclose(left.to_arrays()[0], right.to_arrays()[0])
    back = EvalAggregate.from_arrays(left.to_arrays())
    assert evaluate(back) == evaluate(left)


def test_calibration_by_global_decile():
    rng = np.random.default_rng(5)
    p = rng.uniform(0.0, 0.4, size=50_000)
    y = (rng.uniform(size=p.size) < p).astype(float)  # perfectly calibrated
    cal = calibration_by_decile(eval_aggregate(prob=p, y=y))
    assert [c.decile for c in cal] == list(range(1, 11))
    assert sum(c.n for c in cal) == p.size
    assert all(abs(c.n - 5000) < 200 for c in cal)  # global deciles, to bin resolution
    order = np.argsort(p)
    for c, chunk in zip(cal, np.array_split(order, 10)):
        assert c.mean_predicted == pytest.approx(p[chunk].mean(), abs=2e-3)
        assert c.observed_rate == pytest.approx(c.mean_predicted, abs=0.03)
    assert all(a.p_hi <= b.p_lo + 1e-12 for a, b in zip(cal, cal[1:]))


def test_bad_values_are_clipped_or_left_out_never_named():
    """On a node this runs after the release was paid for: no error names a row or a value."""
    a = eval_aggregate(prob=np.array([0.1, 1.2, np.nan]), y=np.array([0, 1, 0]), n_bins=10)
    assert a.pos[9] == 1 and a.neg[5] == 1 and a.sum_p[9] == 1.0  # 1.2 → 1, NaN → ½
    assert clean_scores(prob=np.array([0.1, 1.2]), y=np.array([0, 1]))[2:] == (1, 0)
    b = eval_aggregate(prob=np.array([0.1, 0.2]), y=np.array([0, 2]), n_bins=10)
    assert b.n == 1  # the row without a 0/1 outcome is left out
    with pytest.raises(DataError) as e:
        eval_aggregate(prob=np.array([0.1, 0.2]), y=np.array([0]))
    assert "0.1" not in str(e.value)
    with pytest.raises(EstimationError):
        pooled_auc(eval_aggregate(prob=np.array([0.1, 0.2]), y=np.array([0, 0])))


def test_eval_sensitivity_is_attained_by_a_certain_wrong_row():
    """Δ₂² = 1 + p² + (p − y)² is 3 at p = 1, y = 0 and never more."""
    empty = eval_aggregate(prob=np.array([0.5]), y=np.array([1]), n_bins=10)
    worst = 0.0
    for p in np.linspace(0, 1, 101):
        for y in (0, 1):
            one = eval_aggregate(prob=np.array([0.5, p]), y=np.array([1, y]), n_bins=10)
            diff = np.concatenate([x - e for x, e in zip(one.to_arrays(), empty.to_arrays())])
            worst = max(worst, float(np.linalg.norm(diff)))
    assert worst == pytest.approx(EVAL_SENSITIVITY)


def test_noisy_metrics_stay_in_range():
    rng = np.random.default_rng(3)
    p, y = _scores(rng, 300)
    noisy = noisy_aggregate(eval_aggregate(prob=p, y=y, n_bins=20), sigma=30.0, rng=rng)
    rep = evaluate(noisy)
    assert 0 <= rep.auc <= 1 and 0 <= rep.brier <= 1 and rep.n >= 0 and rep.events >= 0
    assert all(0 <= c.mean_predicted <= 1 and 0 <= c.observed_rate <= 1 for c in rep.calibration)


def test_noisy_aggregates_still_pool_to_a_close_auc():
    rng = np.random.default_rng(9)
    parts = [_scores(rng, 20_000) for _ in range(3)]
    exact = merge_aggregates(eval_aggregate(prob=p, y=y) for p, y in parts)
    noisy = merge_aggregates(
        noisy_aggregate(eval_aggregate(prob=p, y=y), sigma=2.0, rng=rng) for p, y in parts
    )
    assert not np.array_equal(noisy.pos, exact.pos)
    assert abs(pooled_auc(noisy) - pooled_auc(exact)) < 0.01
    assert abs(evaluate(noisy).brier - evaluate(exact).brier) < 0.005
    assert len(calibration_by_decile(noisy)) >= 8
