r"""Propensity model by sufficient statistics: logistic regression fitted by Newton steps on sums.

Each node returns, at the coordinator's current :math:`\beta`, the additive statistics of its rows
(:class:`PsStats`), with :math:`\tilde z = [1, z]` and :math:`p = \sigma(\tilde z^\top \beta)`:

.. math::
    g = \sum \tilde z (t - p), \qquad H = \sum p(1-p)\, \tilde z \tilde z^\top, \qquad
    \ell = \sum t\,\eta - \log(1 + e^{\eta}).

The coordinator sums them over nodes and :class:`PropensityFitter` takes the ridge-penalised
Newton step. The pooled reference (:func:`fit_propensity`) drives the *same* fitter with the
statistics of all rows at once, so without noise federated and pooled fits take the identical
path and agree to rounding.

Round trips cost seconds, so the fit starts from :func:`initial_beta`, a discriminant (LDA)
direction computed from the per-arm moments every node releases in its first round
(:class:`CovMoments`): typically two or three Newton steps fewer than starting from zero.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> z = rng.uniform(size=(500, 2)); t = (rng.uniform(size=500) < 1 / (1 + np.exp(1 - 2 * z[:, 0]))) * 1.0
>>> fit = fit_propensity(z=z, t=t)
>>> fit.converged, fit.beta.shape
(True, (3,))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.errors import ConvergenceError, DataError, EmptyArmError, NoOverlapError
from shared.psm._checks import check_beta, check_t, check_z, require_keys

__all__ = [
    "CovMoments",
    "PropensityFitter",
    "PsStats",
    "cov_moments",
    "fit_propensity",
    "initial_beta",
    "ps_contribution",
    "run_fit",
]


@dataclass(frozen=True)
class PsStats:
    """Additive statistics of the logistic log-likelihood at one β (p = d + 1, intercept first).

    Attributes:
        n: rows summed.
        g: ``(p,)`` gradient :math:`\\sum \\tilde z (t - p)`.
        H: ``(p, p)`` negative Hessian :math:`\\sum p(1-p) \\tilde z \\tilde z^\\top`.
        loglik: log-likelihood at β.
    """

    n: int
    g: np.ndarray
    H: np.ndarray
    loglik: float

    def merge(self, other: "PsStats") -> "PsStats":
        if self.g.shape != other.g.shape:
            raise DataError(f"cannot merge PsStats of {self.g.shape[0]} and {other.g.shape[0]} parameters")
        return PsStats(
            n=self.n + other.n, g=self.g + other.g, H=self.H + other.H, loglik=self.loglik + other.loglik
        )

    __add__ = merge

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "n": np.array([float(self.n)]),
            "g": self.g.copy(),
            "H": self.H.copy(),
            "loglik": np.array([self.loglik]),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "PsStats":
        """Inverse of :meth:`to_arrays` (``n`` is rounded: it may arrive as a float).

        Raises:
            DataError: a key is missing or the shapes disagree.
        """
        require_keys(arrays, ("n", "g", "H", "loglik"), "PsStats")
        g = np.asarray(arrays["g"], dtype=float).reshape(-1)
        H = np.asarray(arrays["H"], dtype=float)
        if H.shape != (g.size, g.size):
            raise DataError(f"PsStats: H has shape {H.shape}, expected {(g.size, g.size)}", field="H")
        return cls(
            n=int(round(float(np.asarray(arrays["n"]).reshape(-1)[0]))),
            g=g,
            H=H,
            loglik=float(np.asarray(arrays["loglik"]).reshape(-1)[0]),
        )


def ps_contribution(*, z, t, beta, names=None) -> PsStats:
    """A node's :class:`PsStats` at ``beta``.

    Args:
        z: ``(n, d)`` covariates already scaled to [0, 1] by their public bounds.
        t: ``(n,)`` treatment, 0 or 1. A node may hold one arm only.
        beta: ``(d + 1,)`` coefficients, intercept first.
        names: optional covariate names for error messages.

    Raises:
        DataError: NaN, wrong shapes, or ``t`` not 0/1.
        CovariateBoundsError: a covariate outside [0, 1].
    """
    z = check_z(z, names=names)
    t = check_t(t, n=z.shape[0])
    beta = check_beta(beta, p=z.shape[1] + 1)
    eta = beta[0] + z @ beta[1:]
    p = _expit(eta)
    r = t - p
    w = p * (1.0 - p)
    zw = z * w[:, None]
    H = np.empty((beta.size, beta.size))
    H[0, 0] = w.sum()
    H[0, 1:] = H[1:, 0] = zw.sum(axis=0)
    H[1:, 1:] = zw.T @ z
    g = np.concatenate(([r.sum()], z.T @ r))
    loglik = float(np.sum(t * eta - np.logaddexp(0.0, eta)))
    return PsStats(n=int(z.shape[0]), g=g, H=H, loglik=loglik)


def _expit(eta: np.ndarray) -> np.ndarray:
    # exp of a non-positive number only: no overflow for large |eta|
    e = np.exp(-np.abs(eta))
    return np.where(eta >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@dataclass(frozen=True)
class CovMoments:
    """Per-arm covariate moments (index 0 = control, 1 = treated), additive across nodes.

    Attributes:
        count: ``(2,)`` rows per arm.
        sum_z: ``(2, d)`` :math:`\\sum z` per arm.
        sum_zz: ``(2, d, d)`` :math:`\\sum z z^\\top` per arm.
    """

    count: np.ndarray
    sum_z: np.ndarray
    sum_zz: np.ndarray

    @property
    def d(self) -> int:
        return int(self.sum_z.shape[1])

    def merge(self, other: "CovMoments") -> "CovMoments":
        if self.sum_z.shape != other.sum_z.shape:
            raise DataError(f"cannot merge CovMoments of {self.d} and {other.d} covariates")
        return CovMoments(
            count=self.count + other.count, sum_z=self.sum_z + other.sum_z, sum_zz=self.sum_zz + other.sum_zz
        )

    __add__ = merge

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"count": self.count.copy(), "sum_z": self.sum_z.copy(), "sum_zz": self.sum_zz.copy()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "CovMoments":
        """Inverse of :meth:`to_arrays`; other keys (e.g. ``n_clipped``) are ignored.

        Raises:
            DataError: a key is missing or the shapes disagree.
        """
        require_keys(arrays, ("count", "sum_z", "sum_zz"), "CovMoments")
        count = np.asarray(arrays["count"], dtype=float).reshape(-1)
        sum_z = np.asarray(arrays["sum_z"], dtype=float)
        sum_zz = np.asarray(arrays["sum_zz"], dtype=float)
        d = sum_z.shape[-1] if sum_z.ndim == 2 else -1
        if count.shape != (2,) or sum_z.shape != (2, d) or sum_zz.shape != (2, d, d):
            raise DataError(
                f"CovMoments: inconsistent shapes count {count.shape}, "
                f"sum_z {sum_z.shape}, sum_zz {sum_zz.shape}"
            )
        return cls(count=count, sum_z=sum_z, sum_zz=sum_zz)

    def pooled_mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance (denominator n − 1) of z over both arms.

        Raises:
            EmptyArmError: fewer than two rows in all.
        """
        n = float(self.count.sum())
        if not n >= 2:
            raise EmptyArmError(f"covariate moments over {n:g} rows: need at least 2")
        mean = self.sum_z.sum(axis=0) / n
        cov = (self.sum_zz.sum(axis=0) - n * np.outer(mean, mean)) / (n - 1.0)
        return mean, (cov + cov.T) / 2.0


