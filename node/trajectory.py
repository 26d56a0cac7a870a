"""The intervention trajectory log and the study cohorts derived from it.

The log is the ``interventions`` table: who (pseudonym) received which intervention, when and
through which channel. Files append to it through ingestion; staff append single events as
they happen (:func:`record_intervention`, used by ``rehealth node intervention add`` and the
API). :func:`derive_cohort` turns persons + log + outcomes into the flat table a PSM study
needs, with a landmark design:

* treated: first start of intervention X inside ``[index_start, index_end]``;
* excluded: started X before ``index_start`` (prevalent users: their baseline is not pre-X);
* controls: eligible persons who had not started X by ``index_end`` (later starters stay
  controls: exposure is fixed at the landmark, as in an intention-to-treat analysis);
* eligible: baseline features measured no later than the person's own index (treated: their
  first start; controls: ``index_end``), so covariates precede treatment;
* outcomes over the follow-up window ``[index_end + 1 day, index_end + followup_days]``,
  the same calendar window for both arms (no immortal time): outcome periods starting in it
  are summed (claims, absence days) or maxed (CV event). Persons without such a period are
  excluded and counted, never imputed as zero.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Callable

import pandas as pd
from pydantic import ValidationError
from sqlalchemy import select

from node.store import Store, insert_ignore
from node.store.models import interventions, outcomes, persons
from shared.errors import DataError
from shared.features import FEATURE_NAMES
from shared.schemas import INTERVENTION_CODES, InterventionEvent
from shared.study import format_validation_error

log = logging.getLogger(__name__)

OUTCOME_COLUMNS = ("claims_cost", "cv_event", "absence_days")
SOURCES = ("file", "cli", "api")


@dataclass(frozen=True)
class RecordedIntervention:
    """What was appended (no identifier: the caller knows whom it meant)."""

    code: str
    start: dt.date
    end: dt.date | None
    channel: str
    source: str
    recorded_at: dt.datetime


def record_intervention(store: Store, pseudonymize: Callable[[str], str], *, person_id: str,
                        code: str, start: dt.date | str, end: dt.date | str | None = None,
                        channel: str = "in_person", source: str = "cli") -> RecordedIntervention:
    """Append one intervention event to the trajectory log, pseudonymised.

    Raises:
        DataError: the event is invalid (names the field), or the same (person, code, start)
            is already recorded.
    """
    if source not in SOURCES:
        raise DataError(f"source must be one of {SOURCES}", field="source")
    try:
        ev = InterventionEvent(person_id=person_id, code=code, start=start, end=end,
                               channel=channel)
    except ValidationError as e:
        first = e.errors()[0]["loc"]
        raise DataError(format_validation_error(e, "intervention event"),
                        field=str(first[0]) if first else None) from None
    now = dt.datetime.now(dt.timezone.utc)
    row = {"pseudonym": pseudonymize(ev.person_id), "code": ev.code,
           "start": ev.start.isoformat(), "end": ev.end.isoformat() if ev.end else None,
           "channel": ev.channel, "source": source, "recorded_at": now.isoformat(sep=" ")}
    with store.engine.begin() as conn:
        if insert_ignore(conn, interventions, list(row), [tuple(row.values())]) == 0:
            raise DataError(f"{ev.code} starting {ev.start} is already recorded for this person",
                            field="start")
    log.info("recorded intervention %s starting %s via %s (%s)", ev.code, ev.start, ev.channel,
             source)
    return RecordedIntervention(ev.code, ev.start, ev.end, ev.channel, source, now)


def derive_cohort(store: Store, *, intervention: str, index_start: dt.date, index_end: dt.date,
                  followup_days: int, treatment_column: str = "treated") -> pd.DataFrame:
    """A study cohort from the trajectory log (landmark design, see the module docstring).

    Args:
        store: the node store (persons, interventions, outcomes).
        intervention: the intervention code X.
        index_start, index_end: the index window (inclusive).
        followup_days: length of the follow-up window after ``index_end``.
        treatment_column: name of the 0/1 treatment column.

    Returns:
        One row per eligible person: the 16 features, ``treatment_column`` and
        ``claims_cost, cv_event, absence_days``; no pseudonyms. ``frame.attrs["attrition"]``
        counts who was left out and why.

    Raises:
        DataError: unknown code, an empty or reversed window, or ``followup_days < 1``.
    """
    if intervention not in INTERVENTION_CODES:
        raise DataError(f"unknown intervention code {intervention!r}", field="intervention")
    if index_end < index_start:
        raise DataError("index_end is before index_start", field="index_end")
    if followup_days < 1:
        raise DataError("followup_days must be at least 1", field="followup_days")
    fu_start = index_end + dt.timedelta(days=1)
    fu_end = index_end + dt.timedelta(days=followup_days)

    people = _frame(store, select(persons.c.pseudonym, persons.c.index_date,
                                  *[persons.c[f] for f in FEATURE_NAMES]))
    first = _frame(store, select(interventions.c.pseudonym, interventions.c.start)
                   .where(interventions.c.code == intervention)
                   ).groupby("pseudonym")["start"].min().rename("first_start")
    out = _frame(store, select(outcomes.c.pseudonym, *[outcomes.c[c] for c in OUTCOME_COLUMNS])
                 .where(outcomes.c.period_start >= fu_start, outcomes.c.period_start <= fu_end))
    followed = out.groupby("pseudonym").agg(claims_cost=("claims_cost", "sum"),
                                             cv_event=("cv_event", "max"),
                                             absence_days=("absence_days", "sum"))

    df = people.join(pd.to_datetime(first), on="pseudonym")
    df["index_date"] = pd.to_datetime(df["index_date"])
    win_start, win_end = pd.Timestamp(index_start), pd.Timestamp(index_end)
    started = df["first_start"].notna()
    prior = started & (df["first_start"] < win_start)
    treated = started & ~prior & (df["first_start"] <= win_end)
    own_index = df["first_start"].where(treated, win_end)
    late_baseline = ~prior & (df["index_date"] > own_index)
    keep = ~prior & ~late_baseline
    df = df[keep].assign(**{treatment_column: treated[keep].astype(float)})
    df = df.join(followed, on="pseudonym")
    no_outcome = df["claims_cost"].isna()
    df = df[~no_outcome].sort_values("pseudonym")

    frame = df[list(FEATURE_NAMES) + [treatment_column, *OUTCOME_COLUMNS]].astype(float)
    frame = frame.reset_index(drop=True)
    frame.attrs["attrition"] = {
        "persons": int(len(people)),
        "prior_exposure": int(prior.sum()),
        "baseline_after_index": int(late_baseline.sum()),
        "no_followup_outcome": int(no_outcome.sum()),
        "events_without_person": int((~first.index.isin(people["pseudonym"])).sum()),
        "treated": int(frame[treatment_column].sum()),
        "controls": int((frame[treatment_column] == 0).sum()),
    }
    frame.attrs["followup"] = (fu_start.isoformat(), fu_end.isoformat())
    log.info("derived cohort for %s: %s", intervention, frame.attrs["attrition"])
    return frame


def _frame(store: Store, stmt) -> pd.DataFrame:
    with store.engine.connect() as conn:
        result = conn.execute(stmt)
        return pd.DataFrame(result.all(), columns=list(result.keys()))

