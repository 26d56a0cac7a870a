"""Vectorised row validation: one pass per column over a whole chunk, a mask per check.

Every row of a chunk ends up either valid (typed, pseudonymised, ready for the store) or with
exactly one problem: the first failing field in column order, with a reason code from
:data:`REASONS` and a detail that never contains the offending value (it could be an
identifier put in the wrong column). Per-row pydantic would be ~100x slower.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from node.ingest.schema import ID_FIELD, FieldSpec, KindSpec
from shared.schemas import AGE_BANDS, CHANNELS, INTERVENTION_CODES, age_band

MISSING = "missing field"
WRONG_TYPE = "wrong type"
OUT_OF_BOUNDS = "out of bounds"
BAD_DATE = "bad date"
UNKNOWN_CODE = "unknown intervention code"
UNKNOWN_CHANNEL = "unknown channel"
BAD_ID = "bad identifier"
DATE_ORDER = "date order"
DUPLICATE_ID = "duplicate id"
DUPLICATE_RECORD = "duplicate record"
#: A row whose natural key is already stored with other values (a correction): refused, the
#: stored row unchanged (the store, not this chunk, decides it: :mod:`node.ingest.pipeline`).
CONFLICTS_WITH_STORED = "conflicts with stored"
REASONS = (
    MISSING,
    WRONG_TYPE,
    OUT_OF_BOUNDS,
    BAD_DATE,
    UNKNOWN_CODE,
    UNKNOWN_CHANNEL,
    BAD_ID,
    DATE_ORDER,
    DUPLICATE_ID,
    DUPLICATE_RECORD,
    CONFLICTS_WITH_STORED,
)

DEFAULT_CHANNEL = "in_person"
_DATE_MIN, _DATE_MAX = np.datetime64("1900-01-01"), np.datetime64("2100-12-31")
_AGE_BAND_BY_YEAR = np.array([age_band(a) for a in range(0, 200)], dtype=object)
assert set(_AGE_BAND_BY_YEAR[18:91]) <= set(AGE_BANDS)

Pseudonymize = Callable[[Sequence[str]], list[str]]


@dataclass(frozen=True)
class ChunkResult:
    """``rows``: valid rows in stored columns plus ``ingest_row``; ``problems``: one per bad
    row with ``row, field, reason, detail, pseudonym`` (pseudonym None if the id was bad)."""

    rows: pd.DataFrame
    problems: pd.DataFrame
    #: counts of what was kept but changed, by note (see :data:`SITE_OVERRIDDEN`,
    #: :func:`missing_kept`): counts only, never a value
    notes: dict[str, int] = field(default_factory=dict)


#: Note: a persons row whose own ``site`` differs from the node's site id (the node's is stored).
SITE_OVERRIDDEN = "site column differs from the node's site id (the node's is stored)"


def missing_kept(name: str) -> str:
    """Note: a row kept with ``name`` missing, under the ``indicator`` missing-value policy."""
    return f"kept with {name} missing (missing-value policy: indicator)"


class _Flags:
    """First problem per row: later checks never overwrite an earlier field's reason."""

    def __init__(self, n: int):
        self.ok = np.ones(n, dtype=bool)
        self.field = np.full(n, None, dtype=object)
        self.reason = np.full(n, None, dtype=object)
        self.detail = np.full(n, None, dtype=object)

    def flag(self, mask: np.ndarray, field: str, reason: str, detail: str | np.ndarray) -> None:
        m = np.asarray(mask, dtype=bool) & self.ok
        if m.any():
            self.ok &= ~m
            self.field[m], self.reason[m] = field, reason
            self.detail[m] = detail if isinstance(detail, str) else detail[m]


def _missing(col: pd.Series) -> np.ndarray:
    miss = col.isna().to_numpy(copy=True)
    if col.dtype == object or pd.api.types.is_string_dtype(col.dtype):
        miss |= (col.astype(str).str.strip() == "").to_numpy()
    return miss


def _text(col: pd.Series) -> pd.Series:
    return col.astype(str).str.strip()


def _bounds_text(f: FieldSpec) -> str:
    lo = "-inf" if f.lo is None else f"{f.lo:g}"
    hi = "inf" if f.hi is None else f"{f.hi:g}"
    return f"{f.name} outside [{lo}, {hi}]"


