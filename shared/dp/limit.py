r"""The physical limit of a DP ATT: what one Gaussian release of the estimate itself would cost.

Issue #19 asks every DP study to say how close its interval comes to the best a Gaussian
mechanism could do at the same (ε, δ), so a reader can tell a costly *mechanism* from a costly
*study* (public caps far above the typical outcome, strata with few controls). The reference
("the limit") is a trusted party that holds all rows, computes the stratified ATT of
:mod:`shared.psm.estimator` and releases it once with Gaussian noise:

.. math::
    \Delta = (\mathrm{cap} - \mathrm{lo})\, w_{\max}, \qquad
    \sigma_{lim} = \mu(\varepsilon, \delta)\, \Delta, \qquad
    \mathrm{width}_{lim} = 2 z_{0.975} \sqrt{SE^2_{sampling} + \sigma^2_{lim}},

with :math:`\mu` the noise multiplier of *one* release costing the study's whole (ε, δ) under
the study's accountant (:func:`shared.dp.plan.single_release_multiplier`) and :math:`w_{\max}`
the largest weight one person carries in the estimate over the strata it uses
(:func:`largest_weight`). The ATT is linear in each outcome with weight :math:`1/N_T` for a
treated person and :math:`n_{bT}/(N_T\, n_{bC})` for a control in stratum b, so

* **replace-one** (one person's outcome changes, strata and counts fixed — the relation the
  issue states): :math:`w_{\max} = \max(1/N_T,\ \max_b n_{bT}/(N_T n_{bC}))`, attained exactly
  by moving one person's outcome from ``lo`` to ``cap``;
* **add/remove-one** (the project's relation, :mod:`shared.dp.sensitivity`): removing a
  control from stratum b moves its control mean by :math:`|y_j - \bar y_{rest}|/n_{bC}`, the
  same bound; removing a treated moves the ATT by :math:`|d_i - \widehat{ATT}'|/N_T` with both
  terms in :math:`[-\mathrm{span}, \mathrm{span}]`, so the treated term doubles to
  :math:`2/N_T`; adding a person changes less (one more in the denominator). The strata stay
  fixed and every used stratum keeps at least one control (a stratum losing its last control
  would change the support, which no fixed-weight limit describes).

The default is add/remove-one, matching the rest of the project's DP; the two agree whenever a
stratum holds more than twice as many treated as controls (the benchmark's 10k-treated
federation: largest control weight ≈ 8/N_T). The limit is a *reference*, not a mechanism: it
reads the realised counts, which a real release could not use without paying for them, so a DP
study can come close to it but not honestly below (achieved ÷ limit ≥ 1 up to the noise in the
study's own estimated counts and SEs).

Ratios attached to a DP study's outcomes (:func:`with_limit`):

* ``ratio_limit`` = achieved CI width ÷ limit width: how good the mechanism is;
* ``ratio_exact_est`` = achieved CI width ÷ ``2 z SE_sampling``: what the user pays against the
  non-private interval. *Estimated*: the coordinator only has the sampling SE computed from the
  noisy table; a benchmark can divide by the real exact study's width instead
  (:func:`limit_widths` with its own ``se_sampling``).

>>> round(largest_weight(count=[[10, 5], [2, 5]], used=[True, True]), 4)
0.25
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, Sequence

import numpy as np

from shared.dp.plan import NoisePlan, single_release_multiplier
from shared.psm.cells import clamped_counts
from shared.psm.estimator import Z_95, AttEstimate

__all__ = [
    "Neighbours",
    "largest_weight",
    "limit_sigma",
    "limit_widths",
    "with_limit",
]

Neighbours = Literal["add_remove", "replace"]


def largest_weight(*, count, used, neighbours: Neighbours = "add_remove") -> float:
    r"""The largest weight one person carries in the stratified ATT (on the [0, 1] scale).

    Args:
        count: ``(S, 2)`` per stratum × arm counts (control, treated); negative (noisy) counts
            are treated as 0, as the estimator does.
        used: ``(S,)`` the strata the estimator uses (both arms present).
        neighbours: ``"add_remove"`` (treated term 2/N_T) or ``"replace"`` (1/N_T); see the
            module docstring.

    Returns:
        :math:`\max(c/N_T,\ \max_b n_{bT}/(N_T n_{bC}))` over used strata, c = 2 or 1.

    Raises:
        ValueError: shapes disagree, or the used strata hold no treated or a used stratum no
            control (the estimate then has no finite weight).
    """
    n = clamped_counts(np.asarray(count, dtype=float))
    u = np.asarray(used, dtype=bool).reshape(-1)
    if n.ndim != 2 or n.shape[1] != 2 or n.shape[0] != u.size:
        raise ValueError(f"count must be (S, 2) and used (S,), got {n.shape} and {u.shape}")
    n_t = float(n[u, 1].sum())
    if not n_t > 0 or not np.all(n[u, 0] > 0):
        raise ValueError("the used strata need treated and, each, at least one control")
    treated = (2.0 if neighbours == "add_remove" else 1.0) / n_t
    control = float(np.max(n[u, 1] / (n_t * n[u, 0]))) if u.any() else 0.0
    return max(treated, control)


def limit_sigma(*, weight: float, spans, epsilon: float, delta: float, accountant: str) -> np.ndarray:
    """σ of the one Gaussian release of the ATT per outcome, in the outcomes' units:
    ``single_release_multiplier(ε, δ, accountant) × span × weight``."""
    mu = single_release_multiplier(epsilon=epsilon, delta=delta, accountant=accountant)
    return mu * float(weight) * np.asarray(spans, dtype=float)


def limit_widths(
    *,
    count,
    used,
    spans,
    epsilon: float,
    delta: float,
    accountant: str,
    se_sampling,
    neighbours: Neighbours = "add_remove",
) -> np.ndarray:
    """The limit's 95 % CI width per outcome, ``2 z √(SE²_sampling + σ²_limit)``.

    What a benchmark calls with the strata and sampling SE it judges against (e.g. the exact
    study's caliper strata and SE); :func:`with_limit` calls it with the DP study's own.
    """
    sigma = limit_sigma(
        weight=largest_weight(count=count, used=used, neighbours=neighbours),
        spans=spans,
        epsilon=epsilon,
        delta=delta,
        accountant=accountant,
    )
    return 2.0 * Z_95 * np.hypot(np.asarray(se_sampling, dtype=float), sigma)


def with_limit(
    estimate: AttEstimate,
    *,
    count,
    plan: NoisePlan,
    spans: Sequence[float],
    neighbours: Neighbours = "add_remove",
) -> AttEstimate:
    """``estimate`` with ``limit_width``, ``ratio_limit`` and ``ratio_exact_est`` on each outcome.

    The used strata are the estimate's own (:attr:`AttEstimate.strata`), the counts the table's
    (noisy) ones, and (ε, δ, accountant) the plan's, so the limit describes the weights this
    study actually used. A ratio whose denominator is 0 is left None.
    """
    used = np.array([s.used for s in estimate.strata], dtype=bool)
    se_s = np.array([o.se_sampling for o in estimate.outcomes])
    widths = limit_widths(
        count=count,
        used=used,
        spans=spans,
        epsilon=plan.epsilon,
        delta=plan.delta,
        accountant=plan.accountant,
        se_sampling=se_s,
        neighbours=neighbours,
    )
    outcomes = []
    for o, lim in zip(estimate.outcomes, widths):
        achieved = o.ci[1] - o.ci[0]
        exact = 2.0 * Z_95 * o.se_sampling
        outcomes.append(
            o.model_copy(
                update={
                    "limit_width": float(lim),
                    "ratio_limit": _ratio(achieved, float(lim)),
                    "ratio_exact_est": _ratio(achieved, exact),
                }
            )
        )
    return dataclasses.replace(estimate, outcomes=tuple(outcomes))


def _ratio(num: float, den: float) -> float | None:
    r = num / den if den > 0 else math.nan
    return r if math.isfinite(r) else None
