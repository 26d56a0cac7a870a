"""The stepwise propensity basis (shared/psm/selection.py): its score statistics against a
brute-force recomputation, and the selection on data whose uptake has one known square."""

import numpy as np
import pytest

from shared.psm.propensity import PsStats, ps_contribution
from shared.psm.selection import candidate_pairs, score_statistics, stepwise_basis


def _design(z, pairs):
    return np.column_stack([z] + [z[:, i] * z[:, j] for i, j in pairs]) if pairs else z


def test_candidates_are_continuous_squares_then_every_product():
    pairs = candidate_pairs(["continuous", "binary", "continuous"])
    assert pairs == [(0, 0), (2, 2), (0, 1), (0, 2), (1, 2)]


def test_score_statistic_equals_the_brute_force_inverse_of_each_augmented_hessian():
    rng = np.random.default_rng(3)
    n, d = 3000, 4
    z = rng.uniform(size=(n, d))
    eta = -1 + 2 * z[:, 0] - z[:, 1] + 3 * z[:, 2] ** 2
    t = (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(float)
    x = _design(z, candidate_pairs(["continuous"] * d))
    active = np.zeros(x.shape[1] + 1, dtype=bool)
    active[: 1 + d] = True
    beta = np.zeros(active.size)
    for _ in range(30):  # the MLE over the active columns
        s = ps_contribution(z=x, t=t, beta=beta)
        A = np.flatnonzero(active)
        beta[A] += np.linalg.solve(s.H[np.ix_(A, A)], s.g[A])
    total = ps_contribution(z=x, t=t, beta=beta)
    got = score_statistics(total, active, ridge=0.0)
    assert np.all(np.isnan(got[active]))
    for c in np.flatnonzero(~active):
        idx = np.append(np.flatnonzero(active), c)
        inv = np.linalg.inv(total.H[np.ix_(idx, idx)])
        want = total.g[c] ** 2 * inv[-1, -1]  # g_A = 0 at the MLE: the efficient score's form
        assert got[c] == pytest.approx(want, rel=1e-8), c


def test_stepwise_enters_the_generating_square_first_and_stops():
    rng = np.random.default_rng(11)
    n, d = 20000, 3
    z = rng.uniform(size=(n, d))
    eta = -1.0 + z[:, 0] - z[:, 1] + 4.0 * (z[:, 2] - 0.5) ** 2
    t = (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(float)
    pairs = candidate_pairs(["continuous"] * d)
    x = _design(z, pairs)

    def stats_at(beta: np.ndarray, params) -> PsStats:
        if params is None:
            return ps_contribution(z=x, t=t, beta=beta)
        cols = [k - 1 for k in params[1:]]  # the intercept is parameter 0
        return ps_contribution(z=x[:, cols], t=t, beta=beta[params])

    step = stepwise_basis(stats_at, n_base=d, n_candidates=len(pairs))
    assert step.chosen and pairs[step.chosen[0]] == (2, 2)
    assert step.statistics[0] > 100  # the true term is no borderline entry
    assert len(step.chosen) < len(pairs)  # the threshold stopped it
    none = stepwise_basis(stats_at, n_base=d, n_candidates=len(pairs), threshold=np.inf)
    assert none.chosen == () and none.beta.size == 1 + d
