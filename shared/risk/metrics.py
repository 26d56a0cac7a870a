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

from shared.dp.accounting import DEFAULT_ACCOUNTANT
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
        return EvalAggregate(
            pos=self.pos + other.pos,
            neg=self.neg + other.neg,
            sum_p=self.sum_p + other.sum_p,
            sq_err=self.sq_err + other.sq_err,
        )

    def to_arrays(self) -> list[np.ndarray]:
        """Transport layout: ``[pos, neg, sum_p, [sq_err]]`` (float64)."""
        return [np.asarray(a, dtype=np.float64) for a in (self.pos, self.neg, self.sum_p, [self.sq_err])]

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
        return {
            "n": self.n,
            "events": self.events,
            "auc": self.auc,
            "brier": self.brier,
            "calibration": [vars(c) for c in self.calibration],
        }


def clean_scores(*, prob: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Probabilities clipped to [0, 1] (NaN → ½) and rows whose outcome is not 0/1 dropped.

    Nothing about a row or a value is ever an error: on a node this runs *after* the release
    was charged, and its counts go to the node's own log only. Neither step can move a
    row's contribution beyond :data:`EVAL_SENSITIVITY` (a dropped row contributes nothing).

    Returns:
        ``(prob, y, n_clipped, n_dropped)``.

    Raises:
        DataError: ``prob`` and ``y`` differ in length (a code error, no value named).
    """
    prob = np.asarray(prob, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if prob.shape != y.shape:
        raise DataError(f"{prob.size} probabilities but {y.size} outcomes")
    bad_p = ~((prob >= 0) & (prob <= 1))
    prob = np.clip(np.where(np.isnan(prob), 0.5, prob), 0.0, 1.0)
    keep = (y == 0) | (y == 1)
    return prob[keep], y[keep], int(bad_p.sum()), int((~keep).sum())


def eval_aggregate(*, prob: np.ndarray, y: np.ndarray, n_bins: int = DEFAULT_BINS) -> EvalAggregate:
    """A node's aggregate from its predicted probabilities and 0/1 outcomes.

    Probabilities outside [0, 1] are clipped (NaN counts as ½) and rows whose outcome is not
    0/1 are left out (:func:`clean_scores`): no error names a row or echoes a value.

    Raises:
        DataError: ``prob`` and ``y`` differ in length.
    """
    prob, y, _, _ = clean_scores(prob=prob, y=y)
    idx = np.minimum((prob * n_bins).astype(np.int64), n_bins - 1)
    pos = np.bincount(idx, weights=y, minlength=n_bins)
    tot = np.bincount(idx, minlength=n_bins).astype(np.float64)
    sum_p = np.bincount(idx, weights=prob, minlength=n_bins)
    return EvalAggregate(pos=pos, neg=tot - pos, sum_p=sum_p, sq_err=float(np.sum((prob - y) ** 2)))


#: L2 sensitivity of one node's aggregate under add/remove-one-row neighbours. A row with
#: predicted probability p ∈ [0, 1] (clipped) and outcome y ∈ {0, 1} lands in exactly one bin b:
#: it adds 1 to ``pos[b]`` or ``neg[b]``, p to ``sum_p[b]`` and (p − y)² to ``sq_err``, and
#: nothing elsewhere. So Δ₂² = 1 + p² + (p − y)²; for y = 1 that is 1 + p² + (1 − p)² ≤ 2,
#: for y = 0 it is 1 + 2p² ≤ 3 (attained at p = 1). Hence :math:`\Delta_2 = \sqrt{3}`, tight.
#: (Releasing ``sum_p`` centred on each bin's midpoint and ``sq_err`` centred on ½ would bring
#: it to about 1.12; not done here, the transport form stays uncentred.)
EVAL_SENSITIVITY = float(np.sqrt(3.0))


def eval_noise_sigma(*, epsilon: float, delta: float, accountant: str = DEFAULT_ACCOUNTANT) -> float:
    r"""Noise SD per entry of one node's evaluation release at (``epsilon``, ``delta``):
    :math:`\sigma = \mu\,\Delta_2` with μ from :func:`shared.dp.plan.single_release_multiplier`
    (the accountant the node's ledger charges with), so the charge is at most ε on a fresh
    budget. Node and coordinator compute the same σ from the job's public parameters.

    Raises:
        PrivacyError: ε or δ out of range.
    """
    from shared.dp.plan import single_release_multiplier

    return single_release_multiplier(epsilon=epsilon, delta=delta, accountant=accountant) * EVAL_SENSITIVITY


def noisy_aggregate(agg: EvalAggregate, *, sigma: float, rng: np.random.Generator) -> EvalAggregate:
    r"""The aggregate with i.i.d. :math:`\mathcal N(0, \sigma^2)` noise on every entry.

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
    """Tie-corrected AUC from the merged histograms (pairs in one bin count ½); noisy bin counts
    are clamped at 0 first.

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
    """Mean squared error of the predicted probability.

    On a noisy aggregate the row count is the sum of the bin counts clamped at 0 per bin, and
    the ratio is clamped to [0, 1] (its true range); both are post-processing.

    Raises:
        EstimationError: no rows (after clamping).
    """
    n = float(np.sum(np.clip(agg.pos + agg.neg, 0, None)))
    if n < 1:
        raise EstimationError("Brier score of an empty evaluation set")
    return float(np.clip(agg.sq_err / n, 0.0, 1.0))


def calibration_by_decile(agg: EvalAggregate, *, groups: int = 10) -> tuple[CalibrationBin, ...]:
    """Mean predicted risk vs observed rate per global decile of predicted risk.

    A bin goes wholly to the decile holding the midpoint of its rows in the pooled ranking, so a
    decile may be empty (then omitted) when a single bin holds more than a tenth of the rows.
    On a noisy aggregate, bin counts are clamped at 0 and the per-decile mean predicted risk and
    observed rate at [0, 1] (post-processing; a decile with less than one row is omitted).
    """
    tot = np.clip(agg.pos + agg.neg, 0, None)  # noisy aggregates may hold negative counts
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
        out.append(
            CalibrationBin(
                decile=g + 1,
                n=float(cnt),
                mean_predicted=float(np.clip(agg.sum_p[sel].sum() / cnt, 0, 1)),
                observed_rate=float(np.clip(agg.pos[sel].sum() / cnt, 0, 1)),
                p_lo=float(edges[0] * width),
                p_hi=float((edges[-1] + 1) * width),
            )
        )
    return tuple(out)


def evaluate(agg: EvalAggregate) -> EvalReport:
    """AUC, Brier score and decile calibration of a pooled aggregate.

    Works on noisy aggregates (sums of the nodes' DP releases): ``n`` and ``events`` are the
    sums of the bin counts clamped at 0 per bin, the AUC uses clamped counts
    (:func:`pooled_auc`), the Brier score and calibration clamp as documented there. Clamping
    is post-processing of the releases; it costs no privacy but biases small cells upward.
    """
    tot = np.clip(agg.pos + agg.neg, 0, None)
    return EvalReport(
        n=float(tot.sum()),
        events=float(np.clip(agg.pos, 0, None).sum()),
        auc=pooled_auc(agg),
        brier=brier_score(agg),
        calibration=calibration_by_decile(agg),
    )
