r"""The PSM sufficient-statistics table: per stratum × arm, count and first/second sums (and,
in an exact study's answer, the outcomes' third and fourth power sums).

A node computes one table over its rows at the final β and agreed edges
(:func:`psm_table`); tables add cell by cell across nodes (:meth:`PsmTable.merge`), and the
estimator needs nothing else. Outcomes are clipped to their public ``[lo, cap]`` and rescaled to
[0, 1] first (:func:`scale_outcomes`) and covariates are scaled to [0, 1], so a row changes any
entry by at most 1 and the whole table's L2 sensitivity is :math:`\sqrt{1 + 2O + 2D}`.

Arm index 0 = control, 1 = treated. Under DP noise is added to these arrays, so counts may be
fractional or negative; :mod:`shared.psm.estimator` documents how it copes.

>>> import numpy as np
>>> z = np.array([[0.1], [0.9], [0.5]]); t = np.array([0, 1, 1]); y = np.array([[0.0], [1.0], [0.5]])
>>> tab = psm_table(z=z, t=t, y=y, beta=np.array([0.0, 1.0]), edges=np.array([-np.inf, 0.5, np.inf]))
>>> tab.count.tolist()
[[1.0, 0.0], [0.0, 2.0]]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.errors import DataError
from shared.psm._checks import check_beta, check_t, check_unit_outcomes, check_z, require_keys
from shared.psm.strata import stratum_index

__all__ = ["HIGHER", "PsmTable", "psm_table", "scale_outcomes", "unscale_outcomes"]

_ARRAYS = ("edges", "count", "sum_y", "sumsq_y", "sum_z", "sumsq_z")
#: The outcomes' third and fourth power sums per cell: released in exact answers only (no DP
#: release names them), for the skewness-corrected CI (:mod:`shared.psm.skew`).
HIGHER = ("sum3_y", "sum4_y")


@dataclass(frozen=True)
class PsmTable:
    """Additive per stratum × arm statistics (S strata, O outcomes, D covariates).

    Attributes:
        edges: ``(S + 1,)`` logit-score edges (outer ±inf).
        count: ``(S, 2)`` rows.
        sum_y, sumsq_y: ``(S, 2, O)`` Σy and Σy² of the [0, 1]-scaled outcomes.
        sum_z, sumsq_z: ``(S, 2, D)`` Σz and Σz² of the [0, 1]-scaled covariates.
        sum3_y, sum4_y: ``(S, 2, O)`` Σy³ and Σy⁴ of the scaled outcomes, or None (a DP table,
            or a site that withholds them, :func:`shared.answer.suppress_small_cells`): the CI is
            then the Wald interval.
    """

    edges: np.ndarray
    count: np.ndarray
    sum_y: np.ndarray
    sumsq_y: np.ndarray
    sum_z: np.ndarray
    sumsq_z: np.ndarray
    sum3_y: np.ndarray | None = None
    sum4_y: np.ndarray | None = None

    def __post_init__(self) -> None:
        s = self.edges.shape[0] - 1
        o, d = self.sum_y.shape[-1], self.sum_z.shape[-1]
        want = {
            "count": (s, 2),
            "sum_y": (s, 2, o),
            "sumsq_y": (s, 2, o),
            "sum_z": (s, 2, d),
            "sumsq_z": (s, 2, d),
            **{k: (s, 2, o) for k in HIGHER if getattr(self, k) is not None},
        }
        if (self.sum3_y is None) != (self.sum4_y is None):
            raise DataError("PsmTable holds one of sum3_y and sum4_y without the other", field="sum3_y")
        for name, shape in want.items():
            if getattr(self, name).shape != shape:
                raise DataError(
                    f"PsmTable.{name} has shape {getattr(self, name).shape}, expected {shape} for {s} strata",
                    field=name,
                )

    @property
    def n_strata(self) -> int:
        return int(self.count.shape[0])

    @property
    def has_higher(self) -> bool:
        """Whether the table holds the outcomes' third and fourth power sums."""
        return self.sum3_y is not None

    @property
    def n_outcomes(self) -> int:
        return int(self.sum_y.shape[-1])

    @property
    def n_covariates(self) -> int:
        return int(self.sum_z.shape[-1])

    def merge(self, other: "PsmTable") -> "PsmTable":
        """Cell-wise sum; both tables must be over the same edges. The higher power sums are
        kept only if both tables hold them (one site's withholding them withholds the sum's).

        Raises:
            DataError: edges or dimensions differ.
        """
        if self.edges.shape != other.edges.shape or not np.array_equal(self.edges, other.edges):
            raise DataError("cannot merge PSM tables over different stratum edges", field="edges")
        if (self.n_outcomes, self.n_covariates) != (other.n_outcomes, other.n_covariates):
            raise DataError("cannot merge PSM tables with different outcomes or covariates")
        keys = _ARRAYS[1:] + (HIGHER if self.has_higher and other.has_higher else ())
        return PsmTable(edges=self.edges, **{k: getattr(self, k) + getattr(other, k) for k in keys})

    __add__ = merge

    def to_arrays(self) -> dict[str, np.ndarray]:
        keys = _ARRAYS + (HIGHER if self.has_higher else ())
        return {k: np.array(getattr(self, k), dtype=float) for k in keys}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "PsmTable":
        """Inverse of :meth:`to_arrays` (the higher power sums when both are present); other
        keys are ignored.

        Raises:
            DataError: a key is missing or the shapes disagree.
        """
        require_keys(arrays, _ARRAYS, "PsmTable")
        keys = _ARRAYS + (HIGHER if all(k in arrays for k in HIGHER) else ())
        return cls(**{k: np.asarray(arrays[k], dtype=float) for k in keys})


