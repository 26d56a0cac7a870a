"""The risk model in PyTorch, and its exchange with the numpy parameter lists that travel.

It lives on the node's side because only nodes train (and ``shared`` stays free of torch); the
coordinator needs only the architecture description and numpy forward pass of
:mod:`shared.risk.arch`.

Architectures and the numpy forward pass live in :mod:`shared.risk.arch`; this module builds the
matching ``nn.Module`` so a node can train it (with Opacus) and convert weights both ways. The
modules take the network input ``u = model_input(z)`` and return logits; their forward agrees with
:func:`shared.risk.arch.forward_logit` to float precision (tested).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from shared.risk.arch import N_FEATURES, RiskArch, check_arrays


class LogisticRisk(nn.Module):
    """Logistic regression on the 16 scaled features; returns logits."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(N_FEATURES, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z).squeeze(-1)


class MlpRisk(nn.Module):
    """One hidden ReLU layer; returns logits."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(N_FEATURES, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(z))).squeeze(-1)


def build_model(arch: RiskArch, *, seed: int | None = None) -> nn.Module:
    """A fresh model for ``arch``; ``seed`` makes its initial weights reproducible.

    A logistic model starts at zero (the federated starting point every node agrees on);
    an MLP starts from PyTorch's default initialisation, which a zero start would not break.
    """
    if arch.kind == "logistic":
        model: nn.Module = LogisticRisk()
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
        return model
    if seed is not None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return MlpRisk(arch.hidden)
    return MlpRisk(arch.hidden)


def initial_arrays(arch: RiskArch, *, seed: int = 0) -> list[np.ndarray]:
    """The starting parameters a coordinator sends in round 1."""
    return to_arrays(build_model(arch, seed=seed))


def _unwrap(model: nn.Module) -> nn.Module:
    # Opacus wraps the module in GradSampleModule; its parameters are those of ``_module``.
    return getattr(model, "_module", model)


def to_arrays(model: nn.Module) -> list[np.ndarray]:
    """Parameters as float64 numpy arrays in ``state_dict`` order (the transport layout)."""
    return [t.detach().cpu().numpy().astype(np.float64) for t in _unwrap(model).state_dict().values()]


def from_arrays(model: nn.Module, arrays: Sequence[np.ndarray], *, arch: RiskArch) -> nn.Module:
    """Load transport-layout ``arrays`` into ``model`` (in place) and return it.

    Raises:
        SpecError: the arrays do not fit ``arch``.
    """
    arrays = check_arrays(arch=arch, arrays=arrays)
    inner = _unwrap(model)
    keys = list(inner.state_dict().keys())
    state = {k: torch.as_tensor(a, dtype=torch.float32) for k, a in zip(keys, arrays)}
    inner.load_state_dict(state, strict=True)
    return model