def cov_moments(*, z, t, names=None) -> CovMoments:
    """A node's :class:`CovMoments` (its answer to the first, "describe", round).

    Raises:
        DataError / CovariateBoundsError: as :func:`ps_contribution`.
    """
    z = check_z(z, names=names)
    t = check_t(t, n=z.shape[0])
    count = np.empty(2)
    sum_z = np.empty((2, z.shape[1]))
    sum_zz = np.empty((2, z.shape[1], z.shape[1]))
    for arm in (0, 1):
        za = z[t == arm]
        count[arm] = za.shape[0]
        sum_z[arm] = za.sum(axis=0)
        sum_zz[arm] = za.T @ za
    return CovMoments(count=count, sum_z=sum_z, sum_zz=sum_zz)


def initial_beta(*, moments: CovMoments, max_abs: float = 20.0) -> np.ndarray:
    r"""Newton start from the Fisher/LDA discriminant of the pooled moments (no extra round).

    Under normal covariates with a common covariance, the logistic coefficients are exactly
    :math:`w = \Sigma_w^{-1}(\mu_1 - \mu_0)` with intercept
    :math:`\log(n_1/n_0) - w^\top(\mu_1 + \mu_0)/2`; otherwise this is a close start from
    which Newton needs fewer rounds than from zero. The within-arm covariance is regularised
    (eigenvalues floored) so constant or noisy (DP) moments still give a finite start, and the
    slopes are shrunk to ``max_abs`` in sup-norm so a near-separating direction cannot start
    Newton far out in the flat tail.

    Raises:
        EmptyArmError: an arm has (noisy) count below 1.
    """
    n = moments.count
    if not (n[0] >= 1 and n[1] >= 1):
        raise EmptyArmError(f"an arm is empty (controls {n[0]:g}, treated {n[1]:g})")
    mu = moments.sum_z / n[:, None]
    scatter = sum(moments.sum_zz[a] - n[a] * np.outer(mu[a], mu[a]) for a in (0, 1))
    cov = (scatter + scatter.T) / 2.0 / max(n.sum() - 2.0, 1.0)
    vals, vecs = np.linalg.eigh(cov)
    floor = max(1e-6 * max(vals.max(), 0.0), 1e-9)
    w = vecs @ ((vecs.T @ (mu[1] - mu[0])) / np.maximum(vals, floor))
    big = np.abs(w).max(initial=0.0)
    if big > max_abs:
        w = w * (max_abs / big)
    b0 = np.log(n[1] / n[0]) - w @ (mu[1] + mu[0]) / 2.0
    return np.concatenate(([b0], w))


