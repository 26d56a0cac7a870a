r"""Release forms: the linear re-parametrisation in which a node adds its noise.

Scaled covariates lie in [0, 1], so the row vector :math:`\tilde z = [1, z]` can have squared
norm up to :math:`1 + d`. Centred on the public midpoint :math:`c = 1/2`, every coordinate of
:math:`\tilde z_c = [1, z - c]` lies in [-1/2, 1/2] and :math:`\lVert\tilde z_c\rVert_2^2 \le
1 + d/4`: the same information with a sensitivity about four times smaller in the propensity
Hessian (:mod:`shared.dp.sensitivity`), hence about 2.3× less noise at the same privacy cost.
The centring is a fixed invertible linear map :math:`A` (:math:`\tilde z_c = A\tilde z`), so

* ``ps_fit``: the node releases :math:`g_c = A g`, :math:`H_c = A H A^\top`; the coordinator
  projects the summed :math:`H_c` onto the positive-definite cone *in this basis* (where the
  noise is isotropic) and maps back, :math:`g = A^{-1} g_c`, :math:`H = A^{-1} H_c A^{-\top}`.
  The Newton step :math:`H^{-1} g = A^\top H_c^{-1} g_c` is the same step in either basis.
* ``psm_balance``: the node releases :math:`\sum (z - c)` per cell and :math:`\sum (z - c)^2`
  per *arm* (summed over strata: the same sensitivity, since a row lands in one cell and one
  arm, but one noise draw per arm instead of one per stratum, so the SMD denominators — the arm
  variances — carry √S less noise); the coordinator recovers :math:`\sum z` and the arms'
  :math:`\sum z^2` with the released cell counts.
* ``psm_main`` / ``psm_sumsq``: the node releases :math:`\sum (y - c)` and
  :math:`\sum (y - c)^2` per cell: a row then moves each outcome sum by at most 1/2 (not 1) and
  each sum of squares by at most 1/4 (not 1), so :math:`\Delta_2` drops from
  :math:`\sqrt{1 + O}` to :math:`\sqrt{1 + O/4}` (2 → 1.32 for O = 3) and from
  :math:`\sqrt O` to :math:`\sqrt O / 4`. The coordinator maps back with the noisy counts
  (:func:`main_from_release`), which couples count and sum noise: a cell mean's error is
  :math:`(e_S - (\bar y - c)\,e_n)/n` instead of :math:`(e_S - \bar y\,e_n)/n`. For outcomes
  near 0 (claims, event rates, absence days on their [0, 1] scales) that costs
  :math:`(1 + 0.23)` against :math:`(1 + 0)` in variance, while σ² falls to 1.75/4 of what it
  was: the ATT's privacy SE is about 0.72× at the same ρ
  (:func:`shared.dp.uncertainty.att_privacy_se` takes ``center``).

* ``dr_slope`` (a doubly robust study): the controls' own copy of their cells (count, centred
  Σy and Σz per stratum) and their cross-products pooled over strata and centred,
  :math:`\sum (z - c)(z - c)^\top` as its upper triangle (each distinct entry once, as its
  sensitivity counts them) and :math:`\sum (z - c)(y - c)^\top`; the coordinator reads them
  as :func:`slope_from_release` gives them, centred (:func:`shared.psm.dr.estimate_dr` works
  on centred arrays: within-stratum cross-products do not change under a shift).

All maps are public and data-independent: post-processing, no privacy cost.

>>> import numpy as np
>>> g, H = np.array([1.0, 2.0]), np.array([[4.0, 1.0], [1.0, 3.0]])
>>> out = release_form("ps_fit", {"g": g, "H": H})
>>> back = ps_from_release(g=out["g"], H=out["H"])
>>> bool(np.allclose(back[0], g) and np.allclose(back[1], H))
True
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from shared.dp.sensitivity import RELEASE_KEYS
from shared.errors import PrivacyError
from shared.psm.balance import BalanceNoise

__all__ = [
    "CENTER",
    "balance_from_release",
    "balance_noise",
    "main_from_release",
    "ps_from_release",
    "release_arrays",
    "slope_from_release",
    "release_form",
]

#: The public centre of every scaled covariate and outcome (the midpoint of [0, 1]).
CENTER = 0.5


def _shift(p: int, offset: float) -> np.ndarray:
    r"""The map :math:`[1, z] \mapsto [1, z + \text{offset}]` for ``p = d + 1`` parameters:
    :math:`A` at ``-CENTER``, :math:`A^{-1}` at ``+CENTER``."""
    A = np.eye(p)
    A[1:, 0] = offset
    return A


def release_form(query: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays of ``query`` in the form the node adds noise to (others unchanged).

    Args:
        query: a release name of :data:`shared.dp.sensitivity.RELEASE_KEYS`.
        arrays: the exact answer (``ps_fit``: ``g``, ``H``; ``psm_balance``: ``count``,
            ``sum_z``, ``sumsq_z`` of one PSM table).
    """
    out = {k: np.asarray(v, dtype=float) for k, v in arrays.items()}
    if query == "ps_fit":
        A = _shift(out["g"].size, -CENTER)
        out["g"], out["H"] = A @ out["g"], A @ out["H"] @ A.T
    elif query == "psm_balance":
        n = out["count"][..., None]
        s, ss = out["sum_z"], out["sumsq_z"]
        out["sum_z"] = s - CENTER * n
        out["sumsq_z"] = _centred_squares(ss, s, n).sum(axis=0)  # (2, D) per arm
    elif query == "dr_slope":
        out.update(_slope_form(out))
    elif query in ("nc_main", "nc_sumsq"):  # the negative controls' sums, beside psm_main's counts
        n = out["count"][..., None]
        s = out["nc_sum_y"]
        out["nc_sum_y"] = s - CENTER * n
        if "nc_sumsq_y" in out:
            out["nc_sumsq_y"] = _centred_squares(out["nc_sumsq_y"], s, n)
    elif query in ("psm_main", "psm_sumsq"):
        n = out["count"][..., None]
        s = out["sum_y"]
        out["sum_y"] = s - CENTER * n
        if "sumsq_y" in out:
            out["sumsq_y"] = _centred_squares(out["sumsq_y"], s, n)
    return out


