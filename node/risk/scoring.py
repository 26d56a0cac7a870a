"""Vectorised scoring of a whole book: raw features in, probability and tier out.

A :class:`Scorer` extracts the weights once and folds the public-bounds scaling into the first
layer (:func:`shared.risk.arch.fold_inputs`), so a logistic model scores a book with one
bounds check and one matrix-vector product — no torch, no per-row Python. Scores stay at the node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from node.files import private_output
from node.risk.model_store import StoredModel
from shared.errors import DataError
from shared.features import FEATURE_NAMES, FEATURES, check_bounds
from shared.risk.arch import RiskArch, fold_inputs, forward_logit, sigmoid
from shared.risk.tiers import TIERS, check_cutoffs, tier_index

#: Identifier and grouping columns carried from the book to the scored output when present.
PASSTHROUGH = ("person_id", "pseudonym", "site", "department", "job_type", "age_band")
_TIER_ARRAY = np.array(TIERS)


@dataclass(frozen=True)
class Scores:
    """Scores of a batch: probability and tier index per row (tier names via ``tiers``)."""

    prob: np.ndarray
    tier_idx: np.ndarray

    @property
    def tiers(self) -> np.ndarray:
        return _TIER_ARRAY[self.tier_idx]


@dataclass(frozen=True)
class Scorer:
    """A stored model ready to score raw feature matrices."""

    version: str
    arch: RiskArch
    cutoffs: tuple[float, float, float]
    _raw_arrays: list[np.ndarray] = field(repr=False)

    @classmethod
    def from_model(cls, model: StoredModel, *, cutoffs: Sequence[float] | None = None) -> "Scorer":
        """Prepare ``model``; ``cutoffs`` override the tiers recorded with it."""
        cut = check_cutoffs(model.record.cutoffs if cutoffs is None else cutoffs)
        raw = fold_inputs(arch=model.arch, arrays=model.arrays)
        return cls(version=model.version, arch=model.arch, cutoffs=cut, _raw_arrays=raw)

    def score(self, x: np.ndarray, *, row_offset: int = 0) -> Scores:
        """Score ``(n, 16)`` raw features in ``FEATURE_NAMES`` order.

        Raises:
            DataError / CovariateBoundsError: names the first bad row and feature.
        """
        x = np.asarray(x, dtype=np.float64)
        check_bounds(x, FEATURES, row_offset=row_offset)
        prob = sigmoid(forward_logit(arch=self.arch, arrays=self._raw_arrays, inputs=x))
        return Scores(prob=prob, tier_idx=tier_index(prob, cutoffs=self.cutoffs))


def feature_matrix(book: pd.DataFrame) -> np.ndarray:
    """The 16 feature columns of ``book`` as a float matrix.

    Raises:
        DataError: a feature column is missing, or a value is not a number (names row, field).
    """
    missing = [c for c in FEATURE_NAMES if c not in book.columns]
    if missing:
        raise DataError(f"book lacks feature column(s): {', '.join(missing)}", field=missing[0])
    cols = []
    for name in FEATURE_NAMES:
        col = book[name]
        if not pd.api.types.is_numeric_dtype(col):
            num = pd.to_numeric(col, errors="coerce")
            bad = num.isna() & col.notna()
            if bad.any():
                r = int(np.argmax(bad.to_numpy()))
                # the value itself is not quoted: error texts may travel further than the node
                raise DataError(f"row {r}: {name} is not a number", row=r, field=name)
            col = num
        cols.append(col.to_numpy(dtype=np.float64, na_value=np.nan))
    return np.column_stack(cols)


def score_book(book: pd.DataFrame, scorer: Scorer) -> pd.DataFrame:
    """Scored book: passthrough id/group columns, ``probability``, ``tier``, ``model_version``."""
    s = scorer.score(feature_matrix(book))
    out = book[[c for c in PASSTHROUGH if c in book.columns]].reset_index(drop=True).copy()
    out["probability"] = s.prob
    out["tier"] = pd.Categorical.from_codes(s.tier_idx, categories=list(TIERS))
    out["model_version"] = scorer.version
    return out


def read_book(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet book (by extension).

    Raises:
        DataError: unknown extension or unreadable file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read book {path}: {e}") from None
    raise DataError(f"book {path}: expected a .csv or .parquet file")


def write_scores(scored: pd.DataFrame, path: str | Path) -> None:
    """Write scores as CSV or Parquet (by extension), mode 0600: per-person scores are for the
    node's own staff, not for another account on its host."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise DataError(f"output {path}: expected a .csv or .parquet file")
    with private_output(path) as f:
        if suffix == ".csv":
            scored.to_csv(f, index=False)
        else:
            scored.to_parquet(f, index=False)
