r"""The calibration check a candidate model must pass on the node's own rows before approval.

Runs on the node, on exact local data, and releases nothing (its figures go to the operator's
terminal and the model's approval note). Two figures decide, each with a *material* band and a
*chance* allowance; a model is refused when a figure is outside both:

* **Calibration-in-the-large**, observed / expected events :math:`O/E = \sum y / \sum p`.
  Material band [0.8, 1.25], symmetric on the log scale (:math:`|\log O/E| \le \log 1.25`):
  the risk tiers are absolute risks (cut-offs 5 %, 10 %, 20 %), and a model that over- or
  under-states everyone's risk by a quarter moves a person predicted at 8 % across the 10 %
  boundary. Chance allowance: if the model is calibrated, :math:`\operatorname{Var} O =
  \sum p(1-p)`, so :math:`\operatorname{SE}(\log O/E) \approx \sqrt{\sum p(1-p)} / E`; the
  band is widened to :math:`z\,\mathrm{SE}` when that is wider, with z = 2.81 (two-sided
  p < 0.005 per figure, Bonferroni over the two figures: p < 0.01 for the check). A
  well-calibrated model is thus refused with probability about 1 % on any site size, and a
  large site cannot refuse a model for an immaterial miscalibration.
* **Calibration slope** :math:`b` of the logistic recalibration
  :math:`\operatorname{logit} P(y=1) = a + b\,\operatorname{logit} p` (Cox 1958; Van Calster
  et al. 2016 "weak calibration": slope 1). :math:`b < 1`: predictions too extreme (the
  signature of an over-fitted model, or of one built to single people out); :math:`b > 1`: too
  timid. Material band [0.8, 1.25] (the same ratio either way), widened to
  :math:`1 \pm z\,\mathrm{SE}(b)` from the fit's Fisher information when wider.

The check also reports the Hosmer–Lemeshow statistic over deciles of predicted risk (8 degrees
of freedom) and its p-value, as context for the operator: on large sites it rejects immaterial
miscalibration, so it does not decide. Fewer than :data:`MIN_EVENTS` events on the node: the
check cannot tell and refuses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["BAND", "CalibrationCheck", "MIN_EVENTS", "Z_99", "calibration_check"]

#: Material band of O/E and of the slope (ratio 1.25 either way).
BAND = (0.8, 1.25)
#: The chance allowance: two-sided p < 0.005 per figure (normal quantile), so that the two
#: figures together refuse a calibrated model with probability below about 1 %.
Z_99 = 2.807033768343811
#: Fewer events than this and the check cannot decide (refused).
MIN_EVENTS = 10
_EPS = 1e-6


@dataclass(frozen=True)
class CalibrationCheck:
    """The figures of one check and its verdict."""

    n: int
    events: int
    expected: float
    oe_ratio: float
    oe_allowed: tuple[float, float]
    slope: float
    slope_se: float
    slope_allowed: tuple[float, float]
    hl_statistic: float
    hl_p_value: float
    deciles: tuple[tuple[int, float, float], ...]  # (n, mean predicted, observed rate)
    passed: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        lo, hi = self.oe_allowed
        slo, shi = self.slope_allowed
        return (
            f"{self.n} rows, {self.events} events, {self.expected:.1f} expected: "
            f"O/E = {self.oe_ratio:.3f} (allowed {lo:.3f}–{hi:.3f}), calibration slope = "
            f"{self.slope:.3f} ± {self.slope_se:.3f} (allowed {slo:.3f}–{shi:.3f}), "
            f"Hosmer–Lemeshow χ²(8) = {self.hl_statistic:.1f}, p = {self.hl_p_value:.3g}"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def _recalibration_slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(b, SE b) of logit P(y) = a + b x by Newton–Raphson; (nan, inf) if it does not converge
    (e.g. x separates y perfectly)."""
    A = np.column_stack([np.ones_like(x), x])
    beta = np.zeros(2)
    for _ in range(100):
        eta = np.clip(A @ beta, -35, 35)
        mu = 1 / (1 + np.exp(-eta))
        w = mu * (1 - mu)
        H = A.T @ (A * w[:, None]) + 1e-12 * np.eye(2)
        step = np.linalg.solve(H, A.T @ (y - mu))
        beta = beta + step
        if not np.all(np.isfinite(beta)) or abs(beta[1]) > 1e6:
            return float("nan"), float("inf")
        if np.max(np.abs(step)) < 1e-10:
            cov = np.linalg.inv(H)
            return float(beta[1]), float(math.sqrt(max(cov[1, 1], 0.0)))
    return float("nan"), float("inf")


