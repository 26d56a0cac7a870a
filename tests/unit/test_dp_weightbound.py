"""Bounding the largest weight by merging strata (issue #19, :mod:`shared.dp.weightbound`).

The merge reads the released noisy counts only and is deterministic; every merged stratum
holds its rule (bar the lowest group, which has nowhere to go): the shipped ≥ 10σ noisy
controls, or the weight bound 1 (measured biased, off by default); the table's totals are kept;
the privacy SEs carry a merged stratum's larger count noise; and through the shipped driver no
control of a DP study outweighs a treated person, which the result states.
"""

from __future__ import annotations

import numpy as np
import pytest

from shared.dp.study_sim import SiteArrays, run_dp_study
from shared.dp.weightbound import cell_count_sigma, merge_table, weight_groups
from shared.dp.wsum import att_weights, max_weight, wsum_privacy_se
from shared.psm.table import PsmTable
from shared.study import Outcome, Privacy


def _table(count) -> PsmTable:
    count = np.asarray(count, dtype=float)
    s = count.shape[0]
    rng = np.random.default_rng(0)
    sum_y = count[..., None] * rng.uniform(0.1, 0.3, size=(s, 2, 2))
    return PsmTable(
        edges=np.concatenate(([-np.inf], np.arange(1.0, s), [np.inf])),
        count=count,
        sum_y=sum_y,
        sumsq_y=sum_y * 0.5,
        sum_z=count[..., None] * 0.5 * np.ones((s, 2, 3)),
        sumsq_z=count[..., None] * 0.3 * np.ones((s, 2, 3)),
    )


COUNTS = [[900, 40], [400, 60], [200, 90], [80, 70], [30, 60], [12, 40], [-3, 8]]  # noisy: one < 0


def test_merging_is_deterministic_from_the_counts_and_holds_the_bound():
    groups = weight_groups(COUNTS, 1.0)
    assert groups.tolist() == weight_groups([list(r) for r in COUNTS], 1.0).tolist()  # same input, same
    # from the top: 8/-3, 48/9, 108/39, 178/119 exceed 1; with stratum 2, 319 controls ≥ 268
    assert groups.tolist() == [0, 1, 2, 2, 2, 2, 2]
    merged = merge_table(_table(COUNTS), groups)
    n = np.clip(merged.count, 0, None)
    assert np.all(n[:, 1] <= n[:, 0])
    assert max_weight(att_weights(merged.count, np.ones(merged.n_strata, bool))) <= 1.0
    # what was summed is kept, and the merged edges are a subset of the released ones
    assert merged.count.sum() == pytest.approx(np.sum(COUNTS))
    assert merged.sum_y.sum() == pytest.approx(_table(COUNTS).sum_y.sum())
    assert set(merged.edges.tolist()) <= set(_table(COUNTS).edges.tolist())
    assert weight_groups(COUNTS, None).tolist() == list(range(7))  # off: every stratum alone
    table = _table(COUNTS)
    assert merge_table(table, np.arange(7)) is table  # nothing to merge: the released table


def test_a_bottom_group_that_cannot_reach_the_bound_joins_the_one_above():
    groups = weight_groups([[1, 5], [100, 10], [5, 20]], 1.0)
    assert groups.tolist() == [0, 0, 0]  # top: 105 ≥ 30 closes at stratum 1; stratum 0 alone fails


def test_merged_strata_carry_their_larger_count_noise_into_the_privacy_se():
    table = merge_table(_table(COUNTS), weight_groups(COUNTS, 1.0))
    used = np.ones(table.n_strata, bool)
    centers = np.full((table.n_strata, 2, 2), 0.5)
    common = dict(count=table.count, sum_y=table.sum_y, used=used, att=np.zeros(2), centers=centers)
    one = wsum_privacy_se(sigma_count=3.0, sigma_wsum=2.0, **common)
    same = wsum_privacy_se(sigma_count=np.full(table.n_strata, 3.0), sigma_wsum=2.0, **common)
    np.testing.assert_allclose(one, same)
    sig = cell_count_sigma(3.0, weight_groups(COUNTS, 1.0))
    assert sig.tolist() == pytest.approx([3.0, 3.0, 3.0 * np.sqrt(5.0)])  # five strata merged: σ√5
    assert np.all(wsum_privacy_se(sigma_count=sig, sigma_wsum=2.0, **common) > one)


def test_the_shipped_rule_merges_until_every_stratum_holds_ten_sigma_of_controls():
    sigma = 4.0
    groups = weight_groups(COUNTS, None, 10 * sigma)
    # from the top: -3, 9 and 39 controls are under 10σ = 40; with stratum 3 the group holds 119
    assert groups.tolist() == [0, 1, 2, 3, 3, 3, 3]
    merged = merge_table(_table(COUNTS), groups)
    assert np.all(np.clip(merged.count[:, 0], 0, None) >= 10 * sigma)


@pytest.mark.parametrize("shipped", [True, False])
def test_a_dp_study_through_the_driver_merges_on_released_counts_and_says_so(shipped, monkeypatch):
    from shared.dp import weightbound

    if not shipped:  # the weight bound (measured biased, off by default) through the same path
        monkeypatch.setattr(weightbound, "MAX_CONTROL_WEIGHT", 1.0)
        monkeypatch.setattr(weightbound, "MIN_CONTROL_SIGMAS", None)
    rng = np.random.default_rng(5)
    sites = []
    for _ in range(2):  # uptake rising steeply with z: few controls at high scores
        z = rng.uniform(size=(4000, 2))
        t = (rng.uniform(size=4000) < 1 / (1 + np.exp(-(-3.5 + 5.0 * z[:, 0])))).astype(float)
        sites.append(SiteArrays(z=z, t=t, y=(0.2 + 0.1 * t + 0.3 * z[:, 0])[:, None]))
    out = run_dp_study(
        sites=sites,
        outcomes=[Outcome(name="y", cap=1.0)],
        covariates=["a", "b"],
        privacy=Privacy(epsilon=4.0, unresolved_fit="warn", secure_aggregation=True),
        rngs=[np.random.default_rng(i) for i in range(2)],
    )
    check = next(c for c in out.estimate.diagnostics if c.name == "dp_weight_bound")
    assert "merged into" in check.message and "nobody trimmed" in check.message
    if shipped:
        assert "≥ 10σ" in check.message
        n_c = np.array([s.n_control for s in out.estimate.strata])
        sigma = out.plan.release("psm_main").total_sigma(2, secure_aggregation=True)
        assert np.all(n_c >= 10 * sigma - 1)  # (the result's counts are rounded)
    else:
        assert check.value is not None and check.value <= 1.0
    assert len(out.edges) - 1 == len(out.estimate.strata)
    assert out.estimate.outcomes[0].limit_width is not None
