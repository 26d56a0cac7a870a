r"""Privacy accounting of Gaussian releases: exact for the study's releases, Opacus otherwise.

Every study release is one Gaussian mechanism without subsampling (``sample_rate=1``) and noise
multiplier :math:`\mu = \sigma / \Delta_2`. Composition over all releases of a study, and
across studies on the same dataset, is done by the accountant: nothing is summed by hand.

* ``"gaussian"`` (default, :data:`DEFAULT_ACCOUNTANT`): exact. A full-batch Gaussian release
  with multiplier :math:`\mu_i` is exactly :math:`(1/\mu_i)`-GDP, and GDP composes exactly
  (Dong, Roth & Su 2019, Cor. 2.3): ``steps`` applications of each compose to
  :math:`\mu_{tot}`-GDP with :math:`\mu_{tot}^2 = \sum_i k_i / \mu_i^2`. Its privacy curve
  is the analytic Gaussian mechanism's (Balle & Wang 2018, Thm. 8),
  :math:`\delta(\varepsilon) = \Phi(-\varepsilon/\mu_{tot} + \mu_{tot}/2) -
  e^{\varepsilon}\Phi(-\varepsilon/\mu_{tot} - \mu_{tot}/2)`, and ε(δ) is found by
  bisection that returns the upper end (δ(ε) ≤ δ always holds for the ε returned). Nothing
  is loose here: no order grid, no conversion, no discretisation. A history holding any
  subsampled entry (q < 1: the risk model's DP-SGD, charged to the same node ledger) is not
  Gaussian; such a whole history falls back to ``"rdp"`` — sound, only looser.
* ``"rdp"``: :class:`opacus.accountants.RDPAccountant` — Rényi DP (Mironov 2017),
  converted to :math:`(\varepsilon, \delta)` by Opacus' improved conversion (Balle et al.
  2020). For unsubsampled Gaussians the RDP curve :math:`\alpha / (2\mu^2)` is exact, so the
  only slack is the conversion. Fast (milliseconds), deterministic.
* ``"prv"``: :class:`opacus.accountants.PRVAccountant` — numerical composition of privacy-loss
  random variables (Gopi et al. 2021), ≈5 % tighter than RDP, but seconds per call over long
  heterogeneous histories; returns the upper bound of its error interval.

Every Gaussian's cost depends on its ρ = 1/(2μ²) alone under all three, and composes by adding
ρ (zCDP, and exactly so under ``"gaussian"``: :math:`\mu_{tot}^2 = 2\rho_{tot}`), which the
ledger's reservations and a plan's re-split rely on.

The order grid is extended beyond Opacus' default (which stops at 63) so small budgets
(ε < 1 at δ = 1e-6 wants orders near 50–100) are not over-reported.

The RDP path calls Opacus' own analysis module (``opacus/accountants/analysis/rdp.py``, the
``compute_rdp`` and ``get_privacy_spent`` that :class:`~opacus.accountants.RDPAccountant` calls),
loaded by file so that ``opacus/__init__`` — which imports torch, about 4 s of CPU — is not run:
every Flower message starts a fresh node process that charges its ledger through this module.
The Gaussian path needs only :mod:`math`.

>>> round(epsilon_spent(noise_multipliers=[1.0] * 10, delta=1e-5, accountant="rdp"), 2)
19.05
>>> round(epsilon_spent(noise_multipliers=[1.0] * 10, delta=1e-5), 2)
17.86
"""

from __future__ import annotations

import functools
import importlib.util
import math
import sys
import warnings
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np

__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_ACCOUNTANT",
    "Accountant",
    "ORDERS",
    "accountant_label",
    "epsilon_of_history",
    "epsilon_spent",
    "gdp_delta",
    "gdp_epsilon",
    "gdp_mu",
    "make_accountant",
]

Accountant = Literal["gaussian", "rdp", "prv"]
ACCOUNTANTS: tuple[str, ...] = ("gaussian", "rdp", "prv")
#: the accountant a study, a plan and a ledger use unless told otherwise: the exact one
DEFAULT_ACCOUNTANT: Accountant = "gaussian"

_LABELS = {
    "gaussian": "gaussian (exact GDP composition)",
    "rdp": "opacus-rdp",
    "prv": "opacus-prv",
}

#: RDP orders: Opacus' default grid extended to 1024.
ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)]
    + list(range(12, 64))
    + list(range(64, 128, 4))
    + list(range(128, 257, 16))
    + [320, 384, 512, 768, 1024]
)


def accountant_label(name: str) -> str:
    """How a report names the accountant (e.g. ``"gaussian (exact GDP composition)"``)."""
    return _LABELS.get(name, name)


def make_accountant(name: str = "rdp"):
    """A fresh Opacus accountant by name (``"rdp"`` or ``"prv"``; ``"gaussian"`` is not an
    Opacus accountant and is refused here: :func:`epsilon_of_history` computes it).

    Raises:
        ValueError: unknown name.
    """
    from opacus.accountants import PRVAccountant, RDPAccountant  # torch import: keep it lazy

    if name == "rdp":
        return RDPAccountant()
    if name == "prv":
        return PRVAccountant()
    raise ValueError(f"unknown Opacus accountant {name!r}; known: rdp, prv")


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


