"""A mapping file: how a site's own extract maps onto an input kind, in one reviewed TOML file
instead of one ``--map`` flag per column.

A real extract has its own column names (``Geschlecht``), codes (``m``/``w``), units
(cholesterol in mg/dL), date format (``15.01.2024``), delimiter (``;``), decimal comma and
encoding (Windows-1252). The mapping says so once; :func:`apply_mapping` turns each chunk's
text cells into what the validator expects, and leaves a cell it cannot convert *as it was*,
so the validator quarantines it with the usual reason (``wrong type``, ``bad date``) — a
conversion never turns a bad value into a missing one, and never drops a row.

Example (``deploy/examples/mapping-de.toml`` is a complete one)::

    delimiter = ";"
    decimal = ","
    encoding = "cp1252"
    date_format = "dd.mm.yyyy"
    ignore = ["Name"]            # columns read by nobody, on purpose

    [columns]                   # file column = our field
    Personalnummer = "person_id"
    Geschlecht = "sex"

    [codes.sex]                 # file code = our value (matched ignoring case and spaces)
    m = 1
    w = 0

    [units]                     # our field = the file's unit (converted to ours)
    ldl = "mg/dL"

Unit factors (:data:`UNIT_FACTORS`) follow from molar masses: ``mmol/L = mg/dL × 10 / M``,
with M in g/mol from PubChem — cholesterol C27H46O 386.65 (CID 5997), D-glucose C6H12O6 180.16
(CID 5793), triglycerides as triolein C57H104O6 885.4 (CID 5497163; the clinical convention
divides by 88.57). These are the factors of the SI conversion tables used in clinical
chemistry (e.g. Young DS, "Implementation of SI units for clinical laboratory data",
Ann Intern Med 1987;106:114-129): cholesterol 0.02586, glucose 0.05551, triglycerides 0.01129.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from node.files import read_toml
from node.ingest.schema import KindSpec
from shared.errors import SpecError
from shared.study import format_validation_error

#: ``(field, file unit) -> factor`` to our unit (:mod:`shared.features`): ours = theirs × factor.
UNIT_FACTORS: dict[tuple[str, str], float] = {
    **{(f, "mg/dL"): 10 / 386.65 for f in ("total_chol", "hdl", "ldl")},  # cholesterol
    ("triglycerides", "mg/dL"): 1 / 88.57,  # triolein, the clinical convention
    ("glucose", "mg/dL"): 10 / 180.16,
    ("waist", "in"): 2.54,
    ("waist", "mm"): 0.1,
    **{(f, "kPa"): 760 / 101.325 for f in ("sbp", "dbp")},
}
#: ``dd.mm.yyyy``-style tokens and their strftime codes.
_DATE_TOKENS = (("yyyy", "%Y"), ("dd", "%d"), ("mm", "%m"))


class ExtractMapping(BaseModel):
    """A parsed mapping file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str | None = None
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    decimal: str = Field(default=".", pattern=r"^[.,]$")
    encoding: str = "utf-8"
    date_format: str | None = None
    columns: dict[str, str] = {}
    ignore: list[str] = []
    codes: dict[str, dict[str, float | str]] = {}
    units: dict[str, str] = {}

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        try:
            return codecs.lookup(v).name
        except LookupError:
            raise ValueError(f"unknown encoding {v!r} (e.g. utf-8, cp1252, latin-1)") from None

    @field_validator("date_format")
    @classmethod
    def _strftime(cls, v: str | None) -> str | None:
        if v is None or "%" in v:
            return v
        out = v
        for token, code in _DATE_TOKENS:
            out = out.replace(token, code)
        if not {"%Y", "%m", "%d"} <= set(re.findall(r"%[A-Za-z]", out)):
            raise ValueError(f"date format {v!r} needs dd, mm and yyyy (or strftime %d %m %Y)")
        return out

    @field_validator("units")
    @classmethod
    def _known_units(cls, v: dict[str, str]) -> dict[str, str]:
        for name, unit in v.items():
            if (name, unit) not in UNIT_FACTORS:
                known = sorted(f"{f} in {u}" for f, u in UNIT_FACTORS)
                raise ValueError(f"no conversion of {name} from {unit!r}: known are {', '.join(known)}")
        return v

    @property
    def utf8(self) -> bool:
        return self.encoding in ("utf-8", "utf-8-sig")

    def check(self, spec: KindSpec) -> None:
        """The mapping fits ``spec``: it names only fields of that kind.

        Raises:
            SpecError: names the entry that does not fit.
        """
        if self.kind is not None and self.kind != spec.kind:
            raise SpecError(f"the mapping file is for kind {self.kind!r}, not {spec.kind!r}")
        fields = {f.name: f for f in spec.fields}
        for theirs, ours in self.columns.items():
            if ours not in fields and not spec.extras:
                raise SpecError(
                    f"mapping [columns] {theirs} = {ours!r}: {spec.kind} has no field {ours!r} "
                    f"(fields: {', '.join(fields)})"
                )
        for name in [*self.codes, *self.units]:
            if name not in fields:
                raise SpecError(f"mapping names field {name!r}, which {spec.kind} does not have")
        for name in self.units:
            if fields[name].type != "number":
                raise SpecError(f"mapping [units] {name}: not a number field")

    def text_columns(self, spec: KindSpec) -> frozenset[str]:
        """Our fields this mapping converts: read as text, so the conversion sees the cell."""
        numeric = {f.name for f in spec.fields if f.type in ("number", "binary")}
        needs = set(self.codes) | set(self.units)
        if self.decimal != ".":
            needs |= numeric
        if self.date_format:
            needs |= {f.name for f in spec.fields if f.type == "date"}
        return frozenset(needs)


