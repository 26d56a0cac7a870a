"""Local DP-SGD training of the risk model with Opacus, one federated round at a time.

A node trains on its own rows only and returns new weights plus what its privacy ledger must
record. Each run is the subsampled Gaussian mechanism applied ``steps`` times with Poisson
sampling rate ``q`` and noise multiplier ``σ`` (per-sample gradients clipped to ``max_grad_norm``,
Abadi et al., 2016). Because Flower runs every message in a fresh process, no accountant is kept in
memory: :class:`DpSgdSpend` carries ``(σ, q, steps)`` — the entry of an Opacus accountant's
``history`` — and :func:`composed_epsilon` recomputes ε over all rounds from the stored history.

Across ``R`` rounds the budget composes; :func:`plan_noise` gives the σ that spends a total
``target_epsilon`` over all rounds, so every round can use the same σ.

Notes:
    Opacus's ``secure_mode`` (noise hardened against floating-point attacks) needs
    ``torchcsprng``, which is not available here; without a ``seed`` the noise and sampling
    generators are seeded from the OS CSPRNG instead.
"""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier
from torch.utils.data import DataLoader, TensorDataset

from node.risk.model import build_model, from_arrays, to_arrays
from shared.errors import DataError, SpecError
from shared.features import FEATURES, scale
from shared.risk.arch import RiskArch, model_input

Accountant = str  # "rdp" | "prv"
_ACCOUNTANTS = ("rdp", "prv")
_OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


@dataclass(frozen=True)
class DpSgdSpend:
    """The privacy cost of one local DP-SGD run, in the form a ledger persists.

    Attributes:
        noise_multiplier: σ, noise std divided by the clipping norm.
        sample_rate: q, the Poisson sampling probability of each row per step.
        steps: number of noisy steps taken.
        delta: δ at which ``epsilon`` is stated.
        epsilon: ε of this run alone (composition over rounds: :func:`composed_epsilon`).
        accountant: "rdp" or "prv".
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    epsilon: float
    accountant: Accountant

    def history_entry(self) -> tuple[float, float, int]:
        """``(σ, q, steps)``: one entry of an Opacus accountant's ``history``."""
        return (self.noise_multiplier, self.sample_rate, self.steps)


class LocalTrainResult(NamedTuple):
    """What :func:`local_train` returns; unpacks as ``arrays, n, metrics, spend``."""

    arrays: list[np.ndarray]
    n: int
    metrics: dict[str, float]
    spend: DpSgdSpend


def _check_accountant(accountant: str) -> None:
    if accountant not in _ACCOUNTANTS:
        raise SpecError(f"accountant {accountant!r} is not one of {_ACCOUNTANTS}")


def composed_epsilon(
    *, history: Sequence[tuple[float, float, int]], delta: float, accountant: Accountant = "rdp"
) -> float:
    """ε after all runs in ``history`` (entries ``(σ, q, steps)``), composed by Opacus.

    >>> round(composed_epsilon(history=[(1.0, 1.0, 10)], delta=1e-5), 2)
    19.05
    """
    _check_accountant(accountant)
    if not history:
        return 0.0
    acc = create_accountant(accountant)
    acc.history = [(float(s), float(q), int(k)) for s, q, k in history]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "optimal order is the largest alpha"
        return float(acc.get_epsilon(delta=delta))


def steps_per_epoch(*, n: int, batch_size: int) -> int:
    """Opacus's step count per epoch: one expected pass over the data, ``⌈n / batch⌉``."""
    if n < 1 or batch_size < 1:
        raise SpecError(f"need n ≥ 1 and batch_size ≥ 1, got n={n}, batch_size={batch_size}")
    return int(np.ceil(n / min(batch_size, n)))


def sample_rate_for(*, n: int, batch_size: int) -> float:
    """Poisson sampling rate Opacus uses: ``1 / steps_per_epoch`` (≈ ``batch_size / n``)."""
    return 1.0 / steps_per_epoch(n=n, batch_size=batch_size)


def plan_noise(
    *,
    n: int,
    batch_size: int,
    epochs: int,
    rounds: int,
    target_epsilon: float,
    delta: float,
    accountant: Accountant = "rdp",
) -> float:
    """σ such that ``rounds`` runs of ``epochs`` epochs each spend at most ``target_epsilon``.

    Opacus's bisection returns the conservative end (never overshoots the budget).
    """
    _check_accountant(accountant)
    if target_epsilon <= 0 or not 0 < delta < 1 or rounds < 1 or epochs < 1:
        raise SpecError("plan_noise needs target_epsilon > 0, 0 < delta < 1, rounds, epochs ≥ 1")
    steps = rounds * epochs * steps_per_epoch(n=n, batch_size=batch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "optimal order is the largest alpha"
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate_for(n=n, batch_size=batch_size),
                steps=steps,
                accountant=accountant,
            )
        )


