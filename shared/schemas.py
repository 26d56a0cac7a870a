"""Record schemas (pydantic v2) for what a node ingests: persons, intervention events, outcomes.

Input records carry the site's raw ``person_id``; the node replaces it with a keyed pseudonym at
ingestion and never stores it. Feature fields are validated against their public bounds.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from shared.features import FEATURES

#: Intervention codes a node accepts in its trajectory log.
INTERVENTION_CODES: dict[str, str] = {
    "lifestyle_coaching": "Lifestyle coaching programme (diet, activity)",
    "bp_management": "Blood-pressure management programme",
    "lipid_management": "Lipid management (statin adherence)",
    "smoking_cessation": "Smoking cessation programme",
    "digital_prevention": "Digital prevention app with remote monitoring",
    "diabetes_prevention": "Diabetes prevention programme",
}
CHANNELS = ("in_person", "telehealth", "app", "workplace")

AGE_BANDS = ("18-29", "30-39", "40-49", "50-59", "60-69", "70+")


def age_band(age: float) -> str:
    """Age band used for group views (never the exact age)."""
    for upper, band in ((30, "18-29"), (40, "30-39"), (50, "40-49"), (60, "50-59"), (70, "60-69")):
        if age < upper:
            return band
    return "70+"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _feature_fields() -> dict:
    fields = {}
    for f in FEATURES:
        typ = Literal[0, 1] if f.kind == "binary" else float
        fields[f.name] = (typ, Field(ge=f.lo, le=f.hi, description=f"{f.label} [{f.unit}]"))
    return fields


ClinicalFeatures = create_model("ClinicalFeatures", __base__=_Record, **_feature_fields())
ClinicalFeatures.__doc__ = "The 16 clinical features at the index date, within public bounds."


class Person(ClinicalFeatures):
    person_id: str = Field(min_length=1, max_length=128)
    site: str = Field(min_length=1)
    department: str | None = None
    job_type: str | None = None
    index_date: dt.date


class InterventionEvent(_Record):
    person_id: str = Field(min_length=1, max_length=128)
    code: str
    start: dt.date
    end: dt.date | None = None
    channel: Literal["in_person", "telehealth", "app", "workplace"] = "in_person"

    @model_validator(mode="after")
    def _check(self) -> "InterventionEvent":
        if self.code not in INTERVENTION_CODES:
            raise ValueError(f"unknown intervention code {self.code!r}")
        if self.end is not None and self.end < self.start:
            raise ValueError("end is before start")
        return self


class OutcomeRecord(_Record):
    person_id: str = Field(min_length=1, max_length=128)
    period_start: dt.date
    period_end: dt.date
    claims_cost: float = Field(ge=0)
    cv_event: Literal[0, 1]
    absence_days: float = Field(ge=0, le=366)

    @model_validator(mode="after")
    def _check(self) -> "OutcomeRecord":
        if self.period_end < self.period_start:
            raise ValueError("period_end is before period_start")
        return self
