r"""A large-loss cap proposed from a cheap DP quantile (issue #19, "public caps chosen well").

Every DP release of an outcome pays for its public span ``cap − lo``: the ATT's noise is
proportional to it. The default caps are safe bounds (claims 100,000 against a mean near 2,300;
absence 365 days against a mean near 7), so most of that span is empty and the noise is paid
for values almost nobody has. A cap near the upper tail of the outcome shrinks the noise by
the same factor; the estimand becomes the ATT on the **capped (winsorised) outcome**, and the
clipping and its effect on the estimand must be stated.

**The mechanism: one noisy histogram per outcome** over public bins, summed over the nodes
(SecAgg+ or not) like every other release, charged to the node's ledger before it leaves
(:func:`node.privacy.charged_release`, release ``cap_hist``):

* bins (:func:`cap_bins`): on the [0, 1] scale of each outcome's public span, ``[0, 2^{-10})``
  then log-spaced edges a factor √2 apart up to 1 (21 bins): resolution relative to the value,
  which is what a cap needs, and a fixed public grid, so nothing about the data chooses them;
* one row lands in one bin per outcome, so the O histograms together have L2 sensitivity
  :math:`\sqrt O` under add/remove-one (:func:`cap_hist_sensitivity`);
* the cap (:func:`quantile_cap`) is the smallest bin edge with at most :math:`(1 - q)` of the
  rows above it on the noisy histogram (bins clamped at 0), i.e. the DP q-quantile **rounded up
  to the next edge** (the cap errs towards less clipping). Post-processing only.

**The level is fixed in advance:** :data:`CAP_QUANTILE` = 0.995, the 1-in-200 level of Solvency
II's capital requirement, the public convention an insurer's actuary already reports at; no
benchmark cell chose it. Binary outcomes keep their span [0, 1].

**What changes, stated in the result:** the outcome's cap (and so every later release's span),
the estimand (the ATT on min(y, cap)), and the rows clipped at the node (counted there as
``n_clipped`` and withheld, as every clipping count is). The benchmark measures the capped
estimand's bias against the uncapped truth (``bench_privacy.py --grid --cap-quantile``).

>>> bins = cap_bins()
>>> bins.size, float(bins[0]), float(bins[-1])
(22, 0.0, 1.0)
"""

from __future__ import annotations

import math

import numpy as np

from shared.dp.plan import CAP_SHARE, single_release_multiplier

__all__ = [
    "CAP_QUANTILE",
    "CAP_SHARE",
    "cap_budget",
    "cap_bins",
    "cap_hist_sensitivity",
    "cap_histogram",
    "check_cap_edge",
    "clipped_above",
    "quantile_cap",
    "rescale_to_caps",
    "uncapped_shift_bound",
]

#: The quantile the proposed cap sits at (module docstring: fixed in advance, not tuned).
CAP_QUANTILE = 0.995
#: Bins per halving: edges a factor 2^(1/2) apart.
_PER_OCTAVE = 2
#: The lowest positive edge, 2^-10 of the span (≈ 98 claims units at a 100,000 cap).
_OCTAVES = 10


def cap_bins() -> np.ndarray:
    """The public bin edges on the [0, 1] scale: 0, then :math:`2^{-10}, 2^{-9.5}, …, 1`."""
    k = np.arange(_OCTAVES * _PER_OCTAVE, -1, -1)
    return np.concatenate(([0.0], 2.0 ** (-k / _PER_OCTAVE)))


def cap_hist_sensitivity(*, n_outcomes: int) -> float:
    """L2 sensitivity of the O histograms: one row adds 1 to one bin of each, so √O."""
    if int(n_outcomes) != n_outcomes or n_outcomes < 1:
        raise ValueError(f"n_outcomes must be a positive integer, got {n_outcomes!r}")
    return math.sqrt(n_outcomes)


def cap_histogram(y01) -> np.ndarray:
    """A node's exact ``(B, O)`` counts of its rows per public bin and outcome (``y01`` its
    ``(n, O)`` outcomes on the [0, 1] scale; a value of exactly 1 is in the top bin)."""
    y = np.asarray(y01, dtype=float)
    if y.ndim != 2:
        raise ValueError(f"y01 must be (rows, outcomes), got shape {y.shape}")
    edges = cap_bins()
    idx = np.clip(np.searchsorted(edges, y, side="right") - 1, 0, edges.size - 2)
    out = np.zeros((edges.size - 1, y.shape[1]))
    for o in range(y.shape[1]):
        out[:, o] = np.bincount(idx[:, o], minlength=edges.size - 1)
    return out


