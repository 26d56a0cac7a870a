r"""The Gaussian mechanism: noise, noisy releases and a positive-definite projection.

A release adds :math:`\mathcal N(0, \sigma^2)` independently to every entry of every array,
with :math:`\sigma = \mu \Delta_2` (noise multiplier :math:`\mu`, L2 sensitivity
:math:`\Delta_2` from :mod:`shared.dp.sensitivity`). Its privacy is accounted in
:mod:`shared.dp.accounting`; post-processing (:func:`project_psd`, clamping noisy counts) costs
nothing more.

>>> import numpy as np
>>> out = release(arrays={"count": np.array([10.0, 20.0])}, sigma=1.0,
...               rng=np.random.default_rng(0))
>>> out["count"].shape
(2,)

Notes:
    The node draws noise only from :func:`secure_rng`, seeded with 256 bits from the operating
    system's CSPRNG; the coordinator cannot choose or learn the seed, so it cannot subtract the
    noise. Tests inject a seeded ``Generator``. As in Opacus' ``secure_mode=False``, the
    floating-point sampler is not hardened against the Mironov (2012) least-significant-bit
    attack; the released statistics are sums, not single values, which limits that attack's
    reach, but a hardened discrete Gaussian would close it.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from shared.errors import PrivacyError

__all__ = ["gaussian_noise", "project_psd", "release", "secure_rng"]


def secure_rng() -> np.random.Generator:
    """A PCG64 generator seeded with 256 bits from ``os.urandom`` (node side only).

    Returns:
        A fresh ``numpy.random.Generator`` whose seed nobody outside this process knows.
    """
    return np.random.Generator(np.random.PCG64(int.from_bytes(os.urandom(32), "big")))


def _check_sigma(sigma: float) -> float:
    sigma = float(sigma)
    if not (np.isfinite(sigma) and sigma > 0):
        raise PrivacyError(f"noise scale sigma must be a positive finite number, got {sigma!r}")
    return sigma


def gaussian_noise(*, shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    r"""An array of i.i.d. :math:`\mathcal N(0, \sigma^2)` draws.

    Args:
        shape: output shape.
        sigma: standard deviation, > 0.
        rng: the generator (:func:`secure_rng` on a node).

    Raises:
        PrivacyError: ``sigma`` is not positive and finite (a zero-noise "DP" release is refused).
    """
    return rng.normal(0.0, _check_sigma(sigma), size=shape)


def release(
    *, arrays: Mapping[str, np.ndarray], sigma: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    r"""The Gaussian mechanism over a group of arrays released together.

    All arrays share one :math:`\sigma`: their joint L2 sensitivity (over the concatenation)
    must be the :math:`\Delta_2` that :math:`\sigma` was calibrated for.

    Args:
        arrays: name → array; every entry receives independent noise. Inputs are not changed.
        sigma: noise standard deviation.
        rng: the generator.

    Returns:
        name → noisy float array (same shapes).

    Raises:
        PrivacyError: ``sigma`` is not positive, or an array holds a non-finite value.
    """
    sigma = _check_sigma(sigma)
    out: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        a = np.asarray(value, dtype=float)
        if not np.all(np.isfinite(a)):
            raise PrivacyError(f"release {name!r} holds non-finite values: refusing to add noise")
        out[name] = a + gaussian_noise(shape=a.shape, sigma=sigma, rng=rng)
    return out


def project_psd(H: np.ndarray, *, floor: float) -> np.ndarray:
    r"""Nearest symmetric matrix with every eigenvalue at least ``floor``.

    Noise makes a released Hessian asymmetric and possibly indefinite; Newton's step needs it
    symmetric positive definite. With :math:`S = (H + H^\top)/2 = Q\Lambda Q^\top`, returns
    :math:`Q \max(\Lambda, \text{floor}) Q^\top` (post-processing: no privacy cost).

    Args:
        H: square matrix.
        floor: minimum eigenvalue, > 0.

    Raises:
        ValueError: ``H`` is not square or finite, or ``floor`` is not positive.
    """
    H = np.asarray(H, dtype=float)
    if H.ndim != 2 or H.shape[0] != H.shape[1] or not np.all(np.isfinite(H)):
        raise ValueError(f"project_psd needs a finite square matrix, got shape {H.shape}")
    if not floor > 0:
        raise ValueError(f"floor must be positive, got {floor!r}")
    vals, vecs = np.linalg.eigh((H + H.T) / 2.0)
    out = (vecs * np.maximum(vals, floor)) @ vecs.T
    return (out + out.T) / 2.0