class PropensityFitter:
    r"""Ridge-penalised Newton iterations over summed :class:`PsStats`.

    The objective is :math:`\ell(\beta) - \tfrac{\lambda}{2}\lVert\beta_{1:}\rVert^2` (the
    intercept is not penalised, as in scikit-learn), so the step is
    :math:`\Delta = (H + \lambda D)^{-1}(g - \lambda D\beta)`, :math:`D = \mathrm{diag}(0,1,..,1)`.

    The caller evaluates the statistics at :attr:`beta` and calls :meth:`update`. The fit is
    converged when the step is small relative to β, :math:`\lVert\Delta\rVert_\infty \le
    \mathrm{tol}\,(1 + \lVert\beta\rVert_\infty)`; or when Newton has reached the rounding floor
    — the step is below ``stall_tol``·(1 + ‖β‖∞) yet no longer shrinks (≥ half the previous
    one), which happens with nearly collinear covariates (total cholesterol ≈ HDL + LDL + TG/2.2:
    condition numbers ~1e8 make sums over different node splits differ by ~1e-10 along the flat
    direction); or, if ``loglik_rtol`` > 0, when the penalised log-likelihood changed by less than
    that relative amount. Then :attr:`beta` is *kept*:
    it is the β at which the last statistics were computed, so a PSM table requested in the same
    round is at the final β. If the penalised log-likelihood fell since the previous iterate,
    the previous step is halved instead (a safeguard for far starts; turn off with
    ``line_search=False`` when the log-likelihood is released with noise).

    Args:
        p: number of coefficients (d + 1).
        ridge: λ above; a small ridge keeps H invertible.
        tol: convergence threshold on :math:`\lVert\Delta\rVert_\infty / (1 + \lVert\beta\rVert_\infty)`.
        max_iter: maximum number of statistics evaluations (rounds).
        beta0: starting β (zeros if None).
        near_tol: :attr:`near_converged` once the last step is below this.
        loglik_rtol: optional relative log-likelihood-change criterion (0 = off).
        line_search: step halving when the objective decreases.
        stall_tol: relative step below which a step that stopped shrinking means convergence.
    """

    def __init__(
        self,
        *,
        p: int,
        ridge: float = 1e-6,
        tol: float = 1e-10,
        max_iter: int = 25,
        beta0: np.ndarray | None = None,
        near_tol: float = 1e-4,
        loglik_rtol: float = 0.0,
        line_search: bool = True,
        stall_tol: float = 1e-6,
    ):
        if p < 1 or ridge < 0 or tol <= 0 or max_iter < 1:
            raise ValueError("PropensityFitter needs p >= 1, ridge >= 0, tol > 0, max_iter >= 1")
        self.p = p
        self.ridge = float(ridge)
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self.near_tol = float(near_tol)
        self.loglik_rtol = float(loglik_rtol)
        self.line_search = line_search
        self.stall_tol = float(stall_tol)
        self.beta = np.zeros(p) if beta0 is None else check_beta(beta0, p=p).copy()
        self.iterations = 0
        self.converged = False
        self.loglik: float | None = None
        self.last_step: float = np.inf
        self._prev: tuple[np.ndarray, float, np.ndarray] | None = None  # beta, objective, step

    @property
    def near_converged(self) -> bool:
        """The last step was small: the next round will very likely confirm convergence."""
        return self.last_step < self.near_tol

    def objective(self, loglik: float) -> float:
        return loglik - 0.5 * self.ridge * float(self.beta[1:] @ self.beta[1:])

    def update(self, total: PsStats) -> bool:
        """Consume the summed statistics at :attr:`beta`; return True once converged.

        Raises:
            DataError: the statistics do not have ``p`` parameters or are not finite.
            NoOverlapError: converged to a model that separates the arms (Σ p(1−p) < 1).
            ConvergenceError: ``max_iter`` evaluations without convergence, or a singular system.
        """
        if self.converged:
            return True
        if total.g.shape != (self.p,) or total.H.shape != (self.p, self.p):
            raise DataError(f"statistics for {total.g.shape[0]} parameters, fitter has {self.p}")
        if not (np.all(np.isfinite(total.g)) and np.all(np.isfinite(total.H)) and np.isfinite(total.loglik)):
            raise DataError("propensity statistics are not finite")
        self.iterations += 1
        obj = self.objective(total.loglik)
        if self._prev is not None:
            prev_beta, prev_obj, prev_step = self._prev
            if self.loglik_rtol > 0 and abs(obj - prev_obj) <= self.loglik_rtol * (1.0 + abs(obj)):
                return self._converge(total.loglik)
            # a real overshoot loses far more than rounding (1e-10 relative) could
            if self.line_search and obj < prev_obj - 1e-10 * (1.0 + abs(prev_obj)):
                half = prev_step / 2.0
                self._check_budget()
                self._prev = (prev_beta, prev_obj, half)
                self.last_step = np.inf
                self.beta = prev_beta + half
                return False
        step = self._newton_step(total)
        self.last_step = float(np.abs(step).max())
        if self._small(self.last_step):
            self._check_overlap(total)
            return self._converge(total.loglik)
        self._check_budget()
        self._prev = (self.beta.copy(), obj, step)
        self.loglik = total.loglik
        self.beta = self.beta + step
        return False

    def _small(self, step: float) -> bool:
        scale = 1.0 + float(np.abs(self.beta).max())
        if step <= self.tol * scale:
            return True
        prev_step = float(np.abs(self._prev[2]).max()) if self._prev is not None else np.inf
        return step <= self.stall_tol * scale and step > 0.5 * prev_step

    def _newton_step(self, total: PsStats) -> np.ndarray:
        pen = np.full(self.p, self.ridge)
        pen[0] = 0.0
        A = (total.H + total.H.T) / 2.0 + np.diag(pen)
        try:
            return np.linalg.solve(A, total.g - pen * self.beta)
        except np.linalg.LinAlgError:
            raise ConvergenceError(
                f"propensity Newton system is singular at iteration {self.iterations} "
                "(a covariate constant in the pooled data? raise the ridge)"
            ) from None

    @staticmethod
    def _check_overlap(total: PsStats) -> None:
        # Σ p(1 − p) is the expected number of misclassified rows: below one, the fitted model
        # tells every row's arm with near certainty (complete separation, held finite only by
        # the ridge), and no stratum can hold both arms.
        if total.H[0, 0] < 1.0:
            raise NoOverlapError(
                f"the propensity model separates treated and controls (sum of p(1-p) = "
                f"{total.H[0, 0]:.3g} < 1): the arms do not overlap on their covariates"
            )

    def _converge(self, loglik: float) -> bool:
        self.converged = True
        self.loglik = loglik
        return True

    def _check_budget(self) -> None:
        if self.iterations >= self.max_iter:
            raise ConvergenceError(
                f"propensity fit did not converge in {self.max_iter} iterations "
                f"(last step {self.last_step:.3g}, tol {self.tol:g}); "
                "possible separation of the arms or too much noise"
            )


