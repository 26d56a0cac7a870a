r"""Strata on the logit propensity score :math:`s = \beta_0 + z^\top\beta_{1:}`.

Edges are built only from public or already-released quantities, so asking nodes for a table
over them leaks nothing new:

* :func:`caliper_edges` — a grid of width ``caliper_sd`` × SD(s) (0.2 by default, the
  MatchIt/CohortMethod caliper) over the *public* score range :func:`score_range` (the range
  of s over the unit cube, known from β alone), narrowed to :data:`CALIPER_REACH` SDs either
  side of the mean score when the moments are given. The mean and SD come from the pooled
  covariate moments of the describe round (:func:`logit_mean`, :func:`logit_sd`), so no extra
  round is needed.
* :func:`quantile_edges` — ``n_strata`` strata of roughly equal treated count, read off an
  additive histogram of scores on a fine public grid (:func:`score_grid`,
  :func:`score_histogram`). Under DP the histogram is released with noise; negative noisy
  counts are clamped to zero before the cumulative sum, so any noisy histogram gives valid
  strictly increasing edges.

Strata are half-open, ``edges[b] <= s < edges[b + 1]``; the outer edges are ±inf so every
row lands in exactly one stratum.
"""

from __future__ import annotations

import numpy as np

from shared.errors import DataError, EstimationError
from shared.psm._checks import check_beta, check_t, check_z
from shared.psm.propensity import CovMoments

__all__ = [
    "caliper_edges",
    "CALIPER_REACH",
    "logit_mean",
    "logit_scores",
    "logit_sd",
    "quantile_edges",
    "score_grid",
    "score_histogram",
    "score_range",
    "stratum_index",
]

MAX_STRATA = 10_000
#: How many score SDs either side of the mean score the caliper grid reaches. The unit cube's
#: range is only an outer bound: correlated covariates with large slopes of opposite sign (a
#: total cholesterol that is nearly LDL + HDL + TG/5, as the Friedewald formula makes it) put
#: its corners hundreds of logits apart while every row lies within a few units, and the grid
#: then needed more than MAX_STRATA strata (8 % of exact studies over 20 small companies under
#: weak confounding stopped there). Beyond the reach rows fall in the two open-ended outer
#: strata; by Chebyshev's inequality they are at most 1/10² = 1 % of the rows whatever the
#: score's distribution, and the grid has at most 2 · 10 / caliper_sd strata (100 at 0.2).
CALIPER_REACH = 10.0


def logit_scores(*, z, beta) -> np.ndarray:
    """Logit propensity scores of rows ``z`` (scaled to [0, 1]) under ``beta``."""
    z = check_z(z)
    beta = check_beta(beta, p=z.shape[1] + 1)
    return beta[0] + z @ beta[1:]


def logit_mean(*, moments: CovMoments, beta) -> float:
    r"""Mean of the logit score over all rows (both arms), from pooled moments:
    :math:`\beta_0 + \beta_{1:}^\top \bar z`."""
    beta = check_beta(beta, p=moments.d + 1)
    mean, _ = moments.pooled_mean_cov()
    return float(beta[0] + beta[1:] @ mean)


def logit_sd(*, moments: CovMoments, beta) -> float:
    r"""SD of the logit score over all rows (both arms), from pooled moments:
    :math:`\sqrt{\beta_{1:}^\top \mathrm{Cov}(z)\, \beta_{1:}}` with the n − 1 covariance.

    Raises:
        EstimationError: the variance is not positive (every score equal, or noisy moments).
    """
    beta = check_beta(beta, p=moments.d + 1)
    _, cov = moments.pooled_mean_cov()
    var = float(beta[1:] @ cov @ beta[1:])
    if not var > 0:
        raise EstimationError(f"the logit score has variance {var:.3g}: cannot size caliper strata")
    return float(np.sqrt(var))


def score_range(*, beta) -> tuple[float, float]:
    """Public range of the logit score over z in [0, 1]^d:
    ``(β0 + Σ min(βj, 0), β0 + Σ max(βj, 0))``."""
    beta = np.asarray(beta, dtype=float)
    return (float(beta[0] + np.minimum(beta[1:], 0).sum()), float(beta[0] + np.maximum(beta[1:], 0).sum()))


