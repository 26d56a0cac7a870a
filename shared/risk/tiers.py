"""Risk tiers from predicted probability, by configurable cut-offs.

Default cut-offs split the predicted event risk into low (< 5 %), medium (5–10 %),
high (10–20 %) and very high (≥ 20 %). A probability equal to a cut-off falls in the upper tier.

>>> assign_tiers([0.01, 0.05, 0.15, 0.5]).tolist()
['low', 'medium', 'high', 'very_high']
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from shared.errors import SpecError

TIERS: tuple[str, ...] = ("low", "medium", "high", "very_high")
TIER_LABELS: dict[str, str] = {"low": "Low", "medium": "Medium", "high": "High", "very_high": "Very high"}
DEFAULT_CUTOFFS: tuple[float, float, float] = (0.05, 0.10, 0.20)
_TIER_ARRAY = np.array(TIERS)


def check_cutoffs(cutoffs: Sequence[float]) -> tuple[float, float, float]:
    """Validate three strictly increasing cut-offs inside (0, 1).

    Raises:
        SpecError: not three values, not increasing, or outside (0, 1).
    """
    c = tuple(float(v) for v in cutoffs)
    if len(c) != len(TIERS) - 1:
        raise SpecError(f"tier cut-offs: need {len(TIERS) - 1} values, got {len(c)}")
    if not all(0.0 < v < 1.0 for v in c) or not all(a < b for a, b in zip(c, c[1:])):
        raise SpecError(f"tier cut-offs {c}: must be strictly increasing inside (0, 1)")
    return c  # type: ignore[return-value]


def tier_index(
    prob: np.ndarray | Sequence[float], *, cutoffs: Sequence[float] = DEFAULT_CUTOFFS
) -> np.ndarray:
    """Tier number 0..3 per probability (vectorised ``searchsorted``)."""
    c = np.asarray(check_cutoffs(cutoffs))
    return np.searchsorted(c, np.asarray(prob, dtype=float), side="right")


def assign_tiers(
    prob: np.ndarray | Sequence[float], *, cutoffs: Sequence[float] = DEFAULT_CUTOFFS
) -> np.ndarray:
    """Tier name per probability: an array of ``TIERS`` strings."""
    return _TIER_ARRAY[tier_index(prob, cutoffs=cutoffs)]