def fit_propensity(
    *,
    z,
    t,
    ridge: float = 1e-6,
    tol: float = 1e-10,
    max_iter: int = 25,
    beta0: np.ndarray | None = None,
    names=None,
) -> PropensityFitter:
    """Pooled reference fit: the coordinator's loop with one "node" holding every row.

    Starts from :func:`initial_beta` of the pooled moments, exactly as the federated workflow.

    Raises:
        EmptyArmError: an arm has no rows.
        NoOverlapError: the fit diverged and its last iterate separates the arms completely.
        ConvergenceError: see :meth:`PropensityFitter.update`.
        DataError / CovariateBoundsError: bad input.
    """
    z = check_z(z, names=names)
    t = check_t(t, n=z.shape[0])
    n_t = int(t.sum())
    if n_t == 0 or n_t == t.size:
        raise EmptyArmError(f"an arm is empty: {n_t} treated, {t.size - n_t} controls")
    if beta0 is None:
        beta0 = initial_beta(moments=cov_moments(z=z, t=t))
    fitter = PropensityFitter(p=z.shape[1] + 1, ridge=ridge, tol=tol, max_iter=max_iter, beta0=beta0)
    run_fit(fitter, [(z, t)])
    return fitter


def run_fit(fitter: PropensityFitter, parts) -> PropensityFitter:
    """Drive ``fitter`` to convergence over row sets ``parts`` = [(z, t), ...], summing their
    statistics each round as the coordinator does (in-process: references, tests, benchmarks).

    Raises:
        NoOverlapError: the fit diverged and its last iterate separates the arms completely.
        ConvergenceError: see :meth:`PropensityFitter.update`.
    """
    try:
        while not fitter.update(_sum_stats(ps_contribution(z=z, t=t, beta=fitter.beta) for z, t in parts)):
            pass
    except ConvergenceError as e:
        scores = [(fitter.beta[0] + z @ fitter.beta[1:], t) for z, t in parts]
        lo = {
            arm: min((s[t == arm].min() for s, t in scores if (t == arm).any()), default=np.inf)
            for arm in (0, 1)
        }
        hi = {
            arm: max((s[t == arm].max() for s, t in scores if (t == arm).any()), default=-np.inf)
            for arm in (0, 1)
        }
        if hi[0] < lo[1] or hi[1] < lo[0]:
            raise NoOverlapError(
                "treated and controls are completely separated by their "
                "covariates: the propensity scores do not overlap"
            ) from e
        raise
    return fitter


def _sum_stats(stats):
    it = iter(stats)
    total = next(it)
    for s in it:
        total = total + s
    return total
