"""Risk-model architectures as plain data, and their forward pass in numpy.

The model's parameters travel as a list of numpy arrays in a fixed order (PyTorch's
``state_dict`` order): the coordinator averages them, the node scores with them. This module knows
that layout without importing torch, so scoring a book costs two matmuls, not a torch import.

The network's input is ``u = (z - c) / s`` (:func:`model_input`): the bounds-scaled features
``z`` centred and spread by public reference constants. Layouts (``d = 16``, ``h`` hidden units)::

    logistic : [W (1, d), b (1,)]                       p = σ(u Wᵀ + b)
    mlp      : [W1 (h, d), b1 (h,), W2 (1, h), b2 (1,)] p = σ(relu(u W1ᵀ + b1) W2ᵀ + b2)

>>> import numpy as np
>>> arch = RiskArch(kind="logistic")
>>> p = predict_proba(arch=arch, arrays=[np.zeros((1, 16)), np.zeros(1)], z=np.ones((2, 16)))
>>> p.tolist()
[0.5, 0.5]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Sequence

import numpy as np

from shared.errors import SpecError
from shared.features import FEATURE_NAMES, FEATURES

Kind = Literal["logistic", "mlp"]
N_FEATURES = len(FEATURE_NAMES)

#: Public reference centre and spread per feature (typical adult values, raw units). The network
#: sees u = (z - c) / s, with c and s these references mapped onto the [0, 1] scale. They are
#: constants of the model, estimated from no node's data, and only condition the optimisation:
#: on the bounds scale some features span a few hundredths (glucose, triglycerides), which
#: DP-SGD with clipped gradients and a fixed step budget cannot fit.
REFERENCE: dict[str, tuple[float, float]] = {
    "age": (50, 15),
    "sex": (0.5, 0.5),
    "sbp": (128, 18),
    "dbp": (80, 11),
    "bp_treated": (0.2, 0.4),
    "total_chol": (5.2, 1.1),
    "hdl": (1.35, 0.4),
    "ldl": (3.2, 0.9),
    "triglycerides": (1.5, 0.9),
    "glucose": (5.4, 1.2),
    "diabetes": (0.08, 0.27),
    "smoker": (0.2, 0.4),
    "bmi": (27, 5),
    "waist": (92, 13),
    "family_history": (0.15, 0.36),
    "physical_activity": (15, 12),
}
_REF_MEAN = np.array([REFERENCE[n][0] for n in FEATURE_NAMES], dtype=float)
_REF_SD = np.array([REFERENCE[n][1] for n in FEATURE_NAMES], dtype=float)
_LO = np.array([f.lo for f in FEATURES], dtype=float)
_SPAN = np.array([f.hi - f.lo for f in FEATURES], dtype=float)
CENTER = (_REF_MEAN - _LO) / _SPAN
SPREAD = _REF_SD / _SPAN


def model_input(z: np.ndarray) -> np.ndarray:
    """What the network sees: bounds-scaled features, centred and spread by the references."""
    return (np.asarray(z, dtype=np.float64) - CENTER) / SPREAD


@dataclass(frozen=True)
class RiskArch:
    """Which network: a logistic regression, or an MLP with one hidden ReLU layer."""

    kind: Kind = "logistic"
    hidden: int = 16

    def __post_init__(self) -> None:
        if self.kind not in ("logistic", "mlp"):
            raise SpecError(f"model kind {self.kind!r} is not 'logistic' or 'mlp'")
        if self.kind == "mlp" and not 1 <= self.hidden <= 1024:
            raise SpecError(f"hidden={self.hidden}: an MLP needs 1..1024 hidden units")

    def shapes(self) -> list[tuple[int, ...]]:
        """Parameter shapes in transport order."""
        if self.kind == "logistic":
            return [(1, N_FEATURES), (1,)]
        return [(self.hidden, N_FEATURES), (self.hidden,), (1, self.hidden), (1,)]

    def to_dict(self) -> dict:
        return asdict(self)


def check_arrays(*, arch: RiskArch, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Return ``arrays`` as float64 after checking they fit ``arch``.

    Raises:
        SpecError: wrong number of arrays, a wrong shape, or a non-finite weight.
    """
    want = arch.shapes()
    if len(arrays) != len(want):
        raise SpecError(f"{arch.kind} model needs {len(want)} arrays, got {len(arrays)}")
    out = []
    for i, (a, shape) in enumerate(zip(arrays, want)):
        a = np.asarray(a, dtype=np.float64)
        if a.shape != shape:
            raise SpecError(f"{arch.kind} parameter {i}: shape {a.shape}, expected {shape}")
        if not np.isfinite(a).all():
            raise SpecError(f"{arch.kind} parameter {i} holds a NaN or infinite weight")
        out.append(a)
    return out


def fold_inputs(*, arch: RiskArch, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    r"""Parameters that act on RAW features: the input map folded into the first layer.

    The network sees :math:`u = (x - m)/s` (reference centre ``m`` and spread ``s`` in raw units,
    the composition of bounds scaling and :func:`model_input`), so its first layer ``W u + b``
    equals ``W' x + b'`` with :math:`W' = W\,\mathrm{diag}(1/s)` and :math:`b' = b - W' m`.
    Scoring a raw book then needs no transformed copy of it.
    """
    first_w, first_b, *rest = check_arrays(arch=arch, arrays=arrays)
    w = first_w / _REF_SD
    return [w, first_b - w @ _REF_MEAN, *rest]


def sigmoid(s: np.ndarray) -> np.ndarray:
    """σ(s) = 1/(1 + e^{-s}), computed from e^{-|s|} so it neither overflows nor loses
    relative precision in the tails."""
    e = np.exp(-np.abs(s))
    return np.where(s >= 0, 1.0, e) / (1.0 + e)


def forward_logit(*, arch: RiskArch, arrays: Sequence[np.ndarray], inputs: np.ndarray) -> np.ndarray:
    """The network on its direct inputs ``(n, 16)``: ``u`` for transport-layout arrays, raw
    features for :func:`fold_inputs` arrays."""
    if arch.kind == "logistic":
        w, b = arrays
        return inputs @ w[0] + b[0]
    w1, b1, w2, b2 = arrays
    hidden = inputs @ w1.T
    hidden += b1
    np.maximum(hidden, 0.0, out=hidden)
    return hidden @ w2[0] + b2[0]


def predict_proba(*, arch: RiskArch, arrays: Sequence[np.ndarray], z: np.ndarray) -> np.ndarray:
    """Predicted event probability for bounds-scaled features ``z`` of shape ``(n, 16)``."""
    return sigmoid(forward_logit(arch=arch, arrays=arrays, inputs=model_input(z)))