def _check_xy(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = scale(np.asarray(X, dtype=float), FEATURES)
    y = np.asarray(y, dtype=float).reshape(-1)
    if y.shape[0] != z.shape[0]:
        raise DataError(f"{z.shape[0]} feature rows but {y.shape[0]} outcomes")
    bad = (y != 0) & (y != 1)
    if bad.any():
        r = int(np.argmax(bad))
        raise DataError(f"row {r}: cv_event is not 0 or 1", row=r, field="cv_event")  # no value quoted
    return z, y


def _sgd(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, *, epochs: int
) -> None:
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    for _ in range(epochs):
        for zb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            if len(yb):  # an empty Poisson batch: Opacus still takes a noise-only step
                loss_fn(model(zb), yb).backward()
            optimizer.step()


def local_train(
    *,
    arrays: Sequence[np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    arch: RiskArch = RiskArch(),
    epochs: int = 1,
    batch_size: int = 1024,
    lr: float = 0.05,
    target_epsilon: float | None = None,
    noise_multiplier: float | None = None,
    max_grad_norm: float = 5.0,
    delta: float = 1e-5,
    accountant: Accountant = "rdp",
    optimizer_name: str = "adam",
    seed: int | None = None,
) -> LocalTrainResult:
    r"""One node's DP-SGD update of the global model on its own rows.

    Args:
        arrays: the global parameters received (transport layout of ``arch``).
        X: ``(n, 16)`` raw features in ``FEATURE_NAMES`` order; checked against public bounds
            here, then mapped to the network input (:func:`shared.risk.arch.model_input`).
        y: ``(n,)`` 0/1 cardiovascular event.
        arch: the model architecture ``arrays`` belong to.
        epochs: local epochs (expected passes under Poisson sampling).
        batch_size: expected batch size; sampling rate ``q = batch_size / n``.
        lr: learning rate applied to the mean clipped, noised gradient.
        target_epsilon: ε for this run alone (Opacus calibrates σ); exclusive with
            ``noise_multiplier``.
        noise_multiplier: σ to use (e.g. from :func:`plan_noise` for a multi-round budget).
        max_grad_norm: per-sample gradient clipping norm C. A logistic row's gradient has norm
            :math:`|p - y|\,\lVert(u, 1)\rVert` (≈ 4 for a typical ``u``); clipping far below
            that shrinks the rare events' gradients more than the non-events' and biases the
            intercept down (predicted risk too low), so the default C = 5 rarely binds.
        delta: δ of the guarantee.
        accountant: "rdp" or "prv".
        optimizer_name: "adam" (default: per-coordinate step sizes cope with features whose
            spread within their public bounds is small) or "sgd". Either only post-processes
            the privatised gradient, so the choice does not change ε.
        seed: makes sampling and noise reproducible (tests, benchmarks); ``None`` draws
            the generator seed from the OS CSPRNG.

    Returns:
        ``LocalTrainResult(arrays, n, metrics, spend)``: new parameters, the row count (the
        FedAvg weight), run metadata (no data-dependent values beyond ``n``), and the
        :class:`DpSgdSpend` to charge to the node's ledger.

    Raises:
        SpecError: both or neither of ``target_epsilon`` / ``noise_multiplier``, or bad settings.
        DataError: a feature out of bounds or an outcome not 0/1 (names row and field).
    """
    _check_accountant(accountant)
    if optimizer_name not in _OPTIMIZERS:
        raise SpecError(f"optimizer {optimizer_name!r} is not one of {sorted(_OPTIMIZERS)}")
    if (target_epsilon is None) == (noise_multiplier is None):
        raise SpecError("give exactly one of target_epsilon and noise_multiplier")
    if epochs < 1 or lr <= 0 or max_grad_norm <= 0 or not 0 < delta < 1:
        raise SpecError("need epochs ≥ 1, lr > 0, max_grad_norm > 0 and 0 < delta < 1")
    z, y = _check_xy(X, y)
    z = model_input(z)
    n = z.shape[0]
    if n < 2:
        raise DataError(f"DP-SGD needs at least 2 rows, got {n}")
    gen_seed = secrets.randbits(63) if seed is None else seed
    data_gen = torch.Generator().manual_seed(gen_seed)
    noise_gen = torch.Generator().manual_seed(gen_seed + 1)

    model = from_arrays(build_model(arch), arrays, arch=arch)
    optimizer = _OPTIMIZERS[optimizer_name](model.parameters(), lr=lr)
    loader = DataLoader(
        TensorDataset(torch.as_tensor(z, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)),
        batch_size=min(batch_size, n),
        generator=data_gen,
    )
    common = dict(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        noise_generator=noise_gen,
    )
    with warnings.catch_warnings():
        # Opacus advisories: secure_mode (see module Notes), hooks on input-free modules.
        warnings.simplefilter("ignore", UserWarning)
        engine = PrivacyEngine(accountant=accountant)
        if target_epsilon is not None:
            model, optimizer, loader = engine.make_private_with_epsilon(
                **common, target_epsilon=target_epsilon, target_delta=delta, epochs=epochs
            )
        else:
            model, optimizer, loader = engine.make_private(**common, noise_multiplier=noise_multiplier)
        _sgd(model, optimizer, loader, epochs=epochs)
        epsilon = float(engine.get_epsilon(delta))
    # Opacus merges repeated (σ, q) steps into one history entry.
    ((sigma, q, steps),) = engine.accountant.history
    spend = DpSgdSpend(
        noise_multiplier=float(sigma),
        sample_rate=float(q),
        steps=int(steps),
        delta=delta,
        epsilon=epsilon,
        accountant=accountant,
    )
    metrics = {
        "epochs": float(epochs),
        "steps": float(steps),
        "sample_rate": float(q),
        "noise_multiplier": float(sigma),
    }
    return LocalTrainResult(arrays=to_arrays(model), n=n, metrics=metrics, spend=spend)
