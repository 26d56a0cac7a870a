r"""Per stratum × arm means and variances from a (possibly noisy) :class:`PsmTable`.

Shared by the ATT estimator and the balance diagnostics, so both read the table the same way.

Noisy tables (DP): counts are clamped at 0; a cell enters an estimate only when its count is
at least ``min_cell``; means are clamped to [0, 1] (every entry was scaled to [0, 1]) and
variances to :math:`[0, \tfrac{n}{4(n-1)}]`, the range of a sample variance of values in [0, 1].
So noise can shift, but never invalidate, an estimate.
"""

from __future__ import annotations

import numpy as np


def clamped_counts(count: np.ndarray) -> np.ndarray:
    """Counts with negative (noisy) values set to 0."""
    return np.clip(count, 0.0, None)


def cell_means(sums: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``sums / n`` per cell (0 where ``n`` is 0), clamped to [0, 1]; ``sums`` is ``(S, 2, K)``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.where(n[..., None] > 0, sums / n[..., None], 0.0)
    return np.clip(m, 0.0, 1.0)


def cell_variances(sums: np.ndarray, sumsq: np.ndarray, n: np.ndarray, usable: np.ndarray) -> np.ndarray:
    r"""Within-cell sample variances :math:`(\sum y^2 - n\bar y^2)/(n-1)`, ``(S, 2, K)``.

    Cells with fewer than two rows have no variance of their own; they get the pooled
    within-cell variance of the same arm over the ``usable`` cells with n ≥ 2,
    :math:`\sum (n-1)s^2 / \sum (n-1)` (homoscedastic fallback, the usual choice for
    sparse strata), or the maximal 1/4 if no such cell exists (conservative).

    Args:
        usable: ``(S, 2)`` boolean, the cells that enter the estimate.
    """
    mean = cell_means(sums, n)
    nn = n[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        s2 = np.where(nn >= 2, (sumsq - nn * mean**2) / (nn - 1.0), 0.0)
        s2 = np.clip(s2, 0.0, np.where(nn >= 2, nn / (4.0 * (nn - 1.0)), 0.25))
    own = (n >= 2) & usable
    dof = np.where(own, n - 1.0, 0.0)[..., None]  # (S, 2, 1)
    total_dof = dof.sum(axis=0)  # (2, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = np.where(total_dof > 0, (dof * s2).sum(axis=0) / total_dof, 0.25)  # (2, K)
    return np.where(own[..., None], s2, pooled[None, :, :])
