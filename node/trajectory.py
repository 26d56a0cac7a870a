"""The intervention trajectory log and the study cohorts derived from it.

The log is the ``interventions`` table: who (pseudonym) received which intervention, when and
through which channel. Files append to it through ingestion; staff append single events as
they happen (:func:`record_intervention`, used by ``rehealth node intervention add`` and the
API); completed items of delivered plans append through :func:`record_planned`
(:mod:`node.plans.events`). :func:`derive_cohort` turns persons + log + outcomes into the
flat table a PSM study needs (a new-user design anchored at each person's index date):

* a person's *index* is ``persons.index_date``: study entry, when the 16 baseline features
  were measured. Eligible: index inside the study's index window ``[index_start, index_end]``;
* excluded as prevalent users: started intervention X before their index (their baseline is
  not pre-treatment);
* treated: first start of X between their index and the end of the window (or within
  ``grace_days`` of the index, if given);
* controls: eligible, not excluded, not treated (a later start keeps them controls: exposure
  is fixed when the window closes, as in an intention-to-treat analysis);
* outcomes over the follow-up ``[index, index + followup_days)``, the same span for both arms:
  outcome periods starting in it are summed (claims, absence days) or maxed (CV event).
  Persons without such a period are excluded and counted, never imputed as zero.

Keep the grace period short against the follow-up: a treated person must stay event-free
until their start, which favours the treated slightly (immortal time). Synthetic sites from
``shared.synth`` use a 30-day grace period and a 365-day outcome period.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

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
SOURCES = ("file", "cli", "api", "plan")


@dataclass(frozen=True)
class RecordedIntervention:
    """What was appended (no identifier: the caller knows whom it meant)."""

    code: str
    start: dt.date
    end: dt.date | None
    channel: str
    source: str
    recorded_at: dt.datetime


def record_intervention(
    store: Store,
    pseudonymize: Callable[[str], str],
    *,
    person_id: str,
    code: str,
    start: dt.date | str,
    end: dt.date | str | None = None,
    channel: str = "in_person",
    source: str = "cli",
) -> RecordedIntervention:
    """Append one intervention event to the trajectory log, pseudonymised.

    Raises:
        DataError: the event is invalid (names the field), or the same (person, code, start)
            is already recorded.
    """
    if source not in SOURCES:
        raise DataError(f"source must be one of {SOURCES}", field="source")
    try:
        ev = InterventionEvent(person_id=person_id, code=code, start=start, end=end, channel=channel)
    except ValidationError as e:
        first = e.errors()[0]["loc"]
        raise DataError(
            format_validation_error(e, "intervention event"), field=str(first[0]) if first else None
        ) from None
    now = dt.datetime.now(dt.timezone.utc)
    row = {
        "pseudonym": pseudonymize(ev.person_id),
        "code": ev.code,
        "start": ev.start.isoformat(),
        "end": ev.end.isoformat() if ev.end else None,
        "channel": ev.channel,
        "source": source,
        "recorded_at": now.isoformat(sep=" "),
    }
    with store.engine.begin() as conn:
        if insert_ignore(conn, interventions, list(row), [tuple(row.values())]) == 0:
            raise DataError(
                f"{ev.code} starting {ev.start} is already recorded for this person", field="start"
            )
    log.info("recorded intervention %s starting %s via %s (%s)", ev.code, ev.start, ev.channel, source)
    return RecordedIntervention(ev.code, ev.start, ev.end, ev.channel, source, now)


def record_planned(
    conn, *, pseudonym: str, code: str, start: dt.date, end: dt.date | None, channel: str
) -> bool:
    """Log a completed plan item as an intervention (source ``plan``) inside the caller's
    transaction (:mod:`node.plans.events`); False if the same (person, code, start) is logged.

    This is how delivered plans reach :func:`derive_cohort`: the treatment of a study of
    ``code`` counts a person whose plan item for it was completed, from its start date.
    """
    if code not in INTERVENTION_CODES:
        raise DataError(f"unknown intervention code {code!r}", field="code")
    row = {
        "pseudonym": pseudonym,
        "code": code,
        "start": start.isoformat(),
        "end": end.isoformat() if end else None,
        "channel": channel,
        "source": "plan",
        "recorded_at": dt.datetime.now(dt.timezone.utc).isoformat(sep=" "),
    }
    return insert_ignore(conn, interventions, list(row), [tuple(row.values())]) == 1


def derive_cohort(
    store: Store,
    *,
    intervention: str,
    index_start: dt.date,
    index_end: dt.date,
    followup_days: int,
    grace_days: int | None = None,
    treatment_column: str = "treated",
    covariates: Sequence[str] | None = None,
) -> pd.DataFrame:
    """A study cohort from persons + trajectory log + outcomes (see the module docstring).

    Args:
        store: the node store.
        intervention: the intervention code X.
        index_start, index_end: the index window (inclusive).
        followup_days: length of each person's follow-up from their index date.
        grace_days: treated only if X starts within this many days of the index (None: any
            time up to ``index_end``).
        treatment_column: name of the 0/1 treatment column.
        covariates: the features the study adjusts for (default: all 16). A person kept by
            the ``indicator`` missing-value policy with one of these missing is left out,
            counted as ``missing_feature`` in the attrition; a missing feature the study does
            not use leaves them in (its column is then NaN: the study must not read it).

    Returns:
        One row per eligible person: the 16 features, ``treatment_column`` and
        ``claims_cost, cv_event, absence_days``; no pseudonyms. ``frame.attrs["attrition"]``
        counts who was left out and why.

    Raises:
        DataError: unknown code, a reversed window, ``followup_days < 1`` or ``grace_days < 0``.
    """
    if intervention not in INTERVENTION_CODES:
        raise DataError(f"unknown intervention code {intervention!r}", field="intervention")
    if index_end < index_start:
        raise DataError("index_end is before index_start", field="index_end")
    if followup_days < 1:
        raise DataError("followup_days must be at least 1", field="followup_days")
    if grace_days is not None and grace_days < 0:
        raise DataError("grace_days must not be negative", field="grace_days")

    people = _frame(
        store, select(persons.c.pseudonym, persons.c.index_date, *[persons.c[f] for f in FEATURE_NAMES])
    )
    starts = _frame(
        store,
        select(interventions.c.pseudonym, interventions.c.start).where(interventions.c.code == intervention),
    )
    horizon = index_end + dt.timedelta(days=followup_days)
    periods = _frame(
        store,
        select(
            outcomes.c.pseudonym, outcomes.c.period_start, *[outcomes.c[c] for c in OUTCOME_COLUMNS]
        ).where(outcomes.c.period_start >= index_start, outcomes.c.period_start < horizon),
    )

    used = list(FEATURE_NAMES if covariates is None else covariates)
    unknown = [c for c in used if c not in FEATURE_NAMES]
    if unknown:
        raise DataError(f"unknown covariate(s) {', '.join(unknown)}", field="covariates")
    incomplete = people[used].isna().any(axis=1)
    people = people[~incomplete].copy()
    people["index_date"] = pd.to_datetime(people["index_date"])
    in_window = people["index_date"].between(pd.Timestamp(index_start), pd.Timestamp(index_end))
    df = people[in_window]
    starts["start"] = pd.to_datetime(starts["start"])
    starts = starts.merge(df[["pseudonym", "index_date"]], on="pseudonym")
    prior_ids = set(starts.loc[starts["start"] < starts["index_date"], "pseudonym"])
    last = (
        starts["index_date"] + pd.Timedelta(days=grace_days)
        if grace_days is not None
        else pd.Timestamp(index_end)
    )
    took_up = (
        (starts["start"] >= starts["index_date"])
        & (starts["start"] <= last)
        & (starts["start"] <= pd.Timestamp(index_end))
    )
    treated_ids = set(starts.loc[took_up, "pseudonym"]) - prior_ids

    prior = df["pseudonym"].isin(prior_ids)
    df = df[~prior].assign(**{treatment_column: df["pseudonym"].isin(treated_ids).astype(float)})
    followed = _followup(periods, df[["pseudonym", "index_date"]], followup_days)
    df = df.join(followed, on="pseudonym")
    no_outcome = df["claims_cost"].isna()
    df = df[~no_outcome].sort_values("pseudonym")

    frame = df[list(FEATURE_NAMES) + [treatment_column, *OUTCOME_COLUMNS]].astype(float)
    frame = frame.reset_index(drop=True)
    frame.attrs["attrition"] = {
        "persons": int(len(people) + incomplete.sum()),
        "missing_feature": int(incomplete.sum()),
        "index_outside_window": int((~in_window).sum()),
        "prior_exposure": int(prior.sum()),
        "no_followup_outcome": int(no_outcome.sum()),
        "treated": int(frame[treatment_column].sum()),
        "controls": int((frame[treatment_column] == 0).sum()),
    }
    log.info("derived cohort for %s: %s", intervention, frame.attrs["attrition"])
    return frame


def _followup(periods: pd.DataFrame, index: pd.DataFrame, followup_days: int) -> pd.DataFrame:
    """Per pseudonym: outcome periods starting in ``[index, index + followup_days)``."""
    p = periods.merge(index, on="pseudonym")
    start = pd.to_datetime(p["period_start"])
    inside = (start >= p["index_date"]) & (start < p["index_date"] + pd.Timedelta(days=followup_days))
    return (
        p[inside]
        .groupby("pseudonym")
        .agg(
            claims_cost=("claims_cost", "sum"),
            cv_event=("cv_event", "max"),
            absence_days=("absence_days", "sum"),
        )
    )


def _frame(store: Store, stmt) -> pd.DataFrame:
    with store.engine.connect() as conn:
        result = conn.execute(stmt)
        return pd.DataFrame(result.all(), columns=list(result.keys()))
