"""Gaussian mechanism, PSD projection, the node's CSPRNG seeding, and accounting/plan golden values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.dp.accounting import epsilon_spent
from shared.dp.mechanisms import gaussian_noise, project_psd, release, secure_rng
from shared.dp.plan import SUMSQ_SHARE, WSUM_SHARE, plan_study
from shared.errors import PrivacyError
from shared.study import BudgetSplit


def test_release_adds_noise_of_sigma_to_every_entry_and_keeps_inputs():
    x = {"a": np.zeros((200, 50)), "b": np.ones(10_000)}
    out = release(arrays=x, sigma=3.0, rng=np.random.default_rng(1))
    assert np.all(x["a"] == 0)  # inputs untouched
    assert out["a"].shape == (200, 50)
    assert np.std(out["a"]) == pytest.approx(3.0, rel=0.02)
    assert np.mean(out["b"] - 1.0) == pytest.approx(0.0, abs=0.1)


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf")])
def test_zero_or_invalid_noise_is_refused(sigma):
    with pytest.raises(PrivacyError):
        gaussian_noise(shape=(2,), sigma=sigma, rng=np.random.default_rng(0))


def test_non_finite_statistic_is_refused():
    with pytest.raises(PrivacyError, match="non-finite"):
        release(arrays={"g": np.array([1.0, np.nan])}, sigma=1.0, rng=np.random.default_rng(0))


def test_secure_rng_is_not_reproducible_across_calls():
    a, b = secure_rng().normal(size=4), secure_rng().normal(size=4)
    assert not np.allclose(a, b)


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 8), st.floats(0.01, 100.0), st.integers(0, 2**31))
def test_project_psd_is_symmetric_with_floored_eigenvalues(p, scale, seed):
    rng = np.random.default_rng(seed)
    H = rng.normal(scale=scale, size=(p, p))  # asymmetric, usually indefinite
    floor = scale / 10
    out = project_psd(H, floor=floor)
    assert np.array_equal(out, out.T)
    assert np.linalg.eigvalsh(out).min() >= floor * (1 - 1e-9)


def test_project_psd_keeps_a_well_conditioned_spd_matrix():
    A = np.array([[4.0, 1.0], [1.0, 3.0]])
    assert np.allclose(project_psd(A, floor=0.1), A)


def test_golden_epsilon_of_ten_unit_gaussians():
    # docs/ARCHITECTURE.md: ten releases at sigma/Delta = 1, delta = 1e-5: RDP 19.05, PRV 17.87,
    # exact (the default: sqrt(10)-GDP) 17.86
    assert epsilon_spent(noise_multipliers=[1.0] * 10, delta=1e-5) == pytest.approx(17.8566, abs=1e-4)
    assert epsilon_spent(noise_multipliers=[1.0] * 10, delta=1e-5, accountant="rdp") == pytest.approx(
        19.05, abs=0.01
    )
    assert epsilon_spent(noise_multipliers=[1.0] * 10, delta=1e-5, accountant="prv") == pytest.approx(
        17.87, abs=0.05
    )


def test_rdp_path_is_opacus_accountant_exactly_and_never_imports_torch():
    """The node's charge path loads Opacus' RDP analysis by file: same ε as RDPAccountant to the
    last bit, and a fresh process planning and charging a study never imports torch."""
    import subprocess
    import sys

    from opacus.accountants import RDPAccountant

    from shared.dp.accounting import ORDERS, epsilon_of_history

    history = [(0.8, 1.0, 3), (12.0, 1.0, 1), (1.1, 0.01, 400)]
    acc = RDPAccountant()
    acc.history = history
    assert epsilon_of_history(history=history, delta=1e-6) == acc.get_epsilon(delta=1e-6, alphas=list(ORDERS))
    code = (
        "import sys; from shared.dp.plan import plan_study; from shared.study import BudgetSplit;"
        "p = plan_study(epsilon=1.0, delta=1e-6, split=BudgetSplit(), n_covariates=16,"
        " n_outcomes=3); print(p.epsilon_planned <= 1.0, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_composition_is_order_free_and_grows():
    a = epsilon_spent(noise_multipliers=[5.0, 20.0, 8.0], delta=1e-6)
    b = epsilon_spent(noise_multipliers=[8.0, 5.0, 20.0], delta=1e-6)
    assert a == b
    assert epsilon_spent(noise_multipliers=[5.0, 20.0, 8.0, 30.0], delta=1e-6) > a
    assert epsilon_spent(noise_multipliers=[], delta=1e-6) == 0.0


@settings(max_examples=15, deadline=None)
@given(
    st.floats(0.2, 10.0),
    st.sampled_from([1e-5, 1e-6, 1e-7]),
    st.integers(1, 6),
    st.integers(1, 20),
    st.integers(1, 4),
)
def test_plan_never_overshoots_and_is_tight(epsilon, delta, rounds, d, o):
    split = BudgetSplit()
    plan = plan_study(
        epsilon=epsilon, delta=delta, split=split, n_covariates=d, n_outcomes=o, n_ps_rounds=rounds
    )
    mus = [r.noise_multiplier for r in plan.releases]
    eps = epsilon_spent(noise_multipliers=mus, delta=delta)
    assert eps <= epsilon
    assert eps == pytest.approx(epsilon, rel=1e-4)  # calibrated, not wasteful
    # 1% less noise everywhere would overspend: the plan sits at the conservative end
    assert epsilon_spent(noise_multipliers=[m * 0.99 for m in mus], delta=delta) > epsilon


def test_plan_shares_are_rho_shares():
    split = BudgetSplit(describe=0.1, ps_fit=0.2, psm_stats=0.6, balance=0.1)
    plan = plan_study(epsilon=1.0, delta=1e-6, split=split, n_covariates=16, n_outcomes=3, n_ps_rounds=3)
    rho = {
        q: 0.0
        for q in ("describe", "ps_fit", "score_hist", "psm_main", "psm_sumsq", "psm_wsum", "psm_balance")
    }
    for r in plan.releases:
        rho[r.query] += 1.0 / (2 * r.noise_multiplier**2)
    total = sum(rho.values())
    assert total == pytest.approx(plan.rho)
    assert (rho["psm_main"] + rho["psm_sumsq"] + rho["psm_wsum"]) / total == pytest.approx(0.6)
    assert rho["psm_sumsq"] / total == pytest.approx(0.6 * SUMSQ_SHARE)
    assert rho["psm_wsum"] / total == pytest.approx(0.6 * WSUM_SHARE)
    assert plan.release("psm_wsum").sensitivity == 1.0  # a unit: the query sets Δ
    assert (rho["ps_fit"] + rho["score_hist"]) / total == pytest.approx(0.2)
    assert rho["score_hist"] / total == pytest.approx(0.2 / 4)
    assert plan.sigma("psm_main") == pytest.approx(
        math.sqrt(1 + 3 / 4) * plan.release("psm_main").noise_multiplier
    )
    assert plan.sigma("psm_sumsq") == pytest.approx(
        np.sqrt(3) / 4 * plan.release("psm_sumsq").noise_multiplier
    )


def test_plan_without_balance_share_has_no_balance_release_and_refuses_missing_rounds():
    plan = plan_study(
        epsilon=1.0,
        delta=1e-6,
        split=BudgetSplit(describe=0.05, ps_fit=0.15, psm_stats=0.8, balance=0.0),
        n_covariates=4,
        n_outcomes=1,
    )
    assert not plan.has("psm_balance")
    with pytest.raises(PrivacyError, match="psm_balance"):
        plan.release("psm_balance")
    with pytest.raises(PrivacyError, match="ps_fit"):
        plan_study(
            epsilon=1.0,
            delta=1e-6,
            split=BudgetSplit(describe=0.1, ps_fit=0.0, psm_stats=0.8, balance=0.1),
            n_covariates=4,
            n_outcomes=1,
        )


def test_plan_round_trips_through_its_dict():
    from shared.dp.plan import NoisePlan

    plan = plan_study(epsilon=2.0, delta=1e-6, split=BudgetSplit(), n_covariates=5, n_outcomes=2)
    assert NoisePlan.from_dict(plan.to_dict()) == plan