def _slope_form(a: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ``dr_slope`` arrays from a PSM answer with the controls' per-stratum ``zz_c``,
    ``zy_c`` (:func:`shared.psm.dr.slope_arrays`): every sum centred on :data:`CENTER`."""
    n = a["count"][:, 0]
    sy, sz = a["sum_y"][:, 0], a["sum_z"][:, 0]
    n_c, sz_c, sy_c = n.sum(), sz.sum(axis=0), sy.sum(axis=0)
    zz = a["zz_c"].sum(axis=0) - CENTER * (sz_c[:, None] + sz_c[None, :]) + CENTER**2 * n_c
    zy = a["zy_c"].sum(axis=0) - CENTER * (sz_c[:, None] + sy_c[None, :]) + CENTER**2 * n_c
    return {
        "slope_count": n,
        "slope_sum_y": sy - CENTER * n[:, None],
        "slope_sum_z": sz - CENTER * n[:, None],
        "zz_c": zz[np.triu_indices(zz.shape[0])],
        "zy_c": zy,
    }


def slope_from_release(*, slope_count, slope_sum_y, slope_sum_z, zz_c, zy_c) -> dict[str, np.ndarray]:
    """The summed ``dr_slope`` release as :func:`shared.psm.dr.estimate_dr` reads it, still
    centred: ``count``, ``sum_y``, ``sum_z`` of the control cells and the symmetric ``zz``
    rebuilt from its upper triangle, ``zy``."""
    sz = np.asarray(slope_sum_z, dtype=float)
    d = sz.shape[-1]
    zz = np.zeros((d, d))
    zz[np.triu_indices(d)] = np.asarray(zz_c, dtype=float).reshape(-1)
    zz = zz + np.triu(zz, 1).T
    return {
        "count": np.asarray(slope_count, dtype=float),
        "sum_y": np.asarray(slope_sum_y, dtype=float),
        "sum_z": sz,
        "zz": zz,
        "zy": np.asarray(zy_c, dtype=float),
    }


def _centred_squares(sumsq, sums, n):
    r""":math:`\sum (x - c)^2 = \sum x^2 - 2c \sum x + c^2 n`."""
    return sumsq - 2.0 * CENTER * sums + CENTER**2 * n


def _uncentred_squares(centred_sumsq, centred_sums, n):
    r""":math:`\sum x^2 = \sum (x - c)^2 + 2c \sum (x - c) + c^2 n` (inverse of the above)."""
    return centred_sumsq + 2.0 * CENTER * centred_sums + CENTER**2 * n


#: The exact arrays a release is formed from, where they are not the ones it releases.
_SOURCE_KEYS = {"dr_slope": ("count", "sum_y", "sum_z", "zz_c", "zy_c")}


def release_arrays(query: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Exactly the arrays ``query`` releases (:data:`RELEASE_KEYS`), in release form: what the
    node adds noise to. Everything else of the answer is withheld.

    Raises:
        PrivacyError: unknown release, or a named array is missing.
    """
    if query not in RELEASE_KEYS:
        raise PrivacyError(f"unknown DP release {query!r}; known: {', '.join(RELEASE_KEYS)}")
    missing = [k for k in _SOURCE_KEYS.get(query, RELEASE_KEYS[query]) if k not in arrays]
    if missing:
        raise PrivacyError(f"release {query!r} lacks array(s) {', '.join(missing)}")
    formed = release_form(query, arrays)
    return {k: formed[k] for k in RELEASE_KEYS[query]}


def ps_from_release(*, g, H) -> tuple[np.ndarray, np.ndarray]:
    """Centred (g, H) back in the basis of :math:`[1, z]` (what the fitter's β lives in)."""
    g = np.asarray(g, dtype=float).reshape(-1)
    A_inv = _shift(g.size, CENTER)
    return A_inv @ g, A_inv @ np.asarray(H, dtype=float) @ A_inv.T


def main_from_release(*, count, sum_y, sumsq_y) -> tuple[np.ndarray, np.ndarray]:
    r"""Centred outcome sums back to :math:`\sum y` and :math:`\sum y^2` per cell, with the
    (noisy) counts released beside them."""
    n = np.asarray(count, dtype=float)[..., None]
    sc = np.asarray(sum_y, dtype=float)
    return sc + CENTER * n, _uncentred_squares(np.asarray(sumsq_y, dtype=float), sc, n)


def balance_from_release(*, count, sum_z, sumsq_z) -> tuple[np.ndarray, np.ndarray]:
    r"""Centred balance sums back to :math:`\sum z` per cell ``(S, 2, D)`` and :math:`\sum z^2`
    per arm ``(2, D)``, with the (noisy) cell counts of the main release."""
    n = np.asarray(count, dtype=float)[..., None]
    sc, ssc = np.asarray(sum_z, dtype=float), np.asarray(sumsq_z, dtype=float)
    return sc + CENTER * n, _uncentred_squares(ssc, sc.sum(axis=0), n.sum(axis=0))


def balance_noise(*, sigma_balance: float, sigma_count: float = 0.0) -> BalanceNoise:
    """The balance release's noise for :func:`shared.psm.balance.balance_table`: σ on every
    centred cell sum and on every centred arm sum of squares, and the main release's σ on the
    cell counts the cell means divide by (it enters the SMDs' noise SD; for the variances it only
    enters through the row totals, a relative error well below the sums')."""
    return BalanceNoise(
        sum_z=float(sigma_balance),
        sumsq_z=float(sigma_balance),
        center=CENTER,
        sumsq_per_arm=True,
        count=float(sigma_count),
    )
