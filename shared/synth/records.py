"""Record tables a site would hold: persons, intervention events, outcomes, the flat cohort.

The default study's treatment is *lifestyle coaching started within* :data:`INDEX_WINDOW_DAYS`
*of the index date*; outcomes cover the year from the index date. For realism the trajectory
log also holds other programmes and some lifestyle coaching that ended before the index date
(those people are controls).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from shared.features import FEATURE_NAMES
from shared.synth.negative_controls import NEGATIVE_CONTROL_NAMES
from shared.synth.outcomes import OUTCOME_NAMES
from shared.synth.sites import SiteProfile

TREATMENT_CODE = "lifestyle_coaching"
#: A person is treated when the programme starts this many days after the index date or fewer.
INDEX_WINDOW_DAYS = 30
#: Outcomes are counted over this many days from the index date.
OUTCOME_PERIOD_DAYS = 365
_FIRST_INDEX = np.datetime64("2024-01-01", "D")
_INDEX_SPREAD_DAYS = 182
_PERSON_COLUMNS = ("person_id", "site", "department", "job_type")
INTERVENTION_COLUMNS = ("person_id", "code", "start", "end", "channel")


def person_ids(prefix: str, n: int) -> np.ndarray:
    """Raw site identifiers ``A-000001`` … (the node pseudonymises them at ingestion)."""
    return np.array([f"{prefix}-{i:06d}" for i in range(1, n + 1)], dtype=object)


def cohort_table(
    *,
    ids: np.ndarray,
    profile: SiteProfile,
    department: np.ndarray,
    job_type: np.ndarray,
    features: dict[str, np.ndarray],
    treated: np.ndarray,
    observed: dict[str, np.ndarray],
) -> pd.DataFrame:
    """The flat cohort table: one row per person with features, ``treated``, outcomes and the
    negative controls (when ``observed`` holds them; the outcome records keep the three
    outcomes only: a study reads the cohort)."""
    cols = {"person_id": ids, "site": profile.name, "department": department, "job_type": job_type}
    cols.update({n: features[n] for n in FEATURE_NAMES})
    cols["treated"] = np.asarray(treated, dtype=np.int64)
    cols.update({n: observed[n] for n in OUTCOME_NAMES})
    cols.update({n: observed[n] for n in NEGATIVE_CONTROL_NAMES if n in observed})
    return pd.DataFrame(cols)


def _dates(days: np.ndarray) -> pd.Series:
    return pd.Series(np.asarray(days, dtype="datetime64[D]").astype("datetime64[s]"))


def _events(
    rng: np.random.Generator,
    *,
    who: np.ndarray,
    code: str,
    index: np.ndarray,
    start: tuple[int, int],
    length: tuple[int, int] | None,
    channels: tuple[tuple[str, float], ...],
) -> dict[str, np.ndarray]:
    """Events of one code for persons ``who`` (indices), starting ``start`` days from their
    index date (a ``[lo, hi)`` range), lasting ``length`` days, or ongoing for None."""
    k = len(who)
    begin = index[who] + rng.integers(*start, size=k)
    end = (begin + rng.integers(*length, size=k)) if length else np.full(k, np.datetime64("NaT"))
    names = np.array([c for c, _ in channels], dtype=object)
    channel = names[rng.choice(len(names), size=k, p=[p for _, p in channels])]
    return {
        "who": who,
        "code": np.full(k, code, dtype=object),
        "start": begin,
        "end": end,
        "channel": channel,
    }


def record_tables(
    rng: np.random.Generator, *, cohort: pd.DataFrame, profile: SiteProfile
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Persons, intervention events and outcome records consistent with ``cohort``.

    Returns:
        ``(persons, interventions, outcomes)``; interventions sorted by person and start.
    """
    n = len(cohort)
    index = _FIRST_INDEX + rng.integers(0, _INDEX_SPREAD_DAYS, size=n).astype("timedelta64[D]")
    persons = cohort[list(_PERSON_COLUMNS)].copy()
    persons["index_date"] = _dates(index)
    for name in FEATURE_NAMES:
        persons[name] = cohort[name].to_numpy()

    treated = cohort["treated"].to_numpy() == 1
    f = {n_: cohort[n_].to_numpy() for n_ in ("bp_treated", "smoker", "diabetes")}

    def pick(mask: np.ndarray, share: float) -> np.ndarray:
        """Indices of a random ``share`` of the people in ``mask``."""
        return np.flatnonzero(mask & (rng.random(n) < share))

    ch = profile.channels
    groups = [
        _events(
            rng,
            who=np.flatnonzero(treated),
            code=TREATMENT_CODE,
            index=index,
            start=(0, INDEX_WINDOW_DAYS + 1),
            length=(84, 181),
            channels=ch,
        ),
        _events(
            rng,
            who=pick(~treated, 0.03),
            code=TREATMENT_CODE,
            index=index,
            start=(-730, -400),
            length=(84, 181),
            channels=ch,
        ),
        _events(
            rng,
            who=pick(f["bp_treated"] == 1, 0.4),
            code="bp_management",
            index=index,
            start=(-1500, -30),
            length=None,
            channels=ch,
        ),
        _events(
            rng,
            who=pick(f["smoker"] == 1, 0.12),
            code="smoking_cessation",
            index=index,
            start=(-365, 300),
            length=(56, 91),
            channels=ch,
        ),
        _events(
            rng,
            who=pick(f["diabetes"] == 1, 0.25),
            code="diabetes_prevention",
            index=index,
            start=(-700, 0),
            length=(180, 366),
            channels=ch,
        ),
        _events(
            rng,
            who=pick(np.ones(n, dtype=bool), 0.05),
            code="digital_prevention",
            index=index,
            start=(-200, 300),
            length=None,
            channels=(("app", 1.0),),
        ),
    ]
    ids = cohort["person_id"].to_numpy()
    who = np.concatenate([g["who"] for g in groups])
    start = np.concatenate([g["start"] for g in groups])
    order = np.lexsort((start, who))
    interventions = pd.DataFrame(
        {
            "person_id": ids[who][order],
            "code": np.concatenate([g["code"] for g in groups])[order],
            "start": _dates(start[order]),
            "end": _dates(np.concatenate([g["end"] for g in groups])[order]),
            "channel": np.concatenate([g["channel"] for g in groups])[order],
        }
    )

    outcomes = pd.DataFrame(
        {
            "person_id": ids,
            "period_start": _dates(index),
            "period_end": _dates(index + (OUTCOME_PERIOD_DAYS - 1)),
        }
    )
    for name in OUTCOME_NAMES:
        outcomes[name] = cohort[name].to_numpy()
    return persons, interventions, outcomes