def _log_ndtr(x: float) -> float:
    """log Φ(x) without underflow: ``erfc`` down to x = -37 (Φ ≈ 6e-300, still a normal
    float), below that the asymptotic (Mills ratio) series, whose first omitted term,
    10395/x¹², is below 2e-15 there."""
    if x > 0.0:
        return math.log1p(-0.5 * math.erfc(x / math.sqrt(2.0)))
    if x > -37.0:
        return math.log(0.5 * math.erfc(-x / math.sqrt(2.0)))
    z = 1.0 / (x * x)
    series = 1.0 - z * (1.0 - 3.0 * z * (1.0 - 5.0 * z * (1.0 - 7.0 * z * (1.0 - 9.0 * z))))
    return -0.5 * x * x - math.log(-x) - 0.5 * math.log(2.0 * math.pi) + math.log(series)


def gdp_mu(history: Sequence[tuple[float, float, int]]) -> float:
    r""":math:`\mu_{tot} = \sqrt{\sum_i k_i / \mu_i^2}` of full-batch Gaussian entries
    ``(μ_i, 1, k_i)``: their composition is exactly :math:`\mu_{tot}`-GDP.

    Raises:
        ValueError: an entry is subsampled (q < 1): GDP composition is exact only without.
    """
    if any(q < 1.0 for _, q, _ in history):
        raise ValueError("GDP composition is exact only for full-batch (q = 1) Gaussian entries")
    return math.sqrt(sum(k / (mu * mu) for mu, _, k in history))


def gdp_delta(epsilon: float, mu: float) -> float:
    r"""δ(ε) of μ-GDP (Balle & Wang 2018, Thm. 8):
    :math:`\Phi(-\varepsilon/\mu + \mu/2) - e^{\varepsilon}\Phi(-\varepsilon/\mu - \mu/2)`,
    computed in logs so neither term under- nor overflows."""
    if mu <= 0:
        return 0.0
    a = -epsilon / mu + mu / 2.0
    log_a = _log_ndtr(a)
    log_b = epsilon + _log_ndtr(a - mu)
    if not log_b < log_a:  # rounding only: the difference is positive in exact arithmetic
        return 0.0
    return -math.exp(log_a) * math.expm1(log_b - log_a)


def gdp_epsilon(mu: float, delta: float) -> float:
    """Smallest ε with δ(ε) ≤ ``delta`` for μ-GDP, to ≤ 1e-12 relative, from above: δ(ε)
    falls strictly in ε, and the bisection returns the end of its bracket that satisfies the
    bound, so the ε returned never under-reports."""
    if mu <= 0 or gdp_delta(0.0, mu) <= delta:
        return 0.0
    lo, hi = 0.0, max(1.0, mu * mu)
    while gdp_delta(hi, mu) > delta:
        lo, hi = hi, 2.0 * hi
    while hi - lo > 1e-12 * hi:
        mid = 0.5 * (lo + hi)
        if gdp_delta(mid, mu) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def _check_multipliers(noise_multipliers: Iterable[float]) -> list[float]:
    mus = [float(m) for m in noise_multipliers]
    bad = [m for m in mus if not (np.isfinite(m) and m > 0)]
    if bad:
        raise ValueError(f"noise multipliers must be positive and finite, got {bad[0]!r}")
    return mus


def epsilon_spent(
    *, noise_multipliers: Sequence[float], delta: float, accountant: str = DEFAULT_ACCOUNTANT
) -> float:
    r"""ε at ``delta`` of the composition of full-batch Gaussian releases with these noise
    multipliers :math:`\mu_i = \sigma_i / \Delta_i` (any order); 0.0 for none.

    Raises:
        ValueError: a multiplier is not positive, δ outside (0, 1), or an unknown accountant.
    """
    mus = _check_multipliers(noise_multipliers)
    return epsilon_of_history(history=[(mu, 1.0, 1) for mu in mus], delta=delta, accountant=accountant)


def epsilon_of_history(
    *, history: Sequence[tuple[float, float, int]], delta: float, accountant: str = DEFAULT_ACCOUNTANT
) -> float:
    r"""ε at ``delta`` of a composition of (subsampled) Gaussian mechanisms, each entry
    ``(μ, q, steps)`` in Opacus' accountant-history form: ``steps`` applications with noise
    multiplier μ and Poisson sampling rate q (q = 1 for a full-batch release, as in the
    study's statistics; q < 1 for DP-SGD). ``"gaussian"`` composes exactly when every q = 1
    and hands a history with any q < 1 to ``"rdp"`` whole; the others are Opacus'.

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
    if accountant == "gaussian":
        if all(q >= 1.0 for _, q, _ in history):
            return gdp_epsilon(gdp_mu(history), delta)
        accountant = "rdp"  # DP-SGD in the history: not Gaussian; RDP is sound for all of it
    if accountant == "rdp":
        return _rdp_epsilon(history, delta)
    acc = make_accountant(accountant)
    acc.history = history
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PRV's discretisation warns at sample_rate = 1
        return float(acc.get_epsilon(delta=delta))