def _hosmer_lemeshow(p: np.ndarray, y: np.ndarray, groups: int = 10):
    from scipy.stats import chi2

    order = np.argsort(p, kind="stable")
    stat, rows = 0.0, []
    for chunk in np.array_split(order, groups):
        if chunk.size == 0:
            continue
        n_g, o_g, e_g = chunk.size, float(y[chunk].sum()), float(p[chunk].sum())
        pbar = e_g / n_g
        if 0 < pbar < 1:
            stat += (o_g - e_g) ** 2 / (n_g * pbar * (1 - pbar))
        rows.append((int(n_g), pbar, o_g / n_g))
    return stat, float(chi2.sf(stat, groups - 2)), tuple(rows)


def calibration_check(*, prob: np.ndarray, y: np.ndarray) -> CalibrationCheck:
    """Check a model's predicted probabilities against the node's observed 0/1 outcomes.

    Args:
        prob: predicted probabilities on the node's rows.
        y: observed events (0/1), same rows.

    Returns:
        The :class:`CalibrationCheck`; ``passed`` False with ``reasons`` naming the figures.
    """
    prob = np.clip(np.asarray(prob, dtype=float).reshape(-1), 0.0, 1.0)
    y = np.asarray(y, dtype=float).reshape(-1)
    n, events, expected = int(y.size), int(y.sum()), float(prob.sum())
    reasons = []
    oe = events / expected if expected > 0 else float("inf")
    se_log = math.sqrt(float(np.sum(prob * (1 - prob)))) / expected if expected > 0 else float("inf")
    half = max(math.log(BAND[1]), Z_99 * se_log)
    oe_allowed = (math.exp(-half), math.exp(half))
    slope, slope_se = _recalibration_slope(_logit(prob), y) if n else (float("nan"), float("inf"))
    s_lo = min(BAND[0], 1 - Z_99 * slope_se)
    s_hi = max(BAND[1], 1 + Z_99 * slope_se)
    hl, hl_p, deciles = _hosmer_lemeshow(prob, y) if n else (float("nan"), float("nan"), ())
    if events < MIN_EVENTS:
        reasons.append(
            f"only {events} events on this node: at least {MIN_EVENTS} are needed to check calibration"
        )
    else:
        if not oe_allowed[0] <= oe <= oe_allowed[1]:
            reasons.append(
                f"calibration-in-the-large: observed/expected events = {oe:.3f} "
                f"({events} observed, {expected:.1f} expected) is outside "
                f"{oe_allowed[0]:.3f}–{oe_allowed[1]:.3f}"
            )
        if not (math.isfinite(slope) and s_lo <= slope <= s_hi):
            reasons.append(
                f"calibration slope = {slope:.3f} is outside {s_lo:.3f}–{s_hi:.3f} "
                "(below: predictions too extreme; above: too timid)"
            )
    return CalibrationCheck(
        n=n,
        events=events,
        expected=expected,
        oe_ratio=oe,
        oe_allowed=oe_allowed,
        slope=slope,
        slope_se=slope_se,
        slope_allowed=(s_lo, s_hi),
        hl_statistic=hl,
        hl_p_value=hl_p,
        deciles=deciles,
        passed=not reasons,
        reasons=tuple(reasons),
    )
