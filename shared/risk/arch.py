"""Risk-model architectures as plain data, and their forward pass in numpy.

The model's parameters travel as a list of numpy arrays in a fixed order (PyTorch's
``state_dict`` order): the coordinator averages them, the node scores with them. This module knows
that layout without importing torch, so scoring a book costs two matmuls, not a torch import.

Layouts (``d = 16`` scaled features, ``h`` hidden units)::

    logistic : [W (1, d), b (1,)]                       p = σ(z Wᵀ + b)
    mlp      : [W1 (h, d), b1 (h,), W2 (1, h), b2 (1,)] p = σ(relu(z W1ᵀ + b1) W2ᵀ + b2)

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
from shared.features import FEATURE_NAMES

Kind = Literal["logistic", "mlp"]
N_FEATURES = len(FEATURE_NAMES)


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


def sigmoid(s: np.ndarray) -> np.ndarray:
    """σ(s) = 1/(1 + e^{-s}), computed from e^{-|s|} so it neither overflows nor loses
    relative precision in the tails."""
    e = np.exp(-np.abs(s))
    return np.where(s >= 0, 1.0, e) / (1.0 + e)


def predict_logit(*, arch: RiskArch, arrays: Sequence[np.ndarray], z: np.ndarray) -> np.ndarray:
    """Logit of the event for scaled features ``z`` of shape ``(n, 16)``."""
    if arch.kind == "logistic":
        w, b = arrays
        return z @ w[0] + b[0]
    w1, b1, w2, b2 = arrays
    hidden = z @ w1.T
    hidden += b1
    np.maximum(hidden, 0.0, out=hidden)
    return hidden @ w2[0] + b2[0]


def predict_proba(*, arch: RiskArch, arrays: Sequence[np.ndarray], z: np.ndarray) -> np.ndarray:
    """Predicted event probability for scaled features ``z`` of shape ``(n, 16)``."""
    return sigmoid(predict_logit(arch=arch, arrays=arrays, z=z))
