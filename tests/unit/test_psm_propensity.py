"""Propensity fit by sufficient statistics: oracles (statsmodels, scikit-learn), the Newton
loop's contract with the coordinator, and the wire format."""

import numpy as np
import pytest
import statsmodels.api as sm
from psm_dgp import make_study
from sklearn.linear_model import LogisticRegression

from shared.errors import ConvergenceError, DataError
from shared.psm.propensity import (
    CovMoments,
    PropensityFitter,
    PsStats,
    cov_moments,
    fit_propensity,
    initial_beta,
    ps_contribution,
)


@pytest.fixture(scope="module")
def study():
    return make_study(n=4000, seed=7)


def test_unpenalised_fit_equals_statsmodels_mle(study):
    fit = fit_propensity(z=study.z, t=study.t, ridge=0.0)
    ref = sm.Logit(study.t, sm.add_constant(study.z)).fit(method="newton", tol=1e-14, disp=0)
    np.testing.assert_allclose(fit.beta, ref.params, rtol=0, atol=1e-6)
    assert fit.loglik == pytest.approx(ref.llf, rel=1e-10)
    assert fit.converged


def test_default_tiny_ridge_is_within_1e6_of_statsmodels(study):
    fit = fit_propensity(z=study.z, t=study.t)  # ridge 1e-6
    ref = sm.Logit(study.t, sm.add_constant(study.z)).fit(method="newton", tol=1e-14, disp=0)
    np.testing.assert_allclose(fit.beta, ref.params, rtol=0, atol=1e-6)


@pytest.mark.parametrize("ridge", [0.5, 5.0])
def test_ridge_fit_equals_sklearn_with_matching_penalty(study, ridge):
    # sklearn minimises C * sum(loss) + ||w||^2 / 2 with the intercept unpenalised: C = 1 / ridge
    fit = fit_propensity(z=study.z, t=study.t, ridge=ridge)
    ref = LogisticRegression(C=1.0 / ridge, solver="newton-cholesky", tol=1e-12, max_iter=200)
    ref.fit(study.z, study.t)
    np.testing.assert_allclose(fit.beta, np.r_[ref.intercept_, ref.coef_[0]], rtol=0, atol=1e-6)


def test_contribution_matches_numerical_derivatives(study):
    z, t = study.z[:300], study.t[:300]
    beta = np.array([-1.0, 0.5, 0.3, -0.2, 0.1, 0.4, 0.2])
    stats = ps_contribution(z=z, t=t, beta=beta)

    def loglik(b):
        return ps_contribution(z=z, t=t, beta=b).loglik

    eps = 1e-6
    grad = np.array([(loglik(beta + eps * e) - loglik(beta - eps * e)) / (2 * eps) for e in np.eye(7)])
    np.testing.assert_allclose(stats.g, grad, rtol=1e-6, atol=1e-6)
    hess = np.array(
        [
            (
                ps_contribution(z=z, t=t, beta=beta + eps * e).g
                - ps_contribution(z=z, t=t, beta=beta - eps * e).g
            )
            / (2 * eps)
            for e in np.eye(7)
        ]
    )
    np.testing.assert_allclose(stats.H, -hess, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.H, stats.H.T)


def test_discriminant_start_saves_newton_rounds(study):
    from_lda = fit_propensity(z=study.z, t=study.t)
    from_zero = fit_propensity(z=study.z, t=study.t, beta0=np.zeros(7))
    np.testing.assert_allclose(from_lda.beta, from_zero.beta, atol=1e-9)
    assert from_lda.iterations < from_zero.iterations


def test_fitter_keeps_the_beta_its_last_statistics_were_computed_at(study):
    z, t = study.z, study.t
    fitter = PropensityFitter(p=7, beta0=initial_beta(moments=cov_moments(z=z, t=t)))
    seen_near = False
    while True:
        beta_asked = fitter.beta.copy()
        seen_near |= fitter.near_converged
        if fitter.update(ps_contribution(z=z, t=t, beta=beta_asked)):
            break
    np.testing.assert_array_equal(fitter.beta, beta_asked)
    assert seen_near and fitter.near_converged
    assert fitter.loglik == pytest.approx(ps_contribution(z=z, t=t, beta=fitter.beta).loglik)
    assert fitter.update(ps_contribution(z=z, t=t, beta=fitter.beta))  # idempotent once converged


def test_iteration_cap_raises_convergence_error(study):
    with pytest.raises(ConvergenceError, match="did not converge in 2"):
        fit_propensity(z=study.z, t=study.t, max_iter=2, beta0=np.zeros(7))


def test_step_halving_recovers_from_a_far_start(study):
    far = np.array([8.0, -9.0, 9.0, -9.0, 9.0, -9.0, 9.0])
    fit = fit_propensity(z=study.z, t=study.t, beta0=far, max_iter=60)
    ref = fit_propensity(z=study.z, t=study.t)
    np.testing.assert_allclose(fit.beta, ref.beta, atol=1e-8)


def test_loglik_criterion_stops_early_when_asked(study):
    z, t = study.z, study.t
    fitter = PropensityFitter(p=7, beta0=np.zeros(7), loglik_rtol=1e-6)
    while not fitter.update(ps_contribution(z=z, t=t, beta=fitter.beta)):
        pass
    exact = fit_propensity(z=z, t=t, beta0=np.zeros(7))
    assert fitter.iterations < exact.iterations
    np.testing.assert_allclose(fitter.beta, exact.beta, atol=1e-2)


def test_wire_round_trip_and_merge():
    rng = np.random.default_rng(1)
    z, t = rng.uniform(size=(50, 3)), (rng.uniform(size=50) < 0.4).astype(float)
    s = ps_contribution(z=z, t=t, beta=np.array([0.1, 0.2, -0.3, 0.4]))
    back = PsStats.from_arrays(s.to_arrays())
    assert back.n == 50 and back.loglik == s.loglik
    np.testing.assert_array_equal(back.H, s.H)
    m = cov_moments(z=z, t=t)
    arrays = m.to_arrays() | {"n_clipped": np.zeros(2)}  # extra keys ride along in a describe reply
    m2 = CovMoments.from_arrays(arrays)
    np.testing.assert_array_equal(m2.sum_zz, m.sum_zz)
    assert (s + s).n == 100 and (m + m).count.sum() == 100
    with pytest.raises(DataError, match="missing"):
        PsStats.from_arrays({"g": s.g})
    with pytest.raises(DataError, match="shape"):
        PsStats.from_arrays(s.to_arrays() | {"H": np.eye(3)})


def test_a_node_with_one_arm_still_contributes():
    rng = np.random.default_rng(2)
    z = rng.uniform(size=(20, 2))
    s = ps_contribution(z=z, t=np.zeros(20), beta=np.zeros(3))
    assert s.n == 20 and s.g[0] == pytest.approx(-10.0)
    m = cov_moments(z=z, t=np.zeros(20))
    assert m.count.tolist() == [20.0, 0.0]
