r"""Strata under DP: how many, where, and which cells count.

Noise in a stratum's released sums is :math:`\sigma_{tot}` per entry (σ√K over K nodes), so the
ATT's privacy noise grows like :math:`\sigma_{tot}\sqrt{S}/N_T` (DESIGN.md §6) while five
strata already remove about 90 % of the confounding bias of a score (Cochran 1968; Rosenbaum &
Rubin 1984). The rule, documented here and used by the workflow and the benchmark:

1. **Number of strata** :func:`dp_n_strata`: the largest S ≤ min(requested, 10) for which an
   equal-treated-count stratum holds at least ``CELL_NOISE_RATIO`` = 10 times the SD of its
   count noise, :math:`N_T / S \ge 10\,\sigma_{tot}` — so count noise stays below 10 % of any
   treated cell — and at least 1. More strata cost privacy noise (∝ √S) but remove more
   confounding; the benchmark showed that the stratification bias of 5 strata alone exceeds
   the SE once noise is small (10k treated, ε ≥ 4), so S grows with the signal-to-noise ratio
   up to the spec's ``strata.n`` (8 by default) rather than stopping at Cochran's 5.
2. **Where** :func:`dp_quantile_edges`: quantile strata of equal treated count read off the
   noisy treated histogram on a fine *public* grid (:func:`shared.psm.strata.score_grid` over
   the public score range). Most of that range is empty (it spans the corners of the unit cube),
   and clamping noise in empty bins at 0 would pile phantom treated into the tails; so bins are
   first thresholded at :math:`2\sigma_{tot}` (a bin below is treated as empty, a bin above
   loses :math:`2\sigma_{tot}`), then cut by :func:`shared.psm.strata.quantile_edges`.
3. **Which cells** :func:`dp_min_cell`: a stratum enters the estimate only when both arms'
   noisy counts reach :math:`\max(1, 2\sigma_{tot})`, so a cell made of noise alone (true count
   0) is kept out with probability 97.7 %.

All three are post-processing of released values: no privacy cost.
"""

from __future__ import annotations

import math

import numpy as np

from shared.errors import DataError
from shared.psm.strata import quantile_edges

__all__ = ["CELL_NOISE_RATIO", "DP_GRID_BINS", "DP_MAX_STRATA", "dp_min_cell", "dp_n_strata",
           "dp_quantile_edges"]

DP_MAX_STRATA = 10
CELL_NOISE_RATIO = 10.0
DP_GRID_BINS = 100
_THRESHOLD_SD = 2.0


def dp_n_strata(*, n_treated: float, count_sigma: float, requested: int,
                max_strata: int = DP_MAX_STRATA) -> int:
    r"""Number of quantile strata under DP (rule 1 of the module docstring).

    Args:
        n_treated: the (noisy) total treated count.
        count_sigma: SD of the noise on one summed cell count (:math:`\sigma_{tot}`).
        requested: the spec's ``strata.n`` (an upper bound).
        max_strata: the DP cap (10).

    Raises:
        DataError: ``requested`` < 1 or ``count_sigma`` not positive.
    """
    if requested < 1 or not count_sigma > 0:
        raise DataError(f"dp_n_strata needs requested >= 1 and count_sigma > 0, "
                        f"got {requested!r}, {count_sigma!r}")
    by_noise = math.floor(max(n_treated, 0.0) / (CELL_NOISE_RATIO * count_sigma))
    return int(max(1, min(requested, max_strata, by_noise)))


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
    counts = np.asarray(treated_counts, dtype=float).reshape(-1)
    kept = np.clip(counts - _THRESHOLD_SD * float(noise_sd), 0.0, None)
    if not kept.sum() > 0:
        kept = np.clip(counts, 0.0, None)
    return quantile_edges(grid=grid, treated_counts=kept, n_strata=n_strata)


def dp_min_cell(*, count_sigma: float) -> float:
    """Smallest noisy count of each arm for a stratum to enter the estimate (rule 3)."""
    return max(1.0, _THRESHOLD_SD * float(count_sigma))
