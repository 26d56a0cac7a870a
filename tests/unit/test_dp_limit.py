"""The physical limit of a DP ATT (issue #19, :mod:`shared.dp.limit`).

(a) Its sensitivity against a brute-force recomputation with the project's own table and
estimator on small data (fixed strata): replace-one must equal span × largest weight exactly;
add/remove-one (the project's relation) must never exceed the add/remove bound and must reach
it on the data that attain it. (b) σ_limit is the single-release multiplier times Δ. (c) A real
DP study through the shipped driver comes out no narrower than its limit, and an exact study
carries no limit fields.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.dp.limit import largest_weight, limit_sigma, limit_widths
from shared.dp.plan import single_release_multiplier
from shared.dp.study_sim import SiteArrays, run_dp_study
from shared.psm.estimator import Z_95, estimate_att
from shared.psm.table import psm_table
from shared.study import Outcome, Privacy

OUTCOME = Outcome(name="cost", lo=-5.0, cap=95.0)
SPAN = OUTCOME.cap - OUTCOME.lo
BETA = np.array([0.0, 1.0])
# three fixed strata on the logit score z (one covariate in [0, 1], β = (0, 1))
EDGES = np.array([-np.inf, 1 / 3, 2 / 3, np.inf])
Z_OF_STRATUM = (1 / 6, 1 / 2, 5 / 6)


def _rows(counts: list[tuple[int, int]], rng: np.random.Generator):
    """z, t and [0, 1]-scaled y for (controls, treated) per stratum; 40 people by default."""
    z, t = [], []
    for b, (nc, nt) in enumerate(counts):
        z += [Z_OF_STRATUM[b]] * (nc + nt)
        t += [0] * nc + [1] * nt
    return np.array(z)[:, None], np.array(t, dtype=float), rng.uniform(size=(len(t), 1))


def _att(z, t, y) -> float:
    table = psm_table(z=z, t=t, y=y, beta=BETA, edges=EDGES)
    est = estimate_att(table=table, outcomes=[OUTCOME], covariates=["x"], min_cell=1)
    return est.outcomes[0].att


def _weight(z, t, neighbours: str) -> float:
    count = psm_table(z=z, t=t, y=np.zeros((t.size, 1)), beta=BETA, edges=EDGES).count
    return largest_weight(count=count, used=np.ones(3, bool), neighbours=neighbours)


# uneven control counts: a control in stratum 1 (6 treated, 2 controls) carries 6/(17·2), more
# than any treated; and one where every stratum has more controls than treated (1/N_T binds)
CONTROL_BINDS = [(6, 8), (2, 6), (15, 3)]
TREATED_BINDS = [(9, 4), (10, 5), (8, 4)]


@pytest.mark.parametrize("counts", [CONTROL_BINDS, TREATED_BINDS])
def test_replace_one_sensitivity_is_span_times_largest_weight_exactly(counts):
    z, t, y = _rows(counts, np.random.default_rng(1))
    assert t.size == 40
    deltas = []
    for i in range(t.size):  # every person, their outcome at lo and at cap, the rest fixed
        at_lo, at_cap = y.copy(), y.copy()
        at_lo[i, 0], at_cap[i, 0] = 0.0, 1.0
        deltas.append(abs(_att(z, t, at_cap) - _att(z, t, at_lo)))
    expected = SPAN * _weight(z, t, "replace")
    assert max(deltas) == pytest.approx(expected, rel=1e-12)
    n_t = t.sum()
    if counts is CONTROL_BINDS:
        assert expected == pytest.approx(SPAN * 6 / (n_t * 2))
    else:
        assert expected == pytest.approx(SPAN / n_t)


def _drop(arrays, i):
    return tuple(np.delete(a, i, axis=0) for a in arrays)


@pytest.mark.parametrize("counts", [CONTROL_BINDS, TREATED_BINDS])
@pytest.mark.parametrize("seed", [1, 2])
def test_add_remove_one_never_exceeds_the_add_remove_bound(counts, seed):
    z, t, y = _rows(counts, np.random.default_rng(seed))
    bound = SPAN * _weight(z, t, "add_remove")
    base = _att(z, t, y)
    worst = 0.0
    for i in range(t.size):  # remove each person (strata fixed, counts recomputed)
        worst = max(worst, abs(_att(*_drop((z, t, y), i)) - base))
    for b in range(3):  # add one person to every stratum × arm, at lo and at cap
        for arm in (0.0, 1.0):
            for v in (0.0, 1.0):
                zz = np.vstack([z, [[Z_OF_STRATUM[b]]]])
                worst = max(worst, abs(_att(zz, np.append(t, arm), np.vstack([y, [[v]]])) - base))
    assert 0 < worst <= bound * (1 + 1e-12)


def test_add_remove_bound_is_attained_by_a_control_and_by_a_treated():
    # control: stratum 1's controls, one at cap and the other at lo; removing the one at cap
    z, t, y = _rows(CONTROL_BINDS, np.random.default_rng(3))
    controls_1 = np.flatnonzero((z[:, 0] == Z_OF_STRATUM[1]) & (t == 0))
    y[controls_1, 0] = [1.0, 0.0]
    removed = abs(_att(*_drop((z, t, y), controls_1[0])) - _att(z, t, y))
    assert removed == pytest.approx(SPAN * _weight(z, t, "add_remove"), rel=1e-12)
    assert removed == pytest.approx(SPAN * 6 / (t.sum() * 2), rel=1e-12)
    # treated: the only treated of stratum 0 at cap against controls at lo (difference +span),
    # every other treated at lo against controls at cap (−span): removing it moves 2·span/N_T
    z, t, y = _rows([(5, 1), (20, 9), (5, 0)], np.random.default_rng(4))
    s0 = z[:, 0] == Z_OF_STRATUM[0]
    y[:, 0] = np.where(s0, t, 1.0 - t)
    treated_0 = int(np.flatnonzero(s0 & (t == 1))[0])
    removed = abs(_att(*_drop((z, t, y), treated_0)) - _att(z, t, y))
    count = psm_table(z=z, t=t, y=y, beta=BETA, edges=EDGES).count
    used = (count[:, 0] >= 1) & (count[:, 1] >= 1)
    weight = largest_weight(count=count, used=used)
    assert weight == pytest.approx(2 / t.sum())
    assert removed == pytest.approx(SPAN * weight, rel=1e-12)


def test_largest_weight_reads_only_used_strata_and_refuses_no_controls():
    count = [[4.0, 8.0], [0.5, 30.0], [10.0, 2.0]]  # stratum 1 has 60 treated per control
    assert largest_weight(count=count, used=[True, False, True], neighbours="replace") == pytest.approx(
        8 / (10 * 4)
    )
    with pytest.raises(ValueError, match="control"):
        largest_weight(count=[[0.0, 3.0], [5.0, 5.0]], used=[True, True])


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_sigma_limit_is_the_single_release_multiplier_times_the_sensitivity(accountant):
    spans = np.array([100_000.0, 1.0, 365.0])
    w = 8 / 10_000
    mu = single_release_multiplier(epsilon=1.0, delta=1e-6, accountant=accountant)
    got = limit_sigma(weight=w, spans=spans, epsilon=1.0, delta=1e-6, accountant=accountant)
    np.testing.assert_allclose(got, mu * w * spans, rtol=1e-12)
    se = np.array([300.0, 0.004, 0.9])
    widths = limit_widths(
        count=[[1250.0, 10_000.0]],  # one stratum: weight 8/N_T from its controls
        used=[True],
        spans=spans,
        epsilon=1.0,
        delta=1e-6,
        accountant=accountant,
        se_sampling=se,
    )
    np.testing.assert_allclose(widths, 2 * Z_95 * np.sqrt(se**2 + (mu * w * spans) ** 2), rtol=1e-12)
    # a smaller ε needs a larger multiplier, so a wider limit
    assert single_release_multiplier(epsilon=0.5, delta=1e-6, accountant=accountant) > mu


def _federation(seed: int, n_sites: int = 3, n: int = 4000):
    """Small confounded federation: uptake and outcomes depend on the two covariates."""
    rng = np.random.default_rng(seed)
    sites = []
    for _ in range(n_sites):
        z = rng.uniform(size=(n, 2))
        t = (rng.uniform(size=n) < 1 / (1 + np.exp(-(-1.0 + 1.5 * z[:, 0] - z[:, 1])))) * 1.0
        y = np.clip(0.2 + 0.3 * z[:, :1] - 0.05 * t[:, None] + 0.1 * rng.normal(size=(n, 1)), 0, 1)
        sites.append(
            SiteArrays(z=z, t=t, y=np.hstack([y, (rng.uniform(size=(n, 1)) < 0.1 + 0.2 * z[:, :1])]))
        )
    return sites


def test_a_dp_study_is_no_narrower_than_its_limit_and_states_both_ratios():
    outcomes = [Outcome(name="cost", cap=10_000.0), Outcome(name="event", cap=1.0, kind="binary")]
    sites = _federation(0)
    study = run_dp_study(
        sites=sites,
        outcomes=outcomes,
        covariates=["a", "b"],
        privacy=Privacy(epsilon=1.0, unresolved_fit="warn", secure_aggregation=True),
        rngs=[np.random.default_rng(10 + i) for i in range(len(sites))],
    )
    for o in study.estimate.outcomes:
        width = o.ci[1] - o.ci[0]
        assert o.limit_width is not None and o.ratio_limit is not None and o.ratio_exact_est is not None
        assert math.isfinite(o.ratio_limit) and o.ratio_limit > 0.9
        assert o.ratio_limit == pytest.approx(width / o.limit_width)
        assert o.ratio_exact_est == pytest.approx(width / (2 * Z_95 * o.se_sampling))
        # the limit itself is no narrower than the non-private interval
        assert o.ratio_exact_est >= o.ratio_limit


def test_an_exact_estimate_carries_no_limit_fields():
    z, t, y = _rows(CONTROL_BINDS, np.random.default_rng(5))
    table = psm_table(z=z, t=t, y=y, beta=BETA, edges=EDGES)
    o = estimate_att(table=table, outcomes=[OUTCOME], covariates=["x"], min_cell=1).outcomes[0]
    assert o.limit_width is None and o.ratio_limit is None and o.ratio_exact_est is None
