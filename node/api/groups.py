"""Group views for HR: people per risk tier by department or age band, suppressed and noised.

Each person lands in exactly one (group, tier) cell, so the table's L2 sensitivity is 1 and one
Gaussian release with noise σ costs ε(σ, δ) (:func:`shared.dp.accounting.epsilon_spent`). Every
(group, tier) combination of the groups present is released, zeros included, so an empty cell
is not revealed by its absence. Cells whose *noisy* count is below ``k`` are suppressed (the
threshold sees only noised values). A view is computed once per grouping and then served from
cache, so repeating a request does not let anyone average the noise away.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from shared.dp.accounting import epsilon_spent
from shared.dp.mechanisms import gaussian_noise
from shared.errors import DataError, SpecError
from shared.risk.tiers import TIERS
from shared.schemas import AGE_BANDS

GROUPINGS: dict[str, tuple[str, ...]] = {
    "department": ("department",),
    "age_band": ("age_band",),
    "department,age_band": ("department", "age_band"),
}


@dataclass(frozen=True)
class GroupPolicy:
    """The node's rule for group views: minimum cell size and noise."""

    k: int = 10
    sigma: float = 2.0
    delta: float = 1e-6

    def __post_init__(self) -> None:
        if self.k < 1 or not self.sigma > 0 or not 0 < self.delta < 1:
            raise SpecError("group policy needs k ≥ 1, sigma > 0 and 0 < delta < 1")

    @property
    def epsilon(self) -> float:
        return epsilon_spent(noise_multipliers=[self.sigma], delta=self.delta)


def _age_bands(age: pd.Series) -> pd.Series:
    edges = [-np.inf, 30, 40, 50, 60, 70, np.inf]
    return pd.cut(age, bins=edges, right=False, labels=list(AGE_BANDS)).astype(str)


def group_frame(scored: pd.DataFrame) -> pd.DataFrame:
    """``department``, ``age_band`` and ``tier`` per person of a scored book.

    ``department`` defaults to ``"all"`` when the book has none; ``age_band`` is derived from
    ``age`` when absent.

    Raises:
        DataError: neither ``age_band`` nor ``age``, or no ``tier`` column.
    """
    if "tier" not in scored.columns:
        raise DataError("scored book lacks the 'tier' column", field="tier")
    if "age_band" in scored.columns:
        bands = scored["age_band"].astype(str)
    elif "age" in scored.columns:
        bands = _age_bands(scored["age"])
    else:
        raise DataError("book lacks both 'age_band' and 'age'", field="age_band")
    dept = (
        scored["department"].fillna("unknown").astype(str)
        if "department" in scored.columns
        else pd.Series("all", index=scored.index)
    )
    return pd.DataFrame(
        {
            "department": dept.to_numpy(),
            "age_band": bands.to_numpy(),
            "tier": scored["tier"].astype(str).to_numpy(),
        }
    )


def exact_counts(groups: pd.DataFrame, *, by: str) -> tuple[list[str], np.ndarray]:
    """Group labels and a ``(groups, 4)`` count table (tiers in ``TIERS`` order)."""
    if by not in GROUPINGS:
        raise SpecError(f"group by {by!r}: choose one of {', '.join(GROUPINGS)}")
    label = groups[list(GROUPINGS[by])].astype(str).agg(" / ".join, axis=1)
    table = pd.crosstab(label, pd.Categorical(groups["tier"], categories=list(TIERS)), dropna=False).reindex(
        columns=list(TIERS), fill_value=0
    )
    return [str(g) for g in table.index], table.to_numpy(dtype=float)


def noisy_cells(
    labels: list[str], counts: np.ndarray, *, policy: GroupPolicy, rng: np.random.Generator
) -> list[dict]:
    """Noise every cell, round, clamp at 0, suppress below ``k``."""
    noisy = np.maximum(
        np.rint(counts + gaussian_noise(shape=counts.shape, sigma=policy.sigma, rng=rng)), 0
    ).astype(int)
    return [
        {
            "group": g,
            "tier": t,
            "suppressed": bool(noisy[i, j] < policy.k),
            "count": None if noisy[i, j] < policy.k else int(noisy[i, j]),
        }
        for i, g in enumerate(labels)
        for j, t in enumerate(TIERS)
    ]
