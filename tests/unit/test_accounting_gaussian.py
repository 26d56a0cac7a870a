"""The exact ``"gaussian"`` accountant: full-batch Gaussian releases composed as GDP and priced by
the analytic Gaussian mechanism's privacy curve, checked against references computed here
independently (the curve integrated from the two Gaussian densities, to 30 digits), against
Opacus' PRV and RDP, and in the plans and ledgers that use it by default."""

from __future__ import annotations

import math

import mpmath
import pytest

from node.ledger import PrivacyLedger
from shared.dp.accounting import (
    ACCOUNTANTS,
    DEFAULT_ACCOUNTANT,
    accountant_label,
    epsilon_of_history,
    epsilon_spent,
    gdp_delta,
    gdp_epsilon,
)
from shared.dp.plan import plan_study, single_release_multiplier
from shared.study import BudgetSplit, Privacy

mpmath.mp.dps = 30


def _delta_by_integration(eps: float, gdp: float) -> mpmath.mpf:
    r"""δ(ε) between N(gdp, 1) and N(0, 1), from the hockey-stick divergence's definition
    :math:`\int (p(x) - e^\varepsilon q(x))_+ dx`, integrated numerically: no closed form used.
    The integrand is positive exactly where the log-likelihood ratio gdp·x − gdp²/2 exceeds ε."""
    start = mpmath.mpf(eps) / gdp + mpmath.mpf(gdp) / 2

    def gap(x):
        return mpmath.npdf(x, gdp, 1) - mpmath.exp(eps) * mpmath.npdf(x, 0, 1)

    return mpmath.quad(gap, [start, start + 1, start + 4, start + 12, mpmath.inf])


def _epsilon_by_integration(gdp: float, delta: float) -> float:
    """ε(δ) of gdp-GDP: plain bisection (80 halvings, 30 digits) on the integrated δ(ε), which
    falls in ε."""
    lo, hi = mpmath.mpf(0), mpmath.mpf(200)
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _delta_by_integration(mid, gdp) > delta else (lo, mid)
    return float(hi)


def test_gaussian_is_the_default_accountant_everywhere():
    assert DEFAULT_ACCOUNTANT == "gaussian" and "gaussian" in ACCOUNTANTS
    assert Privacy().accountant == "gaussian"
    assert (
        plan_study(epsilon=1.0, delta=1e-6, split=BudgetSplit(), n_covariates=4, n_outcomes=1).accountant
        == "gaussian"
    )
    assert accountant_label("gaussian") == "gaussian (exact GDP composition)"
    assert accountant_label("rdp") == "opacus-rdp"


def test_known_reference_one_gdp_at_delta_1e5():
    """μ = 1 GDP (a single release with σ/Δ = 1) at δ = 1e-5: ε = 4.3771780957 by integrating
    the two densities; the accountant agrees to 1e-9 and from above."""
    ref = _epsilon_by_integration(1.0, 1e-5)
    assert ref == pytest.approx(4.37717809568, abs=1e-9)
    got = epsilon_spent(noise_multipliers=[1.0], delta=1e-5)
    assert ref <= got <= ref + 1e-9


@pytest.mark.parametrize(("multiplier", "delta"), [(0.5, 1e-6), (2.0, 1e-6), (4.0, 1e-5), (10.0, 1e-9)])
def test_single_gaussian_matches_the_integrated_curve_and_prv(multiplier, delta):
    ref = _epsilon_by_integration(1.0 / multiplier, delta)
    got = epsilon_spent(noise_multipliers=[multiplier], delta=delta)
    assert ref <= got <= ref * (1 + 1e-9) + 1e-12
    # Opacus' PRV: a numerical upper bound whose default error is ε ± 0.01
    prv = epsilon_spent(noise_multipliers=[multiplier], delta=delta, accountant="prv")
    assert got - 1e-6 <= prv <= got + 0.02


def test_composition_is_one_gaussian_with_the_combined_multiplier():
    """k_i releases at μ_i compose to one release at 1/√(Σ k_i/μ_i²), whichever way they come."""
    mults = [0.7] * 3 + [2.5] * 5 + [12.0]
    single = 1.0 / math.sqrt(sum(1.0 / m**2 for m in mults))
    composed = epsilon_spent(noise_multipliers=mults, delta=1e-6)
    assert composed == pytest.approx(epsilon_spent(noise_multipliers=[single], delta=1e-6), rel=1e-10)
    as_history = epsilon_of_history(history=[(0.7, 1.0, 3), (2.5, 1.0, 5), (12.0, 1.0, 1)], delta=1e-6)
    assert as_history == pytest.approx(composed, rel=1e-10)
    assert composed == pytest.approx(_epsilon_by_integration(1.0 / single, 1e-6), rel=1e-9)