def caliper_edges(*, beta, sd: float, caliper_sd: float = 0.2, center: float | None = None) -> np.ndarray:
    """Edges of strata ``caliper_sd * sd`` wide tiling the public score range, outer edges ±inf.

    The grid starts at the public lower end of the range, so it depends only on β and sd.
    Given ``center`` (the mean score, :func:`logit_mean`), only the grid's strata that reach
    within :data:`CALIPER_REACH` SDs of it are kept, the rest merge into the open outer
    strata: the kept edges are the cube grid's own, so a study whose rows all lie within the
    reach gets the same strata as without it.

    Raises:
        EstimationError: non-positive width, or more than ``MAX_STRATA`` strata.
    """
    width = float(caliper_sd) * float(sd)
    if not (np.isfinite(width) and width > 0):
        raise EstimationError(f"caliper width {width!r} must be positive")
    lo, hi = score_range(beta=beta)
    if center is not None:  # whole strata of the cube's grid, so the edges within reach stay
        reach = CALIPER_REACH * float(sd)
        skip = max(np.floor((float(center) - reach - lo) / width), 0.0)
        hi = min(hi, lo + np.ceil((float(center) + reach - lo) / width) * width)
        lo = lo + skip * width
    k = int(np.ceil((hi - lo) / width - 1e-9)) if hi > lo else 1  # no sliver stratum at hi
    if k > MAX_STRATA:
        raise EstimationError(
            f"{k} caliper strata exceed {MAX_STRATA}: score range [{lo:.3g}, {hi:.3g}] vs width {width:.3g}"
        )
    inner = lo + width * np.arange(1, max(k, 1))
    return np.concatenate(([-np.inf], inner, [np.inf]))


def score_grid(*, beta, n_bins: int = 200) -> np.ndarray:
    """A fine public grid of ``n_bins`` equal bins over :func:`score_range`, outer edges ±inf.

    A range narrower than float resolution (slopes of 1e-16) gives fewer, distinct edges, so
    the grid is always strictly increasing.
    """
    if n_bins < 1:
        raise DataError("score grid needs at least one bin")
    lo, hi = score_range(beta=beta)
    if not hi > lo:
        return np.array([-np.inf, np.inf])
    return np.concatenate(([-np.inf], np.unique(np.linspace(lo, hi, n_bins + 1)[1:-1]), [np.inf]))


def stratum_index(scores: np.ndarray, edges) -> np.ndarray:
    """Stratum of each score: ``b`` with ``edges[b] <= s < edges[b + 1]``.

    Raises:
        DataError: edges not strictly increasing, or they do not cover every score.
    """
    edges = np.asarray(edges, dtype=float)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.isnan(edges)) or np.any(np.diff(edges) <= 0):
        raise DataError("stratum edges must be a strictly increasing vector of >= 2 values", field="edges")
    b = np.searchsorted(edges, scores, side="right") - 1
    outside = (b < 0) | (b >= edges.size - 1)
    if outside.any():
        r = int(np.flatnonzero(outside)[0])
        raise DataError(
            f"row {r}: its score lies outside the stratum edges", row=r, field="edges"
        )  # no value
    return b


def score_histogram(*, z, t, beta, grid) -> np.ndarray:
    """A node's additive ``(G, 2)`` histogram of scores per arm on a public grid (column 0 =
    controls, 1 = treated), the input of :func:`quantile_edges`."""
    z = check_z(z)
    t = check_t(t, n=z.shape[0])
    grid = np.asarray(grid, dtype=float)
    b = stratum_index(logit_scores(z=z, beta=beta), grid)
    cells = np.bincount(2 * b + t.astype(np.int64), minlength=2 * (grid.size - 1))
    return cells.reshape(-1, 2).astype(float)


def quantile_edges(*, grid, treated_counts, n_strata: int) -> np.ndarray:
    """Edges of about ``n_strata`` strata with equal treated counts, chosen among grid edges.

    Args:
        grid: the public fine grid (``G + 1`` edges, outer ±inf) the histogram was built on.
        treated_counts: ``(G,)`` treated count per grid bin, summed over nodes (may be noisy;
            negatives are clamped to 0).
        n_strata: target number of strata; fewer result when quantiles fall in one bin.

    Returns:
        Strictly increasing edges, a subset of ``grid`` including both outer edges.

    Raises:
        DataError: shapes disagree or ``n_strata < 1``.
        EstimationError: no treated in the histogram.
    """
    grid = np.asarray(grid, dtype=float)
    counts = np.clip(np.asarray(treated_counts, dtype=float).reshape(-1), 0.0, None)
    if counts.size != grid.size - 1:
        raise DataError(f"{counts.size} histogram bins for a grid of {grid.size - 1}")
    if n_strata < 1:
        raise DataError("n_strata must be at least 1")
    total = counts.sum()
    if not total > 0:
        raise EstimationError("no treated in the score histogram: cannot place quantile strata")
    cum = np.cumsum(counts) / total
    targets = np.arange(1, n_strata) / n_strata
    # first bin at which the cumulative treated share reaches each target; cut after it
    cut_bins = np.unique(np.searchsorted(cum, targets, side="left"))
    cut_bins = cut_bins[cut_bins < counts.size - 1]
    inner = grid[cut_bins + 1]
    return np.concatenate(([grid[0]], inner, [grid[-1]]))
