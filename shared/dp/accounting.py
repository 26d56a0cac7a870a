r"""Privacy accounting of Gaussian releases with Opacus' maintained accountants.

Every release is one Gaussian mechanism without subsampling (``sample_rate=1``) and noise
multiplier :math:`\mu = \sigma / \Delta_2`. Composition over all releases of a study, and
across studies on the same dataset, is done by the accountant itself: nothing is composed by
hand here.

* ``"rdp"`` (default): :class:`opacus.accountants.RDPAccountant` — Rényi DP (Mironov 2017),
  converted to :math:`(\varepsilon, \delta)` by Opacus' improved conversion (Balle et al.
  2020). For unsubsampled Gaussians the RDP curve :math:`\alpha / (2\mu^2)` is exact, so the
  only slack is the conversion. Fast (milliseconds), deterministic.
* ``"prv"``: :class:`opacus.accountants.PRVAccountant` — numerical composition of privacy-loss
  random variables (Gopi et al. 2021), ≈5 % tighter, but seconds per call over long
  heterogeneous histories; returns the upper bound of its error interval.

The order grid is extended beyond Opacus' default (which stops at 63) so small budgets
(ε < 1 at δ = 1e-6 wants orders near 50–100) are not over-reported.

The RDP path calls Opacus' own analysis module (``opacus/accountants/analysis/rdp.py``, the
``compute_rdp`` and ``get_privacy_spent`` that :class:`~opacus.accountants.RDPAccountant` calls),
loaded by file so that ``opacus/__init__`` — which imports torch, about 4 s of CPU — is not run:
every Flower message starts a fresh node process that charges its ledger through this module.

>>> round(epsilon_spent(noise_multipliers=[1.0] * 10, delta=1e-5), 2)
19.05
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import warnings
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np

__all__ = ["ACCOUNTANTS", "Accountant", "ORDERS", "epsilon_of_history", "epsilon_spent", "make_accountant"]

Accountant = Literal["rdp", "prv"]
ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")

#: RDP orders: Opacus' default grid extended to 1024.
ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)]
    + list(range(12, 64))
    + list(range(64, 128, 4))
    + list(range(128, 257, 16))
    + [320, 384, 512, 768, 1024]
)


def make_accountant(name: str = "rdp"):
    """A fresh Opacus accountant by name (``"rdp"`` or ``"prv"``).

    Raises:
        ValueError: unknown name.
    """
    from opacus.accountants import PRVAccountant, RDPAccountant  # torch import: keep it lazy

    if name == "rdp":
        return RDPAccountant()
    if name == "prv":
        return PRVAccountant()
    raise ValueError(f"unknown accountant {name!r}; known: {', '.join(ACCOUNTANTS)}")


@functools.lru_cache(maxsize=1)
def _rdp_analysis():
    """Opacus' RDP analysis module (numpy and scipy only), without importing torch.

    Returns the already imported module when Opacus is loaded (e.g. in DP-SGD training).
    """
    name = "opacus.accountants.analysis.rdp"
    if name in sys.modules:
        return sys.modules[name]
    opacus = importlib.util.find_spec("opacus")
    if opacus is None or not opacus.submodule_search_locations:
        raise ImportError("Opacus is not installed")
    root = Path(opacus.submodule_search_locations[0])
    spec = importlib.util.spec_from_file_location(
        "_rehealth_opacus_rdp", root / "accountants" / "analysis" / "rdp.py"
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"Opacus' RDP analysis module is missing under {root}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rdp_epsilon(entries: Sequence[tuple[float, float, int]], delta: float) -> float:
    """What ``RDPAccountant.get_epsilon(delta, alphas=ORDERS)`` returns for this history."""
    analysis, orders = _rdp_analysis(), list(ORDERS)
    rdp = sum(analysis.compute_rdp(q=q, noise_multiplier=mu, steps=k, orders=orders) for mu, q, k in entries)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha" at large ε
        eps, _ = analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps)


def _check_multipliers(noise_multipliers: Iterable[float]) -> list[float]:
    mus = [float(m) for m in noise_multipliers]
    bad = [m for m in mus if not (np.isfinite(m) and m > 0)]
    if bad:
        raise ValueError(f"noise multipliers must be positive and finite, got {bad[0]!r}")
    return mus


def epsilon_spent(*, noise_multipliers: Sequence[float], delta: float, accountant: str = "rdp") -> float:
    r"""ε at ``delta`` of the composition of full-batch Gaussian releases with these noise
    multipliers :math:`\mu_i = \sigma_i / \Delta_i` (any order); 0.0 for none.

    Raises:
        ValueError: a multiplier is not positive, δ outside (0, 1), or an unknown accountant.
    """
    mus = _check_multipliers(noise_multipliers)
    return epsilon_of_history(history=[(mu, 1.0, 1) for mu in mus], delta=delta, accountant=accountant)


def epsilon_of_history(
    *, history: Sequence[tuple[float, float, int]], delta: float, accountant: str = "rdp"
) -> float:
    r"""ε at ``delta`` of a composition of (subsampled) Gaussian mechanisms, each entry
    ``(μ, q, steps)`` in Opacus' accountant-history form: ``steps`` applications with noise
    multiplier μ and Poisson sampling rate q (q = 1 for a full-batch release, as in the
    study's statistics; q < 1 for DP-SGD). Composed by the Opacus accountant itself.

    Raises:
        ValueError: a multiplier is not positive, q outside (0, 1], steps < 1, δ outside
            (0, 1), or an unknown accountant.
    """
    entries = [(float(mu), float(q), int(k)) for mu, q, k in history]
    _check_multipliers(mu for mu, _, _ in entries)
    if any(not 0 < q <= 1 or k < 1 for _, q, k in entries):
        raise ValueError("history entries need 0 < q <= 1 and steps >= 1")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
    if not entries:
        return 0.0
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {accountant!r}; known: {', '.join(ACCOUNTANTS)}")
    # merge equal (μ, q) entries so the accountant's history stays short
    merged: dict[tuple[float, float], int] = {}
    for mu, q, k in sorted(entries):
        merged[(mu, q)] = merged.get((mu, q), 0) + k
    history = [(mu, q, k) for (mu, q), k in merged.items()]
    if accountant == "rdp":
        return _rdp_epsilon(history, delta)
    acc = make_accountant(accountant)
    acc.history = history
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PRV's discretisation warns at sample_rate = 1
        return float(acc.get_epsilon(delta=delta))