def psm_table(*, z, t, y, beta, edges, names=None) -> PsmTable:
    """A node's table at ``beta`` over ``edges``.

    Args:
        z: ``(n, d)`` covariates scaled to [0, 1].
        t: ``(n,)`` treatment 0/1.
        y: ``(n, O)`` outcomes already clipped and rescaled to [0, 1] (:func:`scale_outcomes`).
        beta: ``(d + 1,)`` final propensity coefficients, intercept first.
        edges: strictly increasing stratum edges covering every score (outer ±inf).
        names: optional covariate names for error messages.

    Raises:
        DataError: NaN, bad shapes, ``t`` not 0/1, ``y`` outside [0, 1], bad edges.
        CovariateBoundsError: a covariate outside [0, 1].
    """
    z = check_z(z, names=names)
    n, d = z.shape
    t = check_t(t, n=n)
    y = check_unit_outcomes(y, n=n)
    beta = check_beta(beta, p=d + 1)
    edges = np.asarray(edges, dtype=float)
    b = stratum_index(beta[0] + z @ beta[1:], edges)
    n_cells = 2 * (edges.size - 1)
    cell = 2 * b + t.astype(np.int64)

    def cell_sums(cols: np.ndarray) -> np.ndarray:
        out = np.empty((n_cells, cols.shape[1]))
        for j in range(cols.shape[1]):
            out[:, j] = np.bincount(cell, weights=cols[:, j], minlength=n_cells)
        return out.reshape(-1, 2, cols.shape[1])

    return PsmTable(
        edges=edges.copy(),
        count=np.bincount(cell, minlength=n_cells).astype(float).reshape(-1, 2),
        sum_y=cell_sums(y),
        sumsq_y=cell_sums(y * y),
        sum_z=cell_sums(z),
        sumsq_z=cell_sums(z * z),
        sum3_y=cell_sums(y**3),
        sum4_y=cell_sums(y**4),
    )


def scale_outcomes(*, y, lo, cap, names=None) -> tuple[np.ndarray, np.ndarray]:
    """Clip outcomes to their public ``[lo, cap]`` and rescale to [0, 1].

    Clipping (not rejecting) is deliberate for outcomes: caps bound heavy-tailed costs so one
    person's influence is bounded; how many values were clipped is returned for the report.

    Args:
        y: ``(n, O)`` raw outcomes (a 1-D array is one outcome).
        lo, cap: ``(O,)`` public bounds, ``cap > lo``.
        names: optional outcome names for error messages.

    Returns:
        ``(y01, n_clipped)``: scaled outcomes and the per-outcome count of clipped values.

    Raises:
        DataError: NaN/infinite value (naming row and outcome) or bad bounds.
    """
    y = np.asarray(y, dtype=float)
    if y.ndim == 1:
        y = y[:, None]
    lo = np.asarray(lo, dtype=float).reshape(-1)
    cap = np.asarray(cap, dtype=float).reshape(-1)
    if y.ndim != 2 or lo.shape != (y.shape[1],) or cap.shape != lo.shape:
        raise DataError(f"outcomes {y.shape} do not match bounds lo {lo.shape}, cap {cap.shape}")
    if not np.all(cap > lo):
        raise DataError("every outcome cap must exceed its lower bound")
    names = list(names) if names is not None else [f"y[{k}]" for k in range(y.shape[1])]
    bad = ~np.isfinite(y)
    if bad.any():
        r, c = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(f"row {r}: outcome {names[c]} is missing or not a number", row=r, field=names[c])
    n_clipped = ((y < lo) | (y > cap)).sum(axis=0)
    return (np.clip(y, lo, cap) - lo) / (cap - lo), n_clipped


def unscale_outcomes(*, y01, lo, cap) -> np.ndarray:
    """Inverse of :func:`scale_outcomes` for values (means): ``lo + y01 * (cap - lo)``.
    Differences and SEs scale by ``cap - lo`` alone."""
    lo = np.asarray(lo, dtype=float)
    cap = np.asarray(cap, dtype=float)
    return lo + np.asarray(y01, dtype=float) * (cap - lo)
