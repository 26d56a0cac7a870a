"""What each kind of input file holds: its fields, their types and bounds, its natural key.

Bounds are not restated here: feature bounds come from :mod:`shared.features`, outcome bounds
and identifier limits from the pydantic records in :mod:`shared.schemas`, intervention codes
and channels from the same module. Change them there and ingestion follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import Table

from node.store import models
from shared.errors import DataError
from shared.features import FEATURES
from shared.schemas import InterventionEvent, OutcomeRecord, Person

FieldType = Literal["id", "text", "number", "binary", "date", "code", "channel"]
Kind = Literal["persons", "interventions", "outcomes", "cohort"]
KINDS: tuple[str, ...] = ("persons", "interventions", "outcomes", "cohort")

#: The raw identifier column every input file carries; it is replaced by ``pseudonym``.
ID_FIELD = "person_id"
#: Longest stored descriptor (department, job type, site).
TEXT_MAX = 128


@dataclass(frozen=True)
class FieldSpec:
    """One input column. ``lo``/``hi`` are inclusive; None means unbounded."""

    name: str
    type: FieldType
    required: bool = True
    lo: float | None = None
    hi: float | None = None
    max_len: int | None = None


@dataclass(frozen=True)
class KindSpec:
    """An input kind: its columns, the table it lands in and its natural key.

    ``date_order`` pairs (earlier, later) must not be reversed. ``extras``: other numeric
    columns are kept (the flat cohort's outcomes); otherwise unknown columns are ignored.
    ``ignored`` columns are accepted and not stored.
    """

    kind: str
    table: Table
    fields: tuple[FieldSpec, ...]
    key: tuple[str, ...]
    date_order: tuple[tuple[str, str], ...] = ()
    extras: bool = False
    ignored: frozenset[str] = frozenset()

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.required)

    @property
    def text_columns(self) -> frozenset[str]:
        """Columns read as text: everything but numbers (ids keep their leading zeros)."""
        return frozenset(f.name for f in self.fields if f.type not in ("number", "binary"))

    def field(self, name: str) -> FieldSpec:
        return next(f for f in self.fields if f.name == name)


def _limits(model: type[BaseModel], name: str) -> dict:
    """``lo``/``hi``/``max_len`` read from a pydantic field's constraints."""
    out: dict = {}
    for m in model.model_fields[name].metadata:
        if hasattr(m, "ge"):
            out["lo"] = float(m.ge)
        if hasattr(m, "le"):
            out["hi"] = float(m.le)
        if hasattr(m, "max_length"):
            out["max_len"] = int(m.max_length)
    return out


def _id(model: type[BaseModel]) -> FieldSpec:
    return FieldSpec(ID_FIELD, "id", **_limits(model, ID_FIELD))


_FEATURE_FIELDS = tuple(
    FieldSpec(f.name, "binary" if f.kind == "binary" else "number", lo=f.lo, hi=f.hi) for f in FEATURES
)
_DESCRIPTORS = (
    FieldSpec("department", "text", required=False, max_len=TEXT_MAX),
    FieldSpec("job_type", "text", required=False, max_len=TEXT_MAX),
)

SPECS: dict[str, KindSpec] = {
    "persons": KindSpec(
        "persons",
        models.persons,
        fields=(
            _id(Person),
            FieldSpec("site", "text", required=False, max_len=TEXT_MAX),
            *_DESCRIPTORS,
            FieldSpec("index_date", "date"),
            *_FEATURE_FIELDS,
        ),
        key=("pseudonym",),
    ),
    "interventions": KindSpec(
        "interventions",
        models.interventions,
        fields=(
            _id(InterventionEvent),
            FieldSpec("code", "code"),
            FieldSpec("start", "date"),
            FieldSpec("end", "date", required=False),
            FieldSpec("channel", "channel", required=False),
        ),
        key=("pseudonym", "code", "start"),
        date_order=(("start", "end"),),
    ),
    "outcomes": KindSpec(
        "outcomes",
        models.outcomes,
        fields=(
            _id(OutcomeRecord),
            FieldSpec("period_start", "date"),
            FieldSpec("period_end", "date"),
            FieldSpec("claims_cost", "number", **_limits(OutcomeRecord, "claims_cost")),
            FieldSpec("cv_event", "binary", lo=0, hi=1),
            FieldSpec("absence_days", "number", **_limits(OutcomeRecord, "absence_days")),
        ),
        key=("pseudonym", "period_start"),
        date_order=(("period_start", "period_end"),),
    ),
    "cohort": KindSpec(
        "cohort",
        models.cohort,
        fields=(_id(Person), *_DESCRIPTORS, *_FEATURE_FIELDS, FieldSpec("treated", "binary", lo=0, hi=1)),
        key=("pseudonym",),
        extras=True,
        ignored=frozenset({"site", "index_date", "age_band"}),
    ),
}


def spec_for(kind: str) -> KindSpec:
    try:
        return SPECS[kind]
    except KeyError:
        raise DataError(f"unknown input kind {kind!r}: one of {', '.join(KINDS)}") from None
