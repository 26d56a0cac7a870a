r"""Strata under DP: how many, where, and which cells count.

Noise in a stratum's released sums is :math:`\sigma_{tot}` per entry (σ√K over K nodes), so the
ATT's privacy noise grows like :math:`\sigma_{tot}\sqrt{S}/N_T` (docs/PRIVACY.md) while five
strata already remove about 90 % of the confounding bias of a score (Cochran 1968; Rosenbaum &
Rubin 1984). The rule, documented here and used by the workflow and the benchmark:

1. **Number of strata** :func:`dp_n_strata`, in units of the SD :math:`\sigma_{tot}` of a
   summed cell count's noise: as many strata as keep an average stratum at
   :math:`N_T/S \ge 10\,\sigma_{tot}` treated (count noise under 10 %), at most 20 (or the
   spec's explicit ``strata.n``), at least 1. Since the ATT is released as one weighted sum per
   outcome (:mod:`shared.dp.wsum`), a stratum no longer adds a noisy cell sum of its own: what
   grows with S is the largest weight n_bT/n_bC (the sum's sensitivity) and the count noise in
   each stratum's weight, which the same 10σ criterion bounds for every S. Before, while every
   cell's sum carried its own noise (∝ √S), strata beyond Cochran's 5 needed 40σ each. Coarse
   strata are what biased the DP estimate once the weighted sum had narrowed its CI: at 1k
   treated over five nodes (ε = 2, secure aggregation, 30 seeds) the CV-event bias was 0.0055
   at the 7 strata of the old rule, and equal-width strata at the *exact* β left 0.0048, 0.0027
   and 0.0009 with 7, 14 and 20 strata (the exact study's caliper strata 0.0020). Measured with
   this rule (100 seeds, same setting): CV-event coverage 92 % (86 % under the old rule), CI
   1.46× the exact width (1.27×); at 10k treated the rule already gave 20 strata.
2. **Where** :func:`dp_width_edges`: S strata of *equal width on the logit scale* over the
   range the treated occupy, read off the noisy treated histogram on a fine *public* grid
   (:func:`shared.psm.strata.score_grid` over the public score range); the outer edges are ±inf.
   Most of the public range is empty (it spans the corners of the unit cube), so bins are
   first thresholded at :math:`3\sigma_{tot}` — a bin below is treated as empty — and the range
   spans the bins holding the central 98 % of the remaining treated mass (a lone noise bin
   that passes the threshold far out carries too little mass to stretch it). Equal width, like the
   caliper strata of the non-private path, resolves the tails where treated and controls differ
   most; equal-count quantile strata (:func:`dp_quantile_edges`, kept for comparison) lump the
   tails together and left about twice the residual confounding in the benchmark (8 strata,
   exact β: bias 0.0062 vs 0.0034 in the CV event rate, 267 vs 125 in claims cost).
   Measured at 1k treated over five nodes (ε = 1, SecAgg+, 200 seeds,
   ``bench/bench_dp_strata.py``): ending the outer strata where the treated's noisy histogram
   ends, or doubling the strata, moved the CV event's bias by under 0.1 of its 0.8 SE; that
   bias is the propensity fit's (its Hessian floor stalls the Newton rounds, docs/PRIVACY.md).
3. **Which cells** :func:`dp_min_cell`: a stratum enters the estimate only when both arms'
   noisy counts reach :math:`\max(1, 2\sigma_{tot})`, so a cell made of noise alone (true count
   0) is kept out with probability 97.7 %.

All three are post-processing of released values: no privacy cost.
"""

from __future__ import annotations

import math

import numpy as np

from shared.errors import DataError, EstimationError
from shared.psm.strata import quantile_edges

__all__ = [
    "CELL_NOISE_RATIO",
    "DP_GRID_BINS",
    "DP_MAX_STRATA",
    "FEW_STRATA",
    "MANY_NOISE_RATIO",
    "dp_min_cell",
    "dp_n_strata",
    "dp_quantile_edges",
    "dp_width_edges",
]

DP_MAX_STRATA = 20
CELL_NOISE_RATIO = 10.0  # up to FEW_STRATA strata
MANY_NOISE_RATIO = 10.0  # beyond FEW_STRATA
FEW_STRATA = 5
DP_GRID_BINS = 100
_THRESHOLD_SD = 2.0  # min cell: a noise-only cell passes with probability 2.3 %
_HIST_THRESHOLD_SD = 3.0  # histogram bins: 0.13 % of empty bins pass
_RANGE_TAIL = 0.01  # the strata span the central 98 % of the kept treated mass