def _parse_number(
    col: pd.Series, f: FieldSpec, miss: np.ndarray, flags: _Flags, *, missing_ok: bool = False
) -> np.ndarray:
    """``missing_ok``: a blank cell is kept as NaN (stored NULL), not quarantined."""
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        v = col.to_numpy(dtype=float, na_value=np.nan)
    else:
        v = pd.to_numeric(col.where(~miss), errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    if not missing_ok:
        flags.flag(miss, f.name, MISSING, f"{f.name} is empty")
    flags.flag(~miss & ~np.isfinite(v), f.name, WRONG_TYPE, f"{f.name} is not a finite number")
    with np.errstate(invalid="ignore"):
        if f.type == "binary":
            flags.flag((v != 0) & (v != 1), f.name, OUT_OF_BOUNDS, f"{f.name} must be 0 or 1")
        else:
            out = np.zeros(len(v), dtype=bool)
            if f.lo is not None:
                out |= v < f.lo
            if f.hi is not None:
                out |= v > f.hi
            flags.flag(out, f.name, OUT_OF_BOUNDS, _bounds_text(f))
    return v


def _parse_date(
    col: pd.Series, f: FieldSpec, miss: np.ndarray, flags: _Flags, *, time_zone: str = "UTC"
) -> np.ndarray:
    """Calendar dates (``datetime64[D]``) in the site's ``time_zone``, never shifted.

    Text is ISO ``YYYY-MM-DD`` (no locale guessing), or an ISO 8601 timestamp at midnight
    (``2024-01-01T00:00:00``, ``…+01:00``). A time-zone-aware value (a Parquet timestamp
    with a zone, a text offset) is first converted to ``time_zone``; a naive one already is
    the site's local time. The date is taken only where the time of day is midnight: any other
    time is refused (quarantined), because which day it meant is a guess — a Berlin midnight
    exported in UTC is 23:00 the day before, and truncating it stored every date a day early.
    """
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        local = col.dt.tz_convert(time_zone).dt.tz_localize(None)
    elif pd.api.types.is_datetime64_any_dtype(col.dtype):
        local = col
    else:
        local = _parse_date_text(_text(col).where(~miss), time_zone)
    ts = local.to_numpy()  # datetime64 in the column's own unit (ns, us, ms or s)
    d = ts.astype("datetime64[D]")
    if f.required:
        flags.flag(miss, f.name, MISSING, f"{f.name} is empty")
    nat = np.isnat(d)
    bad = ~miss & (nat | (d < _DATE_MIN) | (d > _DATE_MAX))
    flags.flag(bad, f.name, BAD_DATE, f"{f.name} is not a date YYYY-MM-DD in 1900..2100")
    with np.errstate(invalid="ignore"):
        timed = ~miss & ~nat & (ts != d.astype(ts.dtype))
    flags.flag(
        timed,
        f.name,
        BAD_DATE,
        f"{f.name} has a time of day in {time_zone}: a date must be a calendar day (not shifted)",
    )
    return d


_TZ_SUFFIX = r"(?:Z|[+-]\d{2}(?::?\d{2})?)$"


def _parse_date_text(text: pd.Series, time_zone: str) -> pd.Series:
    """Naive local timestamps of ISO text: ``YYYY-MM-DD`` on the fast path; the few cells that
    are not are read as ISO 8601 timestamps, those with an offset converted to ``time_zone``.
    Unparseable cells are NaT."""
    parsed = pd.to_datetime(text, format="%Y-%m-%d", errors="coerce")
    retry = parsed.isna() & text.notna()
    if not retry.any():
        return parsed
    unit = "datetime64[us]"  # holds every year 1..9999, so no ISO text overflows
    parsed = parsed.astype(unit)
    rest = text[retry]
    aware = rest.str.contains(_TZ_SUFFIX, regex=True).to_numpy(dtype=bool)
    if aware.any():
        stamps = pd.to_datetime(rest[aware], format="ISO8601", utc=True, errors="coerce")
        parsed.loc[rest.index[aware]] = stamps.dt.tz_convert(time_zone).dt.tz_localize(None).astype(unit)
    if not aware.all():
        naive = pd.to_datetime(rest[~aware], format="ISO8601", errors="coerce")
        parsed.loc[rest.index[~aware]] = naive.astype(unit)
    return parsed


def _parse_choice(col: pd.Series, f: FieldSpec, miss: np.ndarray, flags: _Flags) -> np.ndarray:
    allowed, reason = (
        (tuple(INTERVENTION_CODES), UNKNOWN_CODE) if f.type == "code" else (CHANNELS, UNKNOWN_CHANNEL)
    )
    v = _text(col).to_numpy(dtype=object, copy=True)
    if f.type == "channel":
        v[miss] = DEFAULT_CHANNEL
    else:
        flags.flag(miss, f.name, MISSING, f"{f.name} is empty")
    flags.flag(~miss & ~np.isin(v, allowed), f.name, reason, f"{f.name} is not one of: {', '.join(allowed)}")
    return v


def _parse_text(col: pd.Series, f: FieldSpec, miss: np.ndarray, flags: _Flags) -> np.ndarray:
    text = _text(col)
    v = text.to_numpy(dtype=object, copy=True)
    if f.required:
        flags.flag(miss, f.name, MISSING, f"{f.name} is empty")
    v[miss] = None
    if f.max_len is not None:
        too_long = ~miss & (text.str.len().to_numpy() > f.max_len)
        flags.flag(
            too_long,
            f.name,
            BAD_ID if f.type == "id" else WRONG_TYPE,
            f"{f.name} is longer than {f.max_len} characters",
        )
    return v


_PARSERS = {
    "number": _parse_number,
    "binary": _parse_number,
    "code": _parse_choice,
    "channel": _parse_choice,
    "text": _parse_text,
    "id": _parse_text,
}


def validate_chunk(
    df: pd.DataFrame,
    spec: KindSpec,
    *,
    first_row: int,
    site_id: str,
    pseudonymize: Pseudonymize,
    time_zone: str = "UTC",
    missing_ok: frozenset[str] = frozenset(),
) -> ChunkResult:
    """Split one chunk into valid, typed rows and one problem per invalid row.

    Args:
        df: the chunk, columns already renamed to ours (missing optional columns allowed).
        spec: the input kind.
        first_row: 1-based data-row number of ``df``'s first row.
        site_id: the node's site, for persons files without a ``site`` column.
        pseudonymize: raw ids -> pseudonyms (the raw ids go no further than this call).
        time_zone: the site's IANA time zone (node config ``time_zone``): dates are calendar
            days there (see :func:`_parse_date`).
        missing_ok: number fields whose blank cells are kept as missing (NaN, stored NULL)
            instead of quarantining the row: the node config's ``indicator`` policy.

    Returns:
        A :class:`ChunkResult`. Duplicates of a natural key *within the chunk* are flagged
        here (first occurrence kept); across chunks and files the store's key decides.
    """
    n = len(df)
    flags = _Flags(n)
    values: dict[str, np.ndarray] = {}
    for f in spec.fields:
        col = df[f.name] if f.name in df.columns else pd.Series([None] * n, index=df.index, dtype=object)
        if f.type == "date":
            values[f.name] = _parse_date(col, f, _missing(col), flags, time_zone=time_zone)
        elif f.type == "number" and f.name in missing_ok:
            values[f.name] = _parse_number(col, f, _missing(col), flags, missing_ok=True)
        else:
            values[f.name] = _PARSERS[f.type](col, f, _missing(col), flags)
    extra_names = _extra_columns(df, spec)
    for name in extra_names:
        col = df[name]
        values[name] = _parse_number(col, FieldSpec(name, "number"), _missing(col), flags)
    for earlier, later in spec.date_order:
        with np.errstate(invalid="ignore"):
            flags.flag(values[later] < values[earlier], later, DATE_ORDER, f"{later} is before {earlier}")

    raw = values.pop(ID_FIELD)
    has_id = flags.field != ID_FIELD
    pseudonyms = np.full(n, None, dtype=object)
    pseudonyms[has_id] = pseudonymize(raw[has_id].tolist())
    del raw
    values["pseudonym"] = pseudonyms
    _flag_duplicates(values, spec, flags, first_row)

    ok = flags.ok
    notes = _notes(values, spec, ok, site_id, missing_ok)
    rows = _stored_rows(values, spec, ok, site_id, extra_names)
    rows["ingest_row"] = np.arange(first_row, first_row + n)[ok]
    bad = ~ok
    problems = pd.DataFrame(
        {
            "row": np.arange(first_row, first_row + n)[bad],
            "field": flags.field[bad],
            "reason": flags.reason[bad],
            "detail": flags.detail[bad],
            "pseudonym": pseudonyms[bad],
        }
    )
    return ChunkResult(rows=rows, problems=problems, notes=notes)


def _notes(
    values: dict[str, np.ndarray], spec: KindSpec, ok: np.ndarray, site_id: str, missing_ok: frozenset[str]
) -> dict[str, int]:
    """Counts of valid rows kept with a change the operator should know of."""
    notes: dict[str, int] = {}
    if "site" in values:
        site = values["site"][ok]
        differs = int((~pd.isna(site) & (site != site_id)).sum())
        if differs:
            notes[SITE_OVERRIDDEN] = differs
    for name in sorted(missing_ok):
        if name in values:
            n = int(np.isnan(values[name][ok].astype(float)).sum())
            if n:
                notes[missing_kept(name)] = n
    return notes


def _extra_columns(df: pd.DataFrame, spec: KindSpec) -> list[str]:
    if not spec.extras:
        return []
    known = {f.name for f in spec.fields} | spec.ignored
    return [c for c in df.columns if c not in known]


def _flag_duplicates(values: dict[str, np.ndarray], spec: KindSpec, flags: _Flags, first_row: int) -> None:
    ok = flags.ok
    keys = _frame({k: values[k] for k in spec.key})[ok]
    dup = keys.duplicated(keep="first")
    if not dup.any():
        return
    first = keys[~dup].reset_index().set_index(list(spec.key))["index"]
    first_idx = keys[dup].join(first, on=list(spec.key))["index"].to_numpy()
    mask = np.zeros(len(ok), dtype=bool)
    mask[dup.index[dup.to_numpy()]] = True
    detail = np.full(len(ok), None, dtype=object)
    detail[mask] = [f"same key as row {first_row + int(i)}" for i in first_idx]
    flags.flag(mask, *duplicate_flag(spec), detail)


def duplicate_flag(spec: KindSpec) -> tuple[str, str]:
    """(field, reason) of a repeated natural key: ``duplicate id`` for one-row-per-person
    kinds, ``duplicate record`` for events and outcome periods."""
    if spec.key == ("pseudonym",):
        return ID_FIELD, DUPLICATE_ID
    return spec.key[-1], DUPLICATE_RECORD


def _iso(d: np.ndarray) -> np.ndarray:
    """ISO text of ``datetime64[D]`` dates (None for NaT); a chunk holds few distinct days,
    so each is formatted once."""
    days, inverse = np.unique(d, return_inverse=True)
    out = np.datetime_as_string(days, unit="D").astype(object)[inverse]
    out[np.isnat(d)] = None
    return out


def _frame(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """A frame that keeps object columns as Python objects: pandas would otherwise copy
    every text column into Arrow strings (and the store writer would copy them back)."""
    return pd.DataFrame(
        {k: pd.Series(v, dtype=object) if v.dtype == object else v for k, v in columns.items()}
    )


def _stored_rows(
    values: dict[str, np.ndarray], spec: KindSpec, ok: np.ndarray, site_id: str, extra_names: list[str]
) -> pd.DataFrame:
    """Valid rows in the table's column names; dates as ISO text (see node.store.engine)."""
    out: dict[str, np.ndarray] = {}
    for f in spec.fields:
        if f.name == ID_FIELD:
            continue
        v = values[f.name][ok]
        if f.type == "date":
            v = _iso(v)
        elif f.type == "binary":
            v = v.astype(np.int64)
        out[f.name] = v
    out = {"pseudonym": values["pseudonym"][ok], **out}
    if spec.kind == "persons":  # the node's site id is authoritative (a differing one is a note)
        out["site"] = np.full(int(ok.sum()), site_id, dtype=object)
        out["age_band"] = _AGE_BAND_BY_YEAR[np.floor(values["age"][ok]).astype(np.int64)]
    if spec.extras:
        extras = pd.DataFrame({name: values[name][ok] for name in extra_names})
        out["extras"] = (
            np.array(extras.to_dict("records"), dtype=object)
            if extra_names
            else np.array([{}] * int(ok.sum()), dtype=object)
        )
    return _frame(out)
