"""Input checks shared by the PSM functions: every bad value becomes a typed error naming the
row and field, so no NaN ever flows silently into a statistic."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from shared.errors import DataError
from shared.features import Feature, check_bounds


def covariate_names(d: int, names: Sequence[str] | None) -> list[str]:
    """``names`` if given (checked against ``d``), else ``z[0] .. z[d-1]``."""
    if names is None:
        return [f"z[{j}]" for j in range(d)]
    if len(names) != d:
        raise DataError(f"{len(names)} covariate names for {d} columns")
    return list(names)


def check_z(z, *, names: Sequence[str] | None = None) -> np.ndarray:
    """``z`` as a float ``(n, d)`` array of scaled covariates in [0, 1].

    Raises:
        DataError: wrong shape, or a value is NaN/infinite.
        CovariateBoundsError: a value lies outside [0, 1] (the public bounds after scaling).
    """
    z = np.asarray(z, dtype=float)
    if z.ndim != 2:
        raise DataError(f"covariates must be an (n, d) array, got shape {z.shape}")
    names = covariate_names(z.shape[1], names)
    check_bounds(z, [Feature(name, 0.0, 1.0) for name in names])
    return z


def check_t(t, *, n: int, field: str = "treated") -> np.ndarray:
    """``t`` as a float ``(n,)`` array of 0/1.

    Raises:
        DataError: wrong length, or a value that is not exactly 0 or 1 (naming the row).
    """
    t = np.asarray(t, dtype=float)
    if t.ndim != 1 or t.shape[0] != n:
        raise DataError(f"{field} must be a vector of {n} values, got shape {t.shape}", field=field)
    bad = (t != 0.0) & (t != 1.0)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        # row and field, never the value (shared.features.check_bounds): a node logs this
        raise DataError(f"row {r}: {field} must be 0 or 1", row=r, field=field)
    return t


def check_unit_outcomes(y, *, n: int, names: Sequence[str] | None = None) -> np.ndarray:
    """``y`` as a float ``(n, O)`` array already clipped and rescaled to [0, 1].

    Raises:
        DataError: wrong shape, NaN, or a value outside [0, 1] (not yet scaled).
    """
    y = np.asarray(y, dtype=float)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != n:
        raise DataError(f"outcomes must be an ({n}, O) array, got shape {y.shape}")
    names = list(names) if names is not None else [f"y[{k}]" for k in range(y.shape[1])]
    bad = ~np.isfinite(y) | (y < 0.0) | (y > 1.0)
    if bad.any():
        r, c = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(
            f"row {r}: outcome {names[c]} is not a number in [0, 1] "
            "(clip and rescale with scale_outcomes first)",
            row=r,
            field=names[c],
        )
    return y


def check_beta(beta, *, p: int) -> np.ndarray:
    """``beta`` as a finite float ``(p,)`` vector (intercept first)."""
    beta = np.asarray(beta, dtype=float)
    if beta.shape != (p,) or not np.all(np.isfinite(beta)):
        raise DataError(
            f"beta must hold {p} finite values (intercept + {p - 1} covariates), got shape {beta.shape}",
            field="beta",
        )
    return beta


def require_keys(arrays: dict, keys: Sequence[str], what: str) -> None:
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DataError(f"{what}: missing array(s) {', '.join(missing)}", field=missing[0])
