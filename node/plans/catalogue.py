"""The plan catalogue: which modifiable factors a plan addresses, their guideline targets,
the texts a person reads and the channel that carries them.

It is node configuration (``[plans] catalogue`` in node.toml, a TOML file; an example with its
sources is ``deploy/examples/plan-catalogue.toml``), so a site adapts targets and wording to its
guideline and language without a code change. Each item::

    [[item]]
    code = "bp_target"              # the plan item's id (callbacks name it)
    intervention = "bp_management"  # the trajectory code a completed item is logged as
    factor = "sbp"                  # the feature it addresses
    direction = "lower"             # lower: recommended above target; raise: below it
    target = 130.0                  # the value the person's factor is moved to for ranking
    target_female = 80.0            # optional sex-specific target (sex = 0)
    also = { dbp = 80.0 }           # features moved with it (bounded by the same direction)
    channel = "app"
    reason = "..."                  # why: names the factor and the target, never the value
    text = "..."
    source = "2021 ESC Guidelines on CVD prevention, ..."
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from node.files import read_toml
from shared.errors import SpecError
from shared.features import FEATURES_BY_NAME
from shared.schemas import CHANNELS, INTERVENTION_CODES
from shared.study import format_validation_error

#: Factors a plan may address: what a person can change (not age, sex or family history).
MODIFIABLE = (
    "sbp",
    "dbp",
    "ldl",
    "total_chol",
    "triglycerides",
    "glucose",
    "smoker",
    "bmi",
    "waist",
    "physical_activity",
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CatalogueItem(_Model):
    code: str = Field(pattern=r"^[a-z0-9_]{1,64}$")
    intervention: str
    factor: str
    direction: Literal["lower", "raise"]
    target: float
    target_female: float | None = None
    also: dict[str, float] = {}
    channel: str = "app"
    reason: str = Field(min_length=1, max_length=500)
    text: str = Field(min_length=1, max_length=2000)
    source: str = Field(min_length=1)

    @field_validator("intervention")
    @classmethod
    def _known_code(cls, v: str) -> str:
        if v not in INTERVENTION_CODES:
            raise ValueError(f"unknown intervention {v!r}: one of {', '.join(INTERVENTION_CODES)}")
        return v

    @field_validator("channel")
    @classmethod
    def _known_channel(cls, v: str) -> str:
        if v not in CHANNELS:
            raise ValueError(f"unknown channel {v!r}: one of {', '.join(CHANNELS)}")
        return v

    @model_validator(mode="after")
    def _modifiable_within_bounds(self) -> "CatalogueItem":
        for name, value in ((self.factor, self.target), *self.also.items()):
            if name not in MODIFIABLE:
                raise ValueError(f"{name!r} is not a modifiable factor: one of {', '.join(MODIFIABLE)}")
            f = FEATURES_BY_NAME[name]
            if not f.lo <= value <= f.hi:
                raise ValueError(f"target {value} for {name} is outside its bounds [{f.lo}, {f.hi}]")
        if self.target_female is not None:
            f = FEATURES_BY_NAME[self.factor]
            if not f.lo <= self.target_female <= f.hi:
                raise ValueError(f"target_female for {self.factor} is outside [{f.lo}, {f.hi}]")
        return self


class Catalogue(_Model):
    #: plans go to people whose predicted risk is at least this (``--min-risk`` overrides)
    min_risk: float = Field(default=0.1, ge=0, le=1)
    #: at most this many recommendations per plan, the largest expected reductions first
    max_items: int = Field(default=3, ge=1, le=20)
    item: tuple[CatalogueItem, ...] = Field(min_length=1)
    #: SHA-256 of the file: a changed catalogue makes new plans, the same one does not
    sha256: str = ""

    @model_validator(mode="after")
    def _unique_codes(self) -> "Catalogue":
        codes = [i.code for i in self.item]
        dup = sorted({c for c in codes if codes.count(c) > 1})
        if dup:
            raise ValueError(f"item code(s) listed twice: {', '.join(dup)}")
        return self

    @classmethod
    def from_toml(cls, path: str | Path) -> "Catalogue":
        """Load and validate the catalogue.

        Raises:
            SpecError: missing file, not TOML, or an invalid field (named).
        """
        path = Path(path)
        data = read_toml(path, what="plan catalogue")
        try:
            cat = cls.model_validate(data)
        except ValidationError as e:
            raise SpecError(format_validation_error(e, f"plan catalogue {path}")) from None
        return cat.model_copy(update={"sha256": hashlib.sha256(path.read_bytes()).hexdigest()})

    def get(self, code: str) -> CatalogueItem | None:
        return next((i for i in self.item if i.code == code), None)
