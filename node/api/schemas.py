"""Request and response bodies of the scoring API (pydantic, ``extra="forbid"``, strict types).

A person is the 16 clinical features by name (:class:`shared.schemas.ClinicalFeatures`: public
bounds as ``ge``/``le``, binary features 0/1) plus an optional caller reference echoed back.
Strict mode: a number sent as a string is a type error, not silently parsed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.risk.tiers import TIERS
from shared.schemas import ClinicalFeatures

Tier = Literal["low", "medium", "high", "very_high"]
assert tuple(Tier.__args__) == TIERS  # type: ignore[attr-defined]
MAX_BATCH = 10_000


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PersonIn(ClinicalFeatures):
    """One person to score."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    ref: str | None = Field(
        default=None, max_length=128, description="Caller's reference, echoed back; not stored."
    )


class BatchIn(_Body):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    persons: list[PersonIn] = Field(min_length=1, max_length=MAX_BATCH)


class ScoreOut(_Body):
    ref: str | None = None
    probability: float = Field(ge=0, le=1, description="Predicted probability of a CV event")
    tier: Tier
    model_version: str


class BatchOut(_Body):
    model_version: str
    count: int
    tier_counts: dict[str, int]
    results: list[ScoreOut]


class GroupCell(_Body):
    group: str = Field(description="The group's label: its values joined by ' / '")
    values: dict[str, str] = Field(description="The group's value of each dimension")
    tier: Tier
    count: int | None = Field(description="DP-noised count; null when suppressed, never 0 for it")
    suppressed: bool
    reason: Literal["small", "complementary"] | None = Field(
        description="small: noisy count below k; complementary: withheld so margins do not reveal another"
    )


class GroupRow(_Body):
    group: str
    values: dict[str, str]
    people: int | None = Field(description="Sum of the group's noisy tier counts; null below k")
    mean_risk: float | None = Field(description="Noisy mean predicted risk; null when people is")
    suppressed: bool


class Superseded(_Body):
    released_at: str | None
    model_version: str | None
    data_version: str | None
    changed: list[Literal["model", "data"]]


class GroupView(_Body):
    by: str = Field(description="The view's dimensions, comma-separated, in canonical order")
    dimensions: list[str]
    k: int = Field(description="Cells whose noisy count is below k are suppressed")
    sigma: float = Field(description="Std of the Gaussian noise added to each count and risk sum")
    sensitivity: float = Field(description="L2 sensitivity of the release (√2: one count, one risk sum)")
    epsilon: float = Field(description="ε of this release at delta")
    delta: float
    model_version: str
    data_version: str = Field(
        description="Opaque tag of this release's population (random, not a digest of the data)"
    )
    released_at: str
    supersedes: Superseded | None = Field(
        description="The previous release of this view definition, and what changed since"
    )
    charged_now: bool = Field(description="Whether this request paid for a new release")
    note: str
    cells: list[GroupCell]
    groups: list[GroupRow]
    tier_totals: dict[str, int | None]
    total: int | None
    suppressed_cells: int
    complementary_cells: int


class UptakeCell(_Body):
    department: str
    stage: Literal["waiting", "not_delivered", "opted_out", "delivered", "opened", "completed"]
    count: int | None = Field(description="DP-noised people; null when suppressed, never 0 for it")
    suppressed: bool
    reason: Literal["small", "complementary"] | None


class ProgrammeView(_Body):
    k: int
    sigma: float
    sensitivity: float = Field(description="1: each person is counted once, at their newest plan's stage")
    epsilon: float
    delta: float
    data_version: str
    released_at: str
    charged_now: bool
    departments: list[str]
    stages: list[str]
    cells: list[UptakeCell]
    stage_totals: dict[str, int | None]
    department_totals: dict[str, int | None]
    total: int | None
    suppressed_cells: int
    complementary_cells: int


class ModelOut(_Body):
    version: str
    kind: str
    cutoffs: tuple[float, float, float]
    rounds: int
    nodes: int | None
    epsilon: float | None
    delta: float | None
    metrics: dict[str, Any]
    source: str
    created_at: dt.datetime


class HealthOut(_Body):
    status: Literal["ok"]
    model_version: str


class LiveOut(_Body):
    status: Literal["alive"]


class ReadyOut(_Body):
    status: Literal["ready", "not ready"]
    checks: dict[str, str] = Field(
        description="model, store, budget: ok, failed, exhausted (budget) or not configured"
    )


class ErrorOut(_Body):
    error: str = Field(description="What is wrong, in words")
    field: str | None = Field(default=None, description="The field at fault, e.g. persons[3].age")
    errors: list[dict[str, Any]] = Field(
        default_factory=list, description="Every problem found, each with its field"
    )