def load_mapping(path: str | Path) -> ExtractMapping:
    """Parse and check a mapping file.

    Raises:
        SpecError: the file is missing, not TOML, or an entry is invalid (named).
    """
    data = read_toml(path, what="mapping file")
    try:
        return ExtractMapping.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_validation_error(e, f"mapping file {path}")) from None


def apply_mapping(chunk: pd.DataFrame, spec: KindSpec, mapping: ExtractMapping) -> pd.DataFrame:
    """Codes, decimal commas, units and dates of one chunk (columns already ours), converted.

    A cell that cannot be converted is left as it was, for the validator to quarantine with
    its reason; a blank cell stays blank (missing). Never raises on a cell.
    """
    out = chunk.copy()
    for f in spec.fields:
        if f.name not in out.columns:
            continue
        col = out[f.name]
        if f.name in mapping.codes:
            col = _codes(col, mapping.codes[f.name])
        if f.type in ("number", "binary"):
            factor = UNIT_FACTORS.get((f.name, mapping.units.get(f.name, "")), 1.0)
            col = _number(col, decimal=mapping.decimal, factor=factor)
        elif f.type == "date" and mapping.date_format:
            col = _date(col, mapping.date_format)
        out[f.name] = col
    return out


def _codes(col: pd.Series, codes: dict[str, float | str]) -> pd.Series:
    table = {str(k).strip().casefold(): v for k, v in codes.items()}
    raw = col.to_numpy(dtype=object)
    key = pd.Series(raw, index=col.index, dtype=object).astype(str).str.strip().str.casefold()
    mapped = key.map(table).to_numpy(dtype=object)
    hit = ~pd.isna(mapped) & ~pd.isna(raw)
    out = raw.copy()
    out[hit] = mapped[hit]
    return pd.Series(out, index=col.index, dtype=object)


def _number(col: pd.Series, *, decimal: str, factor: float) -> pd.Series:
    """Numbers with ``decimal`` as the decimal mark, times ``factor``. A float column (blank
    cells NaN) when every cell converts — the validator's fast path; otherwise an object column
    holding the cells that do not convert as they were."""
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        return col.astype(float).mul(factor).round(6) if factor != 1.0 else col
    raw = col.to_numpy(dtype=object)
    text = pd.Series(raw, index=col.index, dtype=object).astype(str).str.strip()
    blank = pd.isna(raw) | (text == "").to_numpy()
    if decimal == ",":
        text = text.str.replace(",", ".", regex=False)
    num = pd.to_numeric(text.where(~blank), errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    parsed = np.isfinite(num)
    if factor != 1.0:  # 6 decimals of mmol/L: far below any lab's precision, and no float noise
        num = np.round(num * factor, 6)  # (347.985 mg/dL LDL must be 9.0, not 9.0000000001)
        factor = 1.0
    if (parsed | blank).all():
        return pd.Series(np.where(parsed, num * factor, np.nan), index=col.index, dtype=float)
    values = raw.copy()
    values[parsed] = num[parsed] * factor
    return pd.Series(values, index=col.index, dtype=object)


def _date(col: pd.Series, fmt: str) -> pd.Series:
    if not (col.dtype == object or pd.api.types.is_string_dtype(col.dtype)):
        return col
    text = col.astype("string").str.strip()
    parsed = pd.to_datetime(text, format=fmt, errors="coerce")
    ok = parsed.notna().to_numpy()
    values = col.astype(object).to_numpy(copy=True)
    values[ok] = parsed[ok].dt.strftime("%Y-%m-%d").to_numpy(dtype=object)
    return pd.Series(values, index=col.index, dtype=object)