def dp_n_strata(
    *, n_treated: float, count_sigma: float, requested: int | None = None, max_strata: int = DP_MAX_STRATA
) -> int:
    r"""Number of quantile strata under DP (rule 1 of the module docstring).

    Args:
        n_treated: the (noisy) total treated count.
        count_sigma: SD of the noise on one summed cell count (:math:`\sigma_{tot}`).
        requested: an explicit upper bound (the spec's ``strata.n`` when its method is
            ``quantile``); None for the DP cap alone.
        max_strata: the DP cap (20).

    Raises:
        DataError: ``requested`` < 1 or ``count_sigma`` not positive.
    """
    requested = max_strata if requested is None else requested
    if requested < 1 or not count_sigma > 0:
        raise DataError(
            f"dp_n_strata needs requested >= 1 and count_sigma > 0, got {requested!r}, {count_sigma!r}"
        )
    n_t = max(float(n_treated), 0.0)
    by_noise = max(
        min(FEW_STRATA, math.floor(n_t / (CELL_NOISE_RATIO * count_sigma))),
        math.floor(n_t / (MANY_NOISE_RATIO * count_sigma)),
    )
    return int(max(1, min(requested, max_strata, by_noise)))


def _occupied(counts: np.ndarray, noise_sd: float) -> np.ndarray:
    """Noisy counts thresholded at 3σ (or clamped at 0 if nothing passes): rule 2."""
    kept = np.clip(counts - _HIST_THRESHOLD_SD * float(noise_sd), 0.0, None)
    return kept if kept.sum() > 0 else np.clip(counts, 0.0, None)


def dp_width_edges(*, grid, treated_counts, noise_sd: float, n_strata: int) -> np.ndarray:
    r"""``n_strata`` equal-width strata over the occupied treated range (rule 2).

    Args:
        grid: the public grid of the histogram (``G + 1`` edges, outer ±inf).
        treated_counts: ``(G,)`` noisy treated counts summed over nodes.
        noise_sd: SD of the noise in one summed bin.
        n_strata: number of strata (≥ 1).

    Returns:
        ``n_strata + 1`` strictly increasing edges with outer ±inf: the occupied range (from
        the lower edge of the bin holding the 1 % point of the thresholded treated mass to the
        upper edge of the bin holding the 99 % point) cut into equal widths, the end strata
        extended to ±inf.

    Raises:
        DataError: shapes disagree or ``n_strata < 1``.
        EstimationError: no treated in the histogram.
    """
    grid = np.asarray(grid, dtype=float)
    counts = np.asarray(treated_counts, dtype=float).reshape(-1)
    if counts.size != grid.size - 1 or n_strata < 1:
        raise DataError(
            f"{counts.size} histogram bins for a grid of {grid.size - 1} edges, n_strata {n_strata}"
        )
    kept = _occupied(counts, noise_sd)
    if not kept.sum() > 0:
        raise EstimationError("no treated in the score histogram: cannot place strata")
    finite = grid[1:-1]
    if finite.size == 0 or n_strata == 1:
        return np.array([-np.inf, np.inf])
    cum = np.cumsum(kept) / kept.sum()
    first = int(np.searchsorted(cum, _RANGE_TAIL, side="right"))  # bin holding the 1 % point
    last = int(np.searchsorted(cum, 1.0 - _RANGE_TAIL, side="left"))  # ... the 99 % point
    lo = finite[max(first - 1, 0)]  # its lower edge
    hi = finite[min(last, finite.size - 1)]  # upper edge of the 99 % bin
    if not hi > lo:
        return np.array([-np.inf, np.inf])
    inner = np.linspace(lo, hi, n_strata + 1)[1:-1]  # the end strata reach out to ±inf
    return np.concatenate(([-np.inf], inner, [np.inf]))


def dp_quantile_edges(*, grid, treated_counts, noise_sd: float, n_strata: int) -> np.ndarray:
    r"""Quantile strata edges from a noisy treated histogram (rule 2).

    Args:
        grid: the public grid the histogram was released on (``G + 1`` edges, outer ±inf).
        treated_counts: ``(G,)`` noisy treated counts summed over nodes.
        noise_sd: SD of the noise in one summed bin.
        n_strata: target number of strata.

    Returns:
        Strictly increasing edges (a subset of ``grid``, outer ±inf). If thresholding leaves
        nothing (tiny samples), the clamped histogram is used instead.

    Raises:
        DataError / EstimationError: as :func:`shared.psm.strata.quantile_edges`.
    """
    kept = _occupied(np.asarray(treated_counts, dtype=float).reshape(-1), noise_sd)
    return quantile_edges(grid=grid, treated_counts=kept, n_strata=n_strata)


def dp_min_cell(*, count_sigma: float) -> float:
    """Smallest noisy count of each arm for a stratum to enter the estimate (rule 3)."""
    return max(1.0, _THRESHOLD_SD * float(count_sigma))
