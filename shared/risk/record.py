"""The training record that travels with a risk model (pydantic, frozen, ``extra="forbid"``).

Built by whoever finishes training (the coordinator after the last FedAvg round, or a
centralized fit), sent to the nodes with the weights, and stored beside them by
:class:`node.risk.model_store.ModelStore`; its content is part of the model's version hash.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.features import FEATURE_NAMES
from shared.risk.arch import RiskArch
from shared.risk.tiers import DEFAULT_CUTOFFS


class TrainingRecord(BaseModel):
    """How a model came to be: enough for an actuary to judge it and for a ledger to match it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["logistic", "mlp"] = "logistic"
    hidden: int = Field(default=16, ge=1, le=1024)
    feature_names: tuple[str, ...] = FEATURE_NAMES
    cutoffs: tuple[float, float, float] = DEFAULT_CUTOFFS
    rounds: int = Field(ge=0)
    nodes: int | None = Field(default=None, ge=1)
    epsilon: float | None = Field(default=None, ge=0)
    delta: float | None = Field(default=None, gt=0, lt=1)
    metrics: dict[str, Any] = Field(default_factory=dict)
    source: Literal["federated", "centralized", "imported"] = "federated"
    created_at: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))

    @property
    def arch(self) -> RiskArch:
        return RiskArch(kind=self.kind, hidden=self.hidden)