def test_delta_falls_with_epsilon_and_epsilon_with_delta():
    for gdp in (0.05, 0.3, 1.0, 3.0, 12.0):
        ds = [gdp_delta(e / 10.0, gdp) for e in range(0, 400)]
        assert all(b <= a for a, b in zip(ds, ds[1:]))
        assert ds[0] > ds[-1]
    es = [gdp_epsilon(1.0, 10.0**-k) for k in range(2, 13)]
    assert all(b > a for a, b in zip(es, es[1:]))
    more = [epsilon_spent(noise_multipliers=[m], delta=1e-6) for m in (0.5, 1.0, 2.0, 4.0, 8.0)]
    assert all(b < a for a, b in zip(more, more[1:]))  # more noise, less ε


def test_returned_epsilon_is_conservative_and_tight():
    """δ(ε) ≤ δ at the ε returned (never under-reported), and just below it δ(ε) > δ."""
    for gdp in (0.02, 0.2, 0.9, 2.0, 7.0):
        for delta in (1e-3, 1e-6, 1e-10):
            eps = gdp_epsilon(gdp, delta)
            if eps == 0.0:
                assert gdp_delta(0.0, gdp) <= delta
                continue
            assert gdp_delta(eps, gdp) <= delta
            assert gdp_delta(eps * (1 - 1e-9), gdp) > delta


@pytest.mark.parametrize(
    "mults",
    [[1.0] * 10, [0.8, 3.0, 3.0, 40.0], [25.0] * 40, [5.0], [0.3], [2.0] * 3 + [9.0] * 30],
)
@pytest.mark.parametrize("delta", [1e-5, 1e-6, 1e-9])
def test_exact_is_never_above_rdp(mults, delta):
    exact = epsilon_spent(noise_multipliers=mults, delta=delta)
    rdp = epsilon_spent(noise_multipliers=mults, delta=delta, accountant="rdp")
    assert exact <= rdp


def test_a_history_with_dp_sgd_falls_back_to_rdp_whole():
    """A subsampled entry (the risk model's DP-SGD on the same ledger) is not a Gaussian: the
    whole history is priced by RDP, which is above the exact price of its Gaussian part."""
    gaussians = [(1.5, 1.0, 4), (6.0, 1.0, 2)]
    mixed = gaussians + [(1.1, 0.01, 400)]
    assert epsilon_of_history(history=mixed, delta=1e-6) == epsilon_of_history(
        history=mixed, delta=1e-6, accountant="rdp"
    )
    assert epsilon_of_history(history=mixed, delta=1e-6) > epsilon_of_history(history=gaussians, delta=1e-6)


@pytest.mark.parametrize("epsilon", [0.25, 1.0, 4.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-6])
def test_a_gaussian_plan_never_exceeds_its_epsilon(epsilon, delta):
    split = BudgetSplit()
    plan = plan_study(epsilon=epsilon, delta=delta, split=split, n_covariates=16, n_outcomes=3)
    recomputed = epsilon_spent(noise_multipliers=[r.noise_multiplier for r in plan.releases], delta=delta)
    assert plan.epsilon_planned <= epsilon and recomputed <= epsilon
    assert recomputed > epsilon * (1 - 1e-5)  # and spends it: the calibration is tight
    # the exact plan's noise is below the RDP plan's at the same ε
    rdp = plan_study(
        epsilon=epsilon, delta=delta, split=split, n_covariates=16, n_outcomes=3, accountant="rdp"
    )
    assert plan.sigma("psm_main") < rdp.sigma("psm_main")


def test_ledger_defaults_to_gaussian_and_opens_a_ledger_written_under_rdp(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    old = PrivacyLedger(url, accountant="rdp")
    old.ensure_budget(epsilon=2.0, delta=1e-6)
    for sigma in (8.0, 5.0, 12.0):
        old.charge(study_id="s1", query="describe", sigma=sigma, sensitivity=1.0)
    rdp_spent = old.spent()
    new = PrivacyLedger(url)
    assert new.accountant == "gaussian" and len(new.history()) == 3
    assert new.spent() == pytest.approx(epsilon_spent(noise_multipliers=[8.0, 5.0, 12.0], delta=1e-6))
    assert new.spent() < rdp_spent
    assert PrivacyLedger(url, accountant="rdp").spent() == rdp_spent  # the old accountant still works
    with pytest.raises(ValueError, match="unknown accountant"):
        PrivacyLedger(url, accountant="gdp")


def test_a_single_release_at_the_default_multiplier_spends_at_most_epsilon(tmp_path):
    led = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    led.ensure_budget(epsilon=1.0, delta=1e-6)
    mu = single_release_multiplier(epsilon=1.0, delta=1e-6)
    led.charge(study_id="s", query="describe", sigma=mu, sensitivity=1.0)
    assert 1.0 - 1e-5 < led.spent() <= 1.0
