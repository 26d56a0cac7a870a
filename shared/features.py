"""The 16 clinical features: names, units, public bounds, and scaling to [0, 1].

One source of truth: ingestion validates against these bounds, the statistics scale by them,
the risk model reads them. Bounds are public, so scaling by them leaks nothing about any row.
Values outside bounds are errors, never silently clipped.

>>> import numpy as np
>>> z = scale(np.array([[18.0]]), [FEATURES_BY_NAME["age"]])
>>> float(z[0, 0])
0.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from shared.errors import CovariateBoundsError, DataError

Kind = Literal["continuous", "binary"]


@dataclass(frozen=True)
class Feature:
    """A covariate with public bounds ``[lo, hi]`` (inclusive)."""

    name: str
    lo: float
    hi: float
    kind: Kind = "continuous"
    unit: str = ""
    label: str = ""

    def __post_init__(self) -> None:
        if not self.hi > self.lo:
            raise ValueError(f"feature {self.name!r}: hi ({self.hi}) must exceed lo ({self.lo})")
        if self.kind == "binary" and (self.lo, self.hi) != (0, 1):
            raise ValueError(f"feature {self.name!r}: binary features have bounds 0..1")


FEATURES: tuple[Feature, ...] = (
    Feature("age", 18, 90, unit="years", label="Age"),
    Feature("sex", 0, 1, "binary", label="Sex (1 = male)"),
    Feature("sbp", 80, 220, unit="mmHg", label="Systolic blood pressure"),
    Feature("dbp", 40, 130, unit="mmHg", label="Diastolic blood pressure"),
    Feature("bp_treated", 0, 1, "binary", label="On blood-pressure treatment"),
    Feature("total_chol", 2, 12, unit="mmol/L", label="Total cholesterol"),
    Feature("hdl", 0.3, 3.5, unit="mmol/L", label="HDL cholesterol"),
    Feature("ldl", 0.5, 9, unit="mmol/L", label="LDL cholesterol"),
    Feature("triglycerides", 0.2, 12, unit="mmol/L", label="Triglycerides"),
    Feature("glucose", 2.5, 25, unit="mmol/L", label="Fasting glucose"),
    Feature("diabetes", 0, 1, "binary", label="Diabetes"),
    Feature("smoker", 0, 1, "binary", label="Current smoker"),
    Feature("bmi", 14, 60, unit="kg/m2", label="Body-mass index"),
    Feature("waist", 50, 160, unit="cm", label="Waist circumference"),
    Feature("family_history", 0, 1, "binary", label="Family history of premature CVD"),
    Feature("physical_activity", 0, 100, unit="MET-h/week", label="Physical activity"),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
FEATURES_BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}


def _bounds(features: Sequence[Feature]) -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([f.lo for f in features], dtype=float)
    hi = np.array([f.hi for f in features], dtype=float)
    return lo, hi


def check_bounds(x: np.ndarray, features: Sequence[Feature], *, row_offset: int = 0) -> None:
    """Raise a typed error naming the first row and feature that is NaN or out of bounds.

    Args:
        x: ``(n, d)`` raw values, columns in the order of ``features``.
        features: the covariates, with their public bounds.
        row_offset: added to the 0-based row index in the message (e.g. a chunk's start).

    Raises:
        DataError: a value is NaN or infinite.
        CovariateBoundsError: a value lies outside ``[lo, hi]``, or a binary value is not 0/1.
    """
    x = np.asarray(x, dtype=float)
    if x.ndim != 2 or x.shape[1] != len(features):
        raise DataError(f"expected an (n, {len(features)}) array, got shape {x.shape}")
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(
            f"row {r + row_offset}: {features[c].name} is missing or not a number",
            row=int(r + row_offset),
            field=features[c].name,
        )
    lo, hi = _bounds(features)
    out = (x < lo) | (x > hi)
    binary = np.array([f.kind == "binary" for f in features])
    out |= binary & (x != np.round(x))
    if out.any():
        r, c = np.argwhere(out)[0]
        f = features[c]
        raise CovariateBoundsError(
            # row and field, never the value: DataError texts may be sent to the coordinator
            f"row {r + row_offset}: {f.name} outside public bounds [{f.lo:g}, {f.hi:g}]"
            + (" (binary: 0 or 1)" if f.kind == "binary" else ""),
            row=int(r + row_offset),
            field=f.name,
        )


def scale(x: np.ndarray, features: Sequence[Feature], *, row_offset: int = 0) -> np.ndarray:
    """Map raw values to ``z = (x - lo) / (hi - lo)`` in [0, 1], after checking bounds
    (errors name row ``index + row_offset``)."""
    x = np.asarray(x, dtype=float)
    check_bounds(x, features, row_offset=row_offset)
    lo, hi = _bounds(features)
    return (x - lo) / (hi - lo)


def clip_to_bounds(x: np.ndarray, features: Sequence[Feature]) -> tuple[np.ndarray, np.ndarray, int]:
    """Values clipped to the public bounds (binary ones rounded to 0/1); rows with a missing or
    non-finite value marked for leaving out. Never an error about a row: for releases paid for
    before the data are read, where a value must not become an error text.

    Returns:
        ``(clipped rows kept, keep mask over the input rows, values changed + rows left out)``.
    """
    x = np.asarray(x, dtype=float)
    keep = np.isfinite(x).all(axis=1)
    kept = x[keep]
    lo, hi = _bounds(features)
    out = np.clip(kept, lo, hi)
    binary = np.array([f.kind == "binary" for f in features])
    out[:, binary] = np.round(out[:, binary])
    return out, keep, int((~keep).sum()) + int((out != kept).sum())


def unscale(z: np.ndarray, features: Sequence[Feature]) -> np.ndarray:
    """Inverse of :func:`scale`."""
    lo, hi = _bounds(features)
    return np.asarray(z, dtype=float) * (hi - lo) + lo
