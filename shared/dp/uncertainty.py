r"""The privacy noise's share of an estimate's uncertainty.

The coordinator knows every noise scale (the plan is public), so the CI can carry the noise
instead of ignoring it. Two ways, which agree in the linear regime (tested):

* :func:`att_privacy_se` — analytic (delta method) for the stratified ATT of
  :mod:`shared.psm.estimator`. Over the used strata, with :math:`N = \sum n_{bT}`,
  :math:`w_b = n_{bT}/N` and :math:`\widehat{ATT} = N^{-1}\sum_b (S_{bT} - n_{bT} S_{bC}/n_{bC})`,
  independent noise of SD :math:`\sigma_S` on every sum and :math:`\sigma_n` on every count
  gives

  .. math::
      \mathrm{Var}_{priv} = \sigma_S^2 \Big(\frac{|\mathcal B|}{N^2}
          + \sum_b \frac{w_b^2}{n_{bC}^2}\Big)
        + \sigma_n^2 \sum_b \Big(\frac{w_b^2 \bar y_{bC}^2}{n_{bC}^2}
          + \frac{(\bar y_{bC} + \widehat{ATT})^2}{N^2}\Big),

  with each :math:`1/n_{bC}^2` taken to second order, :math:`E[1/\hat n^2] \approx
  (1 + 3\sigma_n^2/n^2)/n^2`: a control cell of a few σ makes the ratio
  :math:`S_{bC}/\hat n_{bC}` visibly non-linear (first order alone was 13 % narrow with 200
  controls at σ = 40).

  With outcomes released centred on :math:`c` (:mod:`shared.dp.forms`) the noise sits on
  :math:`S - c\,n` and the count; the table's :math:`S` was mapped back with the noisy count,
  so the formula holds for the centred sums, with :math:`\bar y_{bC} - c` in the count terms
  (``center``).

* :func:`redraw_se` — parametric bootstrap: add fresh noise of the known SDs to the released
  arrays, re-estimate, take the SD over draws. Works for any estimator (e.g. with clamping).

:func:`combine_se` adds sampling and privacy SEs in quadrature and reports the privacy share of
the CI width, :math:`1 - \mathrm{SE}_{samp}/\mathrm{SE}`: the fraction of the width that would
disappear without DP noise.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import numpy as np

__all__ = ["UsedCells", "att_privacy_se", "combine_se", "redraw_se", "used_cells"]


class UsedCells(NamedTuple):
    """The used strata as both delta-method SEs read them (this module's and
    :func:`shared.dp.wsum.wsum_privacy_se`)."""

    n_t: np.ndarray  #: (B,) noisy treated counts, clamped at 0
    N: float  #: their total
    w: np.ndarray  #: (B,) stratum weights n_bT / N
    ybar_c: np.ndarray  #: (B, O) control means on [0, 1], clipped
    inv_c2: np.ndarray  #: (B,) E[1/n̂_bC²] to second order in the count noise
    var_n: np.ndarray  #: (B,) noise variance of each used stratum's counts


def used_cells(*, count, sum_y, used, sigma_count, clip: bool = True) -> UsedCells | None:
    """The used strata's counts, weights and control means; None when there is nothing to
    estimate (no treated, or a used stratum without controls): the SE is then infinite.
    ``sigma_count``: the SD of one summed count, or ``(S,)`` per stratum (merged strata,
    :mod:`shared.dp.weightbound`). ``clip``: the means clipped to [0, 1] (an outcome's); off
    for a DR residual y − zᵀγ̂, which may lie anywhere (:mod:`shared.dp.drwsum`)."""
    n = np.clip(np.asarray(count, dtype=float), 0.0, None)[used]
    var_n = np.broadcast_to(np.asarray(sigma_count, dtype=float) ** 2, (np.shape(count)[0],))[used]
    s = np.asarray(sum_y, dtype=float)[used]
    n_t, n_c = n[:, 1], n[:, 0]
    N = float(n_t.sum())
    if not (N > 0 and np.all(n_c > 0)):
        return None
    return UsedCells(
        n_t=n_t,
        N=N,
        w=n_t / N,
        ybar_c=np.clip(s[:, 0, :] / n_c[:, None], 0.0, 1.0) if clip else s[:, 0, :] / n_c[:, None],
        inv_c2=(1.0 + 3.0 * var_n / n_c**2) / n_c**2,
        var_n=var_n,
    )


def att_privacy_se(
    *,
    count: np.ndarray,
    sum_y: np.ndarray,
    used: np.ndarray,
    sigma_count,
    sigma_sum,
    center: float = 0.0,
) -> np.ndarray:
    r"""Analytic SD of the stratified ATT due to DP noise, per outcome, on the [0, 1] scale.

    Args:
        count: ``(S, 2)`` noisy summed counts, clamped at 0 (control = column 0).
        sum_y: ``(S, 2, O)`` noisy summed Σy.
        used: ``(S,)`` strata that enter the estimate (both arms present).
        sigma_count: total noise SD of one summed count (or ``(S,)`` per stratum: merged
            strata, :mod:`shared.dp.weightbound`).
        sigma_sum: total noise SD of one summed (centred) Σy entry (or ``(S,)``).
        center: the centre the outcome sums were released at (their noise is on Σ(y − c));
            ``sum_y`` is the mapped-back Σy either way.

    Returns:
        ``(O,)`` privacy SEs; multiply by ``cap - lo`` for original units.
    """
    cells = used_cells(count=count, sum_y=sum_y, used=used, sigma_count=sigma_count)
    if cells is None:
        return np.full(np.shape(sum_y)[-1], np.inf)
    s = np.asarray(sum_y, dtype=float)[used]
    N, w, inv_c2 = cells.N, cells.w, cells.inv_c2
    ybar_t = np.clip(s[:, 1, :] / np.maximum(cells.n_t, 1e-12)[:, None], 0.0, 1.0)
    att = (w[:, None] * (ybar_t - cells.ybar_c)).sum(axis=0)
    ybar_c = cells.ybar_c - center
    var_s = np.broadcast_to(np.asarray(sigma_sum, dtype=float) ** 2, (np.shape(count)[0],))[used]
    var_sum = np.sum(var_s * (1.0 / N**2 + w**2 * inv_c2))
    var_n = cells.var_n[:, None]
    var_cnt = (
        np.sum(var_n * (w**2 * inv_c2)[:, None] * ybar_c**2, axis=0)
        + np.sum(var_n * (ybar_c + att[None, :]) ** 2, axis=0) / N**2
    )
    return np.sqrt(var_sum + var_cnt)


def redraw_se(
    *,
    arrays: Mapping[str, np.ndarray],
    sigma: Mapping[str, float],
    estimate: Callable[[dict[str, np.ndarray]], np.ndarray],
    n_draws: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """SD of ``estimate`` over fresh noise of the known SDs added to the released arrays.

    Args:
        arrays: the released (noisy) arrays the estimate reads.
        sigma: total noise SD per array name (arrays not listed are kept as they are).
        estimate: arrays → vector of estimates.
        n_draws: number of re-draws (≥ 2).
        rng: any generator (this noise is never released).

    Returns:
        The per-component SD over draws (ddof = 1).
    """
    if n_draws < 2:
        raise ValueError(f"n_draws must be at least 2, got {n_draws!r}")
    draws = []
    for _ in range(n_draws):
        noisy = {
            k: (np.asarray(v, dtype=float) + rng.normal(0.0, sigma[k], size=np.shape(v)) if k in sigma else v)
            for k, v in arrays.items()
        }
        draws.append(np.asarray(estimate(noisy), dtype=float))
    return np.std(np.stack(draws), axis=0, ddof=1)


def combine_se(*, se_sampling, se_privacy) -> tuple[np.ndarray, np.ndarray]:
    r"""Total SE :math:`\sqrt{se_s^2 + se_p^2}` and the privacy share of the CI width
    :math:`1 - se_s/se` (0 when se = 0)."""
    se_s = np.asarray(se_sampling, dtype=float)
    se = np.hypot(se_s, np.asarray(se_privacy, dtype=float))
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(se > 0, 1.0 - se_s / se, 0.0)
    return se, share
