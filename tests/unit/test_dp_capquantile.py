"""A large-loss cap from a DP quantile (issue #19, :mod:`shared.dp.capquantile`).

(a) The histogram leaves a node only through the charged release path: the ledger holds its
charge when the noise is drawn, and a refused charge releases nothing. (b) Its sensitivity is
√O by brute force. (c) On exact counts the proposed cap clips at most 1 − q of the rows and is
the first public edge at or above the q-quantile. (d) The capped estimand's sensitivity (what
the study then pays for) equals span' × the largest weight, recomputed by brute force.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from node.ledger import PrivacyLedger
from node.privacy import charged_release
from shared.dp.capquantile import (
    CAP_QUANTILE,
    cap_bins,
    cap_budget,
    cap_hist_sensitivity,
    cap_histogram,
    quantile_cap,
)
from shared.dp.limit import largest_weight
from shared.dp.plan import single_release_multiplier
from shared.errors import BudgetExceededError
from shared.psm.estimator import estimate_att
from shared.psm.table import psm_table, scale_outcomes
from shared.study import Outcome


class _WatchingRng:
    """A seeded generator that records, when the noise is drawn, what the ledger holds."""

    def __init__(self, ledger: PrivacyLedger):
        self.ledger, self.rng, self.seen = ledger, np.random.default_rng(0), []

    def normal(self, *args, **kwargs):
        self.seen.append([(h.query, h.sigma) for h in self.ledger.history()])
        return self.rng.normal(*args, **kwargs)


def test_the_histogram_is_charged_before_its_noise_is_drawn_and_refused_without_budget(store_url):
    ledger = PrivacyLedger(store_url)
    ledger.ensure_budget(epsilon=1.0, delta=1e-6)
    y = np.random.default_rng(1).uniform(size=(300, 2)) ** 4
    exact = cap_histogram(y)
    mu, _ = cap_budget(epsilon=1.0, delta=1e-6)
    sigma = mu * cap_hist_sensitivity(n_outcomes=2)
    rng = _WatchingRng(ledger)
    out, charge = charged_release(
        ledger=ledger,
        study_id="caps",
        query="cap_hist",
        arrays={"count": exact, "y": y},  # the rows themselves are withheld
        sigma=sigma,
        sensitivity=cap_hist_sensitivity(n_outcomes=2),
        rng=rng,  # type: ignore[arg-type]
    )
    assert rng.seen and all(s == [("cap_hist", pytest.approx(sigma))] for s in rng.seen)
    assert set(out) == {"count"} and out["count"].shape == exact.shape
    assert not np.allclose(out["count"], exact)
    assert ledger.history()[-1].id == charge.id
    # a histogram the budget cannot pay: nothing drawn, nothing released, nothing recorded
    rng2 = _WatchingRng(ledger)
    with pytest.raises(BudgetExceededError):
        charged_release(
            ledger=ledger,
            study_id="caps",
            query="cap_hist",
            arrays={"count": exact},
            sigma=0.5,
            sensitivity=cap_hist_sensitivity(n_outcomes=2),
            rng=rng2,  # type: ignore[arg-type]
        )
    assert rng2.seen == [] and len(ledger.history()) == 1


def test_one_row_moves_the_histograms_by_exactly_root_o():
    rng = np.random.default_rng(2)
    for o in (1, 2, 3):
        y = rng.uniform(size=(50, o)) ** 3
        base = cap_histogram(y)
        moves = [np.linalg.norm(cap_histogram(np.vstack([y, extra[None, :]])) - base) for extra in y]
        assert max(moves) == pytest.approx(cap_hist_sensitivity(n_outcomes=o)) == pytest.approx(math.sqrt(o))


def test_on_exact_counts_the_cap_is_the_first_edge_at_or_above_the_quantile():
    y = np.random.default_rng(3).lognormal(mean=-5.0, sigma=1.2, size=(20_000, 1)).clip(0, 1)
    cap = float(quantile_cap(cap_histogram(y), CAP_QUANTILE)[0])
    edges = cap_bins()
    assert cap in edges
    assert np.mean(y[:, 0] > cap) <= 1 - CAP_QUANTILE  # clips at most 0.5 % of the rows
    below = edges[np.searchsorted(edges, cap) - 1]
    assert np.mean(y[:, 0] >= below) > 1 - CAP_QUANTILE  # the edge below would clip more
    assert quantile_cap(np.zeros((edges.size - 1, 1)))[0] == 1.0  # nothing: the public cap


def test_the_budget_split_composes_to_the_study_epsilon():
    mu_cap, rest = cap_budget(epsilon=1.0, delta=1e-6, share=0.05)
    rho = 1 / (2 * single_release_multiplier(epsilon=1.0, delta=1e-6) ** 2)
    assert 1 / (2 * mu_cap**2) == pytest.approx(0.05 * rho)
    assert single_release_multiplier(epsilon=rest, delta=1e-6) == pytest.approx(
        1 / math.sqrt(2 * 0.95 * rho), rel=1e-4
    )


# the capped estimand: three fixed strata on z (β = (0, 1)), a heavy-tailed raw outcome
BETA = np.array([0.0, 1.0])
EDGES = np.array([-np.inf, 1 / 3, 2 / 3, np.inf])


def test_the_capped_estimands_sensitivity_is_the_lowered_span_times_the_largest_weight():
    rng = np.random.default_rng(4)
    counts = [(6, 8), (2, 6), (15, 3)]  # (controls, treated): a control of stratum 1 binds
    z = np.concatenate([[b / 3 + 1 / 6] * (c + t) for b, (c, t) in enumerate(counts)])[:, None]
    t = np.concatenate([[0.0] * c + [1.0] * k for c, k in counts])
    raw = rng.lognormal(mean=7.0, sigma=1.5, size=(t.size, 1))
    capped = Outcome(name="claims", lo=0.0, cap=float(np.quantile(raw, 0.9)))

    def att(y_raw) -> float:
        y01, _ = scale_outcomes(y=y_raw, lo=[capped.lo], cap=[capped.cap])
        table = psm_table(z=z, t=t, y=y01, beta=BETA, edges=EDGES)
        return estimate_att(table=table, outcomes=[capped], covariates=["x"], min_cell=1).outcomes[0].att

    deltas = []
    for i in range(t.size):  # each person from lo to a loss far above the cap (clipped to it)
        low, high = raw.copy(), raw.copy()
        low[i, 0], high[i, 0] = capped.lo, 50.0 * capped.cap
        deltas.append(abs(att(high) - att(low)))
    count = psm_table(z=z, t=t, y=np.zeros((t.size, 1)), beta=BETA, edges=EDGES).count
    w = largest_weight(count=count, used=np.ones(3, bool), neighbours="replace")
    assert max(deltas) == pytest.approx((capped.cap - capped.lo) * w, rel=1e-12)
    assert w == pytest.approx(6 / (17 * 2))