def quantile_cap(hist, q: float = CAP_QUANTILE) -> np.ndarray:
    """``(O,)`` proposed caps on the [0, 1] scale from the summed noisy ``(B, O)`` histogram:
    per outcome the smallest edge with at most ``(1 − q)`` of the (clamped) rows above it; 1
    (the public cap) when the histogram holds nothing.

    >>> h = np.zeros((21, 1)); h[0] = 990; h[15] = 8; h[18] = 2   # 1000 rows
    >>> float(quantile_cap(h, 0.995)[0]) == float(cap_bins()[16])  # 2 rows from edge 16 up ≤ 5
    True
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must lie in (0, 1), got {q!r}")
    h = np.clip(np.asarray(hist, dtype=float), 0.0, None)
    edges = cap_bins()
    if h.ndim != 2 or h.shape[0] != edges.size - 1:
        raise ValueError(f"hist must be ({edges.size - 1}, outcomes), got shape {h.shape}")
    total = h.sum(axis=0)
    above = np.cumsum(h[::-1], axis=0)[::-1]  # above[k] = rows in bins k.. (at or above edge k)
    caps = np.ones(h.shape[1])
    for o in range(h.shape[1]):
        if not total[o] > 0:
            continue
        ok = np.nonzero(above[:, o] <= (1.0 - q) * total[o])[0]  # edge k: rows at or above it
        caps[o] = edges[ok[0]] if ok.size else 1.0
    return caps


def cap_budget(
    *, epsilon: float, delta: float, share: float = CAP_SHARE, accountant: str = "gaussian"
) -> tuple[float, float]:
    """``(μ, ε_rest)``: the histogram's noise multiplier when it takes ``share`` of the ρ of a
    budget (ε, δ), and the ε at δ of the remaining ρ (what the study itself may then spend), so
    that both compose to at most ε. Gaussian releases compose by adding ρ.

    >>> mu, rest = cap_budget(epsilon=1.0, delta=1e-6)
    >>> round(mu, 1), rest < 1.0
    (18.9, True)
    """
    from shared.dp.accounting import epsilon_spent

    if not 0.0 < share < 1.0:
        raise ValueError(f"share must lie in (0, 1), got {share!r}")
    mu_all = single_release_multiplier(epsilon=epsilon, delta=delta, accountant=accountant)
    rho = 1.0 / (2.0 * mu_all**2)
    mu_cap = 1.0 / math.sqrt(2.0 * rho * share)
    rest = epsilon_spent(
        noise_multipliers=[1.0 / math.sqrt(2.0 * rho * (1.0 - share))], delta=delta, accountant=accountant
    )
    return mu_cap, rest


def check_cap_edge(c01: float) -> float:
    """``c01`` (a cap on the [0, 1] scale of the signed span) if it is one of the public edges
    :func:`quantile_cap` can return, else ValueError: a node accepts only a cap that a released
    histogram could have proposed (nothing else about the data may choose it)."""
    edges = cap_bins()[1:]
    k = int(np.argmin(np.abs(edges - c01)))
    if not (math.isfinite(c01) and abs(edges[k] - c01) <= 1e-9 * edges[k]):
        raise ValueError(f"a cap at {c01!r} of the public span is not one of the public edges")
    return float(edges[k])


def rescale_to_caps(y01, c01) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes scaled to [0, 1] by the signed caps, rescaled to the released caps ``c01``
    (each on the signed [0, 1] scale, ≤ 1): ``min(y / c, 1)``, exact because the signed scaling
    already clipped at 1. Returns the rescaled ``(n, O)`` outcomes and the rows per outcome
    that the lower caps clip (counted at the node and withheld like every clipping count)."""
    y = np.asarray(y01, dtype=float)
    c = np.asarray(c01, dtype=float)
    if c.shape != (y.shape[1],) or not np.all((c > 0) & (c <= 1)):
        raise ValueError(f"caps must be {y.shape[1]} values in (0, 1], got {c.tolist()}")
    return np.minimum(y / c, 1.0), np.sum(y > c, axis=0).astype(float)


def clipped_above(hist, c01) -> tuple[np.ndarray, np.ndarray]:
    """Per outcome, the noisy histogram's rows at or above the released cap (the clipped rows,
    up to those exactly at the edge) and its total rows: post-processing of the release, so the
    report may state the clipped share (clamped at 0)."""
    h = np.clip(np.asarray(hist, dtype=float), 0.0, None)
    edges = cap_bins()
    above = np.cumsum(h[::-1], axis=0)[::-1]
    k = np.searchsorted(edges, np.asarray(c01, dtype=float) * (1 - 1e-12))
    n_above = np.array([above[kk, o] if kk < h.shape[0] else 0.0 for o, kk in enumerate(k)])
    return n_above, h.sum(axis=0)


def uncapped_shift_bound(
    *, n_clipped: float, span_above: float, n_treated: float, max_weight: float
) -> float:
    r"""A bound on how far the uncapped ATT's estimate lies from the capped one, in outcome
    units: a clipped row moves the stratified estimate by its weight times what the cap took
    off it, at most ``max_weight``/N_T × (signed cap − released cap), so

    .. math:: |\hat\tau_{raw} - \hat\tau_{cap}| \le n_{clip} \, w_{max} \, (c_0 - c) / N_T .

    ``n_clipped`` should be an upper bound on the clipped rows (the noisy count plus 1.96 of
    its SDs: :func:`clipped_above` on the release). Loose by design (every clipped row at the
    signed cap, all in the arm of largest weight): what the data can guarantee, not a guess.

    >>> uncapped_shift_bound(n_clipped=10, span_above=50_000, n_treated=1_000, max_weight=2.0)
    1000.0
    """
    if n_treated <= 0:
        raise ValueError("n_treated must be positive")
    return float(max(n_clipped, 0.0) * max_weight * span_above / n_treated)
