"""A study round's releases as one SecAgg+ input vector: the layout and scale both sides share.

Under secure aggregation (``[privacy] secure_aggregation``) every release after describe travels
through Flower's SecAgg+ (``SecAggPlusWorkflow`` / ``secaggplus_mod``), which sums fixed-point
vectors in [-CLIP, CLIP]. A node packs its noisy arrays into one float vector divided by the
round's public scale; the coordinator unpacks the sum. The scale comes from describe's noisy
row count (:func:`secure_scale`), so every entry — a count, a centred sum, a Hessian entry,
each at most the node's row count in magnitude, plus noise — lands inside the range, and the
fixed-point step (2·CLIP·scale / 2²², about 10⁻⁶ of the row count) is far below any noise σ.

>>> import numpy as np
>>> answers = {"ps_fit": {"g": np.array([3.0, -1.5]), "H": np.eye(2)}}
>>> vec, layout = pack(answers, scale=10.0)
>>> [tuple(x) for x in layout]
[('ps_fit', 'H', (2, 2)), ('ps_fit', 'g', (2,))]
>>> unpack(vec * 10.0, layout)["ps_fit"]["g"].tolist()
[3.0, -1.5]
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np

from shared.errors import PrivacyError

log = logging.getLogger("rehealth.node")

#: The key under which a secure round's answers hold the sum (no site is named so).
SECURE_SUM = "(secure sum)"
#: SecAggPlusWorkflow's clipping range: inputs must lie in [-CLIP, CLIP].
CLIP = 8.0
#: Noise SDs of margin above the row count in :func:`secure_scale` (a Gaussian entry exceeds
#: it with probability about 10⁻¹⁵).
NOISE_MARGIN_SD = 8.0

Layout = Sequence[tuple[str, str, tuple[int, ...]]]

#: Releases every node makes in the clear even under secure aggregation: describe's noisy counts
#: set the scale of the secure sums that follow.
PLAIN_RELEASES = frozenset({"describe"})


def secured(release: str) -> bool:
    """Whether ``release`` travels as a SecAgg+ sum in a secure-aggregation study."""
    return release not in PLAIN_RELEASES


def pack(
    answers: Mapping[str, Mapping[str, np.ndarray]], *, scale: float, layout: Layout | None = None
) -> tuple[np.ndarray, list]:
    """One vector of every array of ``answers`` over ``scale``, in the order of ``layout``
    (default: operations, then keys, sorted). A study round passes the wire contract's order
    (:func:`protos.codec.secure_layout`), so both sides derive it from the .proto.

    An entry outside [-CLIP, CLIP] (the coordinator's scale was set too small) is clipped to
    it, as SecAgg+ would, and only the node's log says how many: refusing in the clear would
    tell the coordinator a threshold of this node's own input, which carries only its 1/√K
    share of the noise and is never to be seen (tests/security/test_answer_oracles.py).
    """
    if layout is None:
        layout = [
            (op, key, tuple(np.shape(answers[op][key])))
            for op in sorted(answers)
            for key in sorted(answers[op])
        ]
    vec = np.concatenate([np.asarray(answers[op][key], dtype=float).ravel() for op, key, _ in layout]) / scale
    over = ~(np.abs(vec) <= CLIP)
    if over.any():
        log.warning(
            "%d of %d secure-sum entries exceed the range at the round's scale %g: clipped "
            "(the coordinator's scale is too small for this node's rows)",
            int(over.sum()),
            vec.size,
            scale,
        )
        vec = np.clip(np.nan_to_num(vec, nan=0.0), -CLIP, CLIP)
    return vec, [list(x) for x in layout]


def unpack(vec: np.ndarray, layout: Layout) -> dict[str, dict[str, np.ndarray]]:
    """Inverse of :func:`pack`'s flattening (the caller has multiplied the scale back)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    at = 0
    for op, key, shape in layout:
        size = int(np.prod(shape, dtype=int))
        out.setdefault(op, {})[key] = np.asarray(vec[at : at + size], dtype=float).reshape(shape)
        at += size
    if at != len(vec):
        raise PrivacyError(f"secure sum of {len(vec)} values does not match its layout ({at})")
    return out


def secure_scale(*, rows_upper: float, sigma_max: float) -> float:
    """The public scale that keeps every node's entries within [-CLIP/2, CLIP/2].

    Args:
        rows_upper: an upper bound on any node's row count (describe's noisy total plus a
            margin): no entry of a study answer exceeds a node's row count in magnitude.
        sigma_max: the largest per-node noise SD of the remaining releases.
    """
    return 2.0 * (max(float(rows_upper), 1.0) + NOISE_MARGIN_SD * float(sigma_max)) / CLIP
