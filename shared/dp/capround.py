"""The large-loss cap as a study round (issue #19): what the coordinator makes of the summed
noisy histogram of :mod:`shared.dp.capquantile`, and what the result states about it.

The round (``cap_hist``, :class:`shared.protocol.CapHist`) runs right after describe in a study
signed with ``privacy.large_loss_cap``; its release is planned (:func:`shared.dp.plan.plan_study`
with ``cap_round``: a fixed :data:`~shared.dp.capquantile.CAP_SHARE` of ρ) and charged by every
node before it leaves. From the summed histogram the coordinator takes, per continuous outcome,
the DP 99.5 % quantile rounded up to a public edge (:func:`~shared.dp.capquantile.quantile_cap`);
binary outcomes keep their span. Every later query carries those caps (``privacy.caps``), each
node checks them against its policy (:meth:`node.policy.NodePolicy.check`) and answers on its
outcomes capped there (:func:`shared.answer.at_released_caps`).

**The estimand** is then the ATT on the outcome capped at the released cap (the large-loss
layer excluded, as an actuary prices a layer): what the CI covers. The result states, per
outcome, the cap, its share of the budget, the noisy share of rows above it and a bound on how
far the uncapped estimate can lie from the capped one
(:func:`~shared.dp.capquantile.uncapped_shift_bound`, with the clipped count at its noisy value
plus 1.96 SDs). All of it is post-processing of released values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from shared.dp.capquantile import CAP_QUANTILE, CAP_SHARE, clipped_above, quantile_cap, uncapped_shift_bound
from shared.dp.plan import NoisePlan
from shared.study import Outcome

__all__ = ["LargeLossCaps", "large_loss_caps", "outcomes_at_caps", "result_caps"]


@dataclass(frozen=True)
class LargeLossCaps:
    """The cap round's public outcome, one entry per outcome of the study (analysed order)."""

    names: tuple[str, ...]
    signed: tuple[float, ...]  #: the signed (spec) caps, in outcome units
    caps: tuple[float, ...]  #: the released caps, in outcome units (= signed for binary outcomes)
    clipped: tuple[float, ...]  #: noisy rows at or above the released cap (clamped at 0)
    rows: tuple[float, ...]  #: noisy rows in the histogram (clamped at 0)
    sigma: float  #: SD of each noisy count in the summed histogram
    level: float = CAP_QUANTILE
    share: float = CAP_SHARE

    def clipped_share(self, name: str) -> float | None:
        i = self.names.index(name)
        return self.clipped[i] / self.rows[i] if self.rows[i] > 0 else None

    def shift_bound(self, name: str, *, n_treated: float, max_weight: float) -> float:
        """Bound on |uncapped − capped| estimate of ``name`` in its units (0 if not lowered)."""
        i = self.names.index(name)
        return uncapped_shift_bound(
            n_clipped=self.clipped[i] + 1.96 * self.sigma,
            span_above=self.signed[i] - self.caps[i],
            n_treated=n_treated,
            max_weight=max_weight,
        )

    def to_dict(self) -> dict:
        return {
            "level": self.level,
            "share": self.share,
            "sigma": self.sigma,
            "outcomes": [
                {"name": n, "signed_cap": s, "cap": c, "clipped": k, "rows": r}
                for n, s, c, k, r in zip(self.names, self.signed, self.caps, self.clipped, self.rows)
            ],
        }


def large_loss_caps(
    *,
    hist: np.ndarray,
    outcomes: Sequence[Outcome],
    plan: NoisePlan,
    n_nodes: int,
    secure_aggregation: bool = False,
) -> LargeLossCaps:
    """The released caps from the summed noisy ``(bins, O)`` histogram of the cap round.

    >>> from shared.dp.plan import plan_study
    >>> from shared.dp.capquantile import cap_histogram
    >>> from shared.study import BudgetSplit
    >>> plan = plan_study(epsilon=1.0, delta=1e-6, split=BudgetSplit(), n_covariates=2,
    ...                   n_outcomes=2, cap_round=True)
    >>> y = np.column_stack([np.linspace(0, 0.02, 5000), np.r_[np.zeros(4000), np.ones(1000)]])
    >>> out = large_loss_caps(hist=cap_histogram(y), outcomes=[Outcome(name="c", cap=1e5),
    ...     Outcome(name="b", cap=1.0, kind="binary")], plan=plan, n_nodes=1)
    >>> out.caps[0] < 2500, out.caps[1]
    (True, 1.0)
    """
    c01 = quantile_cap(hist)
    c01 = np.array([1.0 if o.kind == "binary" else float(c) for o, c in zip(outcomes, c01)])
    clipped, rows = clipped_above(hist, c01)
    sigma = plan.release("cap_hist").total_sigma(n_nodes, secure_aggregation=secure_aggregation)
    return LargeLossCaps(
        names=tuple(o.name for o in outcomes),
        signed=tuple(float(o.cap) for o in outcomes),
        caps=tuple(o.cap if c == 1.0 else o.lo + float(c) * (o.cap - o.lo) for o, c in zip(outcomes, c01)),
        clipped=tuple(float(x) for x in clipped),
        rows=tuple(float(x) for x in rows),
        sigma=float(sigma),
    )


def outcomes_at_caps(outcomes: Sequence[Outcome], caps: LargeLossCaps | None) -> tuple[Outcome, ...]:
    """``outcomes`` with their caps replaced by the released ones (unchanged without a round):
    the units every estimate of the study is reported in."""
    if caps is None:
        return tuple(outcomes)
    by_name = dict(zip(caps.names, caps.caps))
    return tuple(
        o
        if math.isclose(by_name.get(o.name, o.cap), o.cap)
        else o.model_copy(update={"cap": by_name[o.name]})
        for o in outcomes
    )


def result_caps(caps: LargeLossCaps, *, count) -> dict:
    """What the study result states about its cap round (:class:`shared.result.PrivacySpent`):
    :meth:`LargeLossCaps.to_dict`, and per outcome the noisy clipped share and the bound on how
    far the estimate on uncapped outcomes could lie from the capped one, over the strata of the
    final ``(S, 2)`` noisy counts (largest weight of one person, :func:`shared.dp.limit.largest_weight`
    under replace-one: a clipped row's own weight)."""
    from shared.dp.limit import largest_weight
    from shared.psm.cells import clamped_counts

    n = clamped_counts(np.asarray(count, dtype=float))
    used = (n[:, 0] > 0) & (n[:, 1] > 0)
    try:
        weight = largest_weight(count=n, used=used, neighbours="replace")
    except ValueError:  # no stratum with both arms: no estimate, so no bound to state
        weight = None
    out = caps.to_dict()
    for row in out["outcomes"]:
        row["clipped_share"] = caps.clipped_share(row["name"])
        row["shift_bound"] = (
            None if weight is None else caps.shift_bound(row["name"], n_treated=1.0, max_weight=weight)
        )
    return out
