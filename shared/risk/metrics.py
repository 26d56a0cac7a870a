"""Federated evaluation of the risk model from additive node aggregates.

Each node scores its held-out rows and returns only an :class:`EvalAggregate`: per bin of a fixed
probability grid (``n_bins`` equal bins on [0, 1]) the number of events, of non-events and the sum
of predicted probabilities, plus the sum of squared errors. Aggregates merge by addition, so the
coordinator's pooled metrics are those of the pooled rows, up to the grid resolution:

- **AUC** (Mann–Whitney): :math:`\\sum_b P_b (N_{<b} + N_b/2) / (P\\,N)`, where pairs in the same
  bin count as ties. Its error against the exact AUC is at most
  :math:`\\sum_b P_b N_b / (2PN)` (tested against ``sklearn.metrics.roc_auc_score``).
- **Brier score**: :math:`\\frac1n \\sum_i (p_i - y_i)^2`, exact.
- **Calibration by decile**: bins are grouped into global deciles of the pooled predicted risk
  (from the merged histogram); per decile, mean predicted risk vs observed event rate.

>>> import numpy as np
>>> a = eval_aggregate(prob=np.array([0.1, 0.9]), y=np.array([0, 1]))
>>> evaluate(a).auc
1.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from shared.errors import DataError, EstimationError, SpecError

DEFAULT_BINS = 1000


@dataclass(frozen=True)
class EvalAggregate:
    """Additive evaluation statistics of one node (or of several, merged).

    Attributes:
        pos: events per probability bin, shape ``(n_bins,)``.
        neg: non-events per probability bin.
        sum_p: sum of predicted probabilities per bin.
        sq_err: :math:`\\sum_i (p_i - y_i)^2`.
    """

    pos: np.ndarray
    neg: np.ndarray
    sum_p: np.ndarray
    sq_err: float

    def __post_init__(self) -> None:
        shapes = {np.shape(self.pos), np.shape(self.neg), np.shape(self.sum_p)}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise SpecError(f"evaluation aggregate: bin arrays differ in shape {shapes}")

    @property
    def n_bins(self) -> int:
        return int(np.shape(self.pos)[0])

    @property
    def n(self) -> float:
        return float(np.sum(self.pos) + np.sum(self.neg))

    @property
    def events(self) -> float:
        return float(np.sum(self.pos))

    def merge(self, other: "EvalAggregate") -> "EvalAggregate":
        """Sum of two aggregates on the same grid (associative, commutative)."""
        if other.n_bins != self.n_bins:
            raise SpecError(f"cannot merge aggregates on {self.n_bins} and {other.n_bins} bins")
        return EvalAggregate(pos=self.pos + other.pos, neg=self.neg + other.neg,
                             sum_p=self.sum_p + other.sum_p, sq_err=self.sq_err + other.sq_err)

    def to_arrays(self) -> list[np.ndarray]:
        """Transport layout: ``[pos, neg, sum_p, [sq_err]]`` (float64)."""
        return [np.asarray(a, dtype=np.float64)
                for a in (self.pos, self.neg, self.sum_p, [self.sq_err])]

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray]) -> "EvalAggregate":
        if len(arrays) != 4 or np.size(arrays[3]) != 1:
            raise SpecError("evaluation aggregate: expected [pos, neg, sum_p, [sq_err]]")
        pos, neg, sum_p, sq = (np.asarray(a, dtype=np.float64) for a in arrays)
        return cls(pos=pos, neg=neg, sum_p=sum_p, sq_err=float(sq.reshape(-1)[0]))


@dataclass(frozen=True)
class CalibrationBin:
    """One global decile of predicted risk."""

    decile: int
    n: float
    mean_predicted: float
    observed_rate: float
    p_lo: float
    p_hi: float


@dataclass(frozen=True)
class EvalReport:
    """Pooled evaluation: AUC, Brier score and calibration by decile."""

    n: float
    events: float
    auc: float
    brier: float
    calibration: tuple[CalibrationBin, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {"n": self.n, "events": self.events, "auc": self.auc, "brier": self.brier,
                "calibration": [vars(c) for c in self.calibration]}


def eval_aggregate(*, prob: np.ndarray, y: np.ndarray, n_bins: int = DEFAULT_BINS) -> EvalAggregate:
    """A node's aggregate from its predicted probabilities and 0/1 outcomes.

    Raises:
        DataError: names the first row whose probability is outside [0, 1] / NaN or whose
            outcome is not 0/1.
    """
    prob = np.asarray(prob, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if prob.shape != y.shape:
        raise DataError(f"{prob.size} probabilities but {y.size} outcomes")
    bad = ~((prob >= 0) & (prob <= 1))
    if bad.any():
        r = int(np.argmax(bad))
        raise DataError(f"row {r}: probability {prob[r]} is not in [0, 1]", row=r, field="prob")
    bad = (y != 0) & (y != 1)
    if bad.any():
        r = int(np.argmax(bad))
        raise DataError(f"row {r}: outcome {y[r]} is not 0 or 1", row=r, field="cv_event")
    idx = np.minimum((prob * n_bins).astype(np.int64), n_bins - 1)
    pos = np.bincount(idx, weights=y, minlength=n_bins)
    tot = np.bincount(idx, minlength=n_bins).astype(np.float64)
    sum_p = np.bincount(idx, weights=prob, minlength=n_bins)
    return EvalAggregate(pos=pos, neg=tot - pos, sum_p=sum_p,
                         sq_err=float(np.sum((prob - y) ** 2)))


#: L2 sensitivity of one node's aggregate: a row adds 1 to one ``pos``/``neg`` bin, at most 1 to
#: that bin's ``sum_p`` and at most 1 to ``sq_err``, so :math:`\Delta_2 \le \sqrt{3}`.
EVAL_SENSITIVITY = float(np.sqrt(3.0))


def noisy_aggregate(agg: EvalAggregate, *, sigma: float,
                    rng: np.random.Generator) -> EvalAggregate:
    """The aggregate with i.i.d. :math:`\mathcal N(0, \sigma^2)` noise on every entry.

    The Gaussian mechanism at noise multiplier ``sigma / EVAL_SENSITIVITY``; charge that to the
    node's ledger before release. Noise goes on every bin, empty ones included.

    Raises:
        SpecError: ``sigma`` not positive.
    """
    if not sigma > 0:
        raise SpecError(f"evaluation noise sigma must be positive, got {sigma!r}")
    noise = [rng.normal(0.0, sigma, size=np.shape(a)) for a in agg.to_arrays()]
    return EvalAggregate.from_arrays([a + e for a, e in zip(agg.to_arrays(), noise)])


def merge_aggregates(aggs: Iterable[EvalAggregate]) -> EvalAggregate:
    """Pool the nodes' aggregates (their sum)."""
    aggs = list(aggs)
    if not aggs:
        raise EstimationError("no evaluation aggregates to pool")
    out = aggs[0]
    for a in aggs[1:]:
        out = out.merge(a)
    return out


def pooled_auc(agg: EvalAggregate) -> float:
    """Tie-corrected AUC from the merged histograms (pairs in one bin count ½).

    Raises:
        EstimationError: no events or no non-events.
    """
    pos = np.clip(agg.pos, 0, None)
    neg = np.clip(agg.neg, 0, None)
    p_tot, n_tot = pos.sum(), neg.sum()
    if p_tot <= 0 or n_tot <= 0:
        raise EstimationError("AUC needs both events and non-events")
    neg_below = np.cumsum(neg) - neg
    return float(np.sum(pos * (neg_below + 0.5 * neg)) / (p_tot * n_tot))


def brier_score(agg: EvalAggregate) -> float:
    """Mean squared error of the predicted probability."""
    if agg.n <= 0:
        raise EstimationError("Brier score of an empty evaluation set")
    return agg.sq_err / agg.n


def calibration_by_decile(agg: EvalAggregate, *, groups: int = 10) -> tuple[CalibrationBin, ...]:
    """Mean predicted risk vs observed rate per global decile of predicted risk.

    A bin goes wholly to the decile holding the midpoint of its rows in the pooled ranking, so a
    decile may be empty (then omitted) when a single bin holds more than a tenth of the rows.
    """
    tot = np.clip(agg.pos + agg.neg, 0, None)   # noisy aggregates may hold negative counts
    n = tot.sum()
    if n <= 0:
        raise EstimationError("calibration of an empty evaluation set")
    mid = np.cumsum(tot) - 0.5 * tot
    group = np.minimum((groups * mid / n).astype(np.int64), groups - 1)
    width = 1.0 / agg.n_bins
    out = []
    for g in range(groups):
        sel = (group == g) & (tot > 0)
        if not sel.any():
            continue
        cnt = tot[sel].sum()
        if cnt < 1:
            continue
        edges = np.flatnonzero(sel)
        out.append(CalibrationBin(decile=g + 1, n=float(cnt),
                                  mean_predicted=float(agg.sum_p[sel].sum() / cnt),
                                  observed_rate=float(agg.pos[sel].sum() / cnt),
                                  p_lo=float(edges[0] * width), p_hi=float((edges[-1] + 1) * width)))
    return tuple(out)


def evaluate(agg: EvalAggregate) -> EvalReport:
    """AUC, Brier score and decile calibration of a pooled aggregate."""
    return EvalReport(n=agg.n, events=agg.events, auc=pooled_auc(agg), brier=brier_score(agg),
                      calibration=calibration_by_decile(agg))
