"""Seeded generation of a synthetic federation with its ground truth (pure: no I/O).

Each site draws from its own ``Generator(PCG64(SeedSequence(seed, spawn_key=(i,))))``, where
``i`` is the site's place in :data:`~shared.synth.sites.PROFILES`: the child seeds that
``SeedSequence(seed).spawn`` hands out. A site's data therefore depends only on the seed, its
profile and its size, never on which other sites are generated.

>>> fed = generate_federation(seed=1, sites=2, scale=0.01)
>>> [s.name for s in fed.sites]
['insurer_large', 'insurer_mid_1']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from shared.errors import SpecError
from shared.study import Outcome
from shared.synth.dgp import BASELINE, UNMEASURED_OUTCOME, Dgp, effect_modifier
from shared.synth.dgp import dgp as get_dgp
from shared.synth.hazard import HIGH_RISK, baseline_hazard, event_probability
from shared.synth.negative_controls import NEGATIVE_CONTROLS, draw_negative_controls
from shared.synth.outcomes import OUTCOMES, PotentialOutcomes, draw_potential_outcomes
from shared.synth.population import Population, draw_population
from shared.synth.records import (
    INDEX_WINDOW_DAYS,
    OUTCOME_PERIOD_DAYS,
    TREATMENT_CODE,
    cohort_table,
    person_ids,
    record_tables,
)
from shared.synth.sites import (
    PROFILES_BY_NAME,
    RETIRED,
    SiteProfile,
    select_profiles,
    site_size,
    spawn_key,
)
from shared.synth.truth import outcome_truth
from shared.synth.uptake import uptake_probability


@dataclass(frozen=True)
class SiteData:
    """One site's tables. ``potential`` (the truth per person) is never part of the cohort."""

    name: str
    profile: SiteProfile
    persons: pd.DataFrame
    interventions: pd.DataFrame
    outcomes: pd.DataFrame
    cohort: pd.DataFrame
    potential: pd.DataFrame


@dataclass(frozen=True)
class Federation:
    """The sites in profile order and the JSON-ready ground truth (``truth.json``)."""

    sites: tuple[SiteData, ...]
    truth: dict


@dataclass(frozen=True)
class _Simulation:
    """Everything drawn for one site before the record tables are laid out."""

    profile: SiteProfile
    population: Population
    p0: np.ndarray
    propensity: np.ndarray
    treated: np.ndarray
    potential: PotentialOutcomes
    negative: dict[str, np.ndarray]  # negative controls (no effect: one value for both arms)


def _site_rng(seed: int, profile: SiteProfile, stream: tuple[int, ...] = ()) -> np.random.Generator:
    """The site's generator; ``stream=(1,)``: its negative-control generator, a child seed of
    its own so the site's other draws are the same with or without negative controls."""
    child = np.random.SeedSequence(seed, spawn_key=spawn_key(profile) + stream)
    return np.random.Generator(np.random.PCG64(child))


def _simulate(
    rng: np.random.Generator,
    profile: SiteProfile,
    n: int,
    process: Dgp,
    nc_rng: np.random.Generator,
) -> _Simulation:
    pop = draw_population(rng, profile=profile, n=n)
    care = nc_rng.standard_normal(pop.n)  # latent care-seeking (never a column)
    hazard0 = baseline_hazard(pop.features)
    p0 = event_probability(hazard0)
    dept_shift = np.array([d.uptake_shift for d in profile.departments])
    dept_index = {d.name: i for i, d in enumerate(profile.departments)}
    shift = dept_shift[np.array([dept_index[d] for d in pop.department])]
    pi = uptake_probability(
        features=pop.features,
        site_logit=profile.uptake_logit,
        department_shift=shift,
        process=process,
        care=care,
    )
    treated = (rng.random(n) < pi).astype(np.int64)
    potential = draw_potential_outcomes(
        rng,
        hazard0=hazard0,
        working=pop.job_type != RETIRED,
        modifier=effect_modifier(process, pop.features),
        claims_log_sd=process.claims_log_sd,
        claims_clip=process.claims_clip,
        hidden=(UNMEASURED_OUTCOME * care - UNMEASURED_OUTCOME**2 / 2) if process.unmeasured else None,
    )
    negative = draw_negative_controls(nc_rng, features=pop.features, care=care)
    return _Simulation(profile, pop, p0, pi, treated, potential, negative)


def _cohort(sim: _Simulation, ids: np.ndarray) -> pd.DataFrame:
    return cohort_table(
        ids=ids,
        profile=sim.profile,
        department=sim.population.department,
        job_type=sim.population.job_type,
        features=sim.population.features,
        treated=sim.treated,
        observed={**sim.potential.observed(sim.treated), **sim.negative},
    )


def _potential_table(sim: _Simulation, ids: np.ndarray) -> pd.DataFrame:
    cols = {"person_id": ids, "baseline_risk": sim.p0, "propensity": sim.propensity, "treated": sim.treated}
    for o in OUTCOMES:
        cols[f"y0_{o.name}"] = sim.potential.y0[o.name]
        cols[f"y1_{o.name}"] = sim.potential.y1[o.name]
    return pd.DataFrame(cols)


def _truth(sims: list[_Simulation], outcomes: Sequence[Outcome] = OUTCOMES) -> dict:
    """Truth of the people in ``sims`` taken together, capped at ``outcomes``' bounds."""

    def cat(get) -> np.ndarray:
        return np.concatenate([get(s) for s in sims])

    truth = outcome_truth(
        y0={o.name: cat(lambda s, k=o.name: s.potential.y0[k]) for o in OUTCOMES},
        y1={o.name: cat(lambda s, k=o.name: s.potential.y1[k]) for o in OUTCOMES},
        treated=cat(lambda s: s.treated),
        p0=cat(lambda s: s.p0),
        outcomes=outcomes,
    )
    t = cat(lambda s: s.treated).astype(bool)
    naive = {}
    for o in NEGATIVE_CONTROLS:
        y = cat(lambda s, k=o.name: s.negative[k])
        naive[o.name] = float(y[t].mean() - y[~t].mean()) if t.any() and (~t).any() else None
    # every negative control's true ATT is 0 (one value for both arms); the naive difference
    # shows the confounding an analysis must remove from it
    truth["negative_controls"] = {"att": {o.name: 0.0 for o in NEGATIVE_CONTROLS}, "naive_difference": naive}
    return truth


def _dgp_truth(process: Dgp) -> dict:
    """``{"dgp": name}`` for a process other than the baseline (whose truth stays as it was)."""
    return {} if process.is_baseline else {"dgp": process.name}


def _study_truth() -> dict:
    return {
        "treatment": TREATMENT_CODE,
        "treated_if": f"{TREATMENT_CODE} started 0-{INDEX_WINDOW_DAYS} days after the index date",
        "outcome_period_days": OUTCOME_PERIOD_DAYS,
        "high_risk": f"baseline 1-year CV event risk >= {HIGH_RISK:g}",
        "outcomes": [o.model_dump() for o in OUTCOMES],
    }


def generate_federation(
    *,
    seed: int,
    sites: int | None = None,
    scale: float = 1.0,
    dgp: str | Dgp = BASELINE,
    profile_set: str = "default",
) -> Federation:
    """Generate the first ``sites`` profiles of ``profile_set`` (all for None) at ``scale``
    with their truth (``"small-firms"``: up to 20 companies of < 500 staff).

    Args:
        seed: master seed; equal seeds give equal federations.
        sites: number of profiles to take in fixed order (large insurer first).
        scale: multiplies every site's size (at least 20 people per site).
        dgp: the data-generating process (:mod:`shared.synth.dgp`); the baseline's output is
            the same as it always was, other processes add ``"dgp"`` to the truth.

    Returns:
        A :class:`Federation`; ``truth`` holds the study definition, ``pooled`` and per-site
        figures (see :func:`shared.synth.truth.outcome_truth`), the seed and the scale.

    Raises:
        SpecError: ``sites`` or ``scale`` out of range, or an unknown ``dgp``.
    """
    process = get_dgp(dgp)
    out_sites: list[SiteData] = []
    sims: list[_Simulation] = []
    site_truth: dict[str, dict] = {}
    for profile in select_profiles(sites, profile_set):
        rng = _site_rng(seed, profile)
        sim = _simulate(rng, profile, site_size(profile, scale), process, _site_rng(seed, profile, (1,)))
        ids = person_ids(profile.prefix, sim.population.n)
        cohort = _cohort(sim, ids)
        persons, interventions, outcomes = record_tables(rng, cohort=cohort, profile=profile)
        out_sites.append(
            SiteData(
                profile.name, profile, persons, interventions, outcomes, cohort, _potential_table(sim, ids)
            )
        )
        sims.append(sim)
        site_truth[profile.name] = {"kind": profile.kind, **_truth([sim])}
    truth = {
        "generator": "shared.synth",
        "seed": seed,
        "scale": scale,
        **({} if profile_set == "default" else {"profile_set": profile_set}),
        "study": _study_truth(),
        "pooled": _truth(sims),
        "sites": site_truth,
        **_dgp_truth(process),
    }
    return Federation(sites=tuple(out_sites), truth=truth)


def generate_cohort(
    *,
    n: int,
    seed: int,
    profile: str = "insurer_mid_1",
    outcomes: Sequence[Outcome] = OUTCOMES,
    dgp: str | Dgp = BASELINE,
) -> tuple[pd.DataFrame, dict]:
    """One site's flat cohort table and its truth, without the record tables (fast).

    With ``n`` equal to the site's size in :func:`generate_federation` the cohort is the same.

    Args:
        n: number of people.
        seed: master seed.
        profile: a name from :data:`~shared.synth.sites.PROFILES`.
        outcomes: the outcomes whose bounds cap ``att_capped`` in the truth (a study with other
            caps, e.g. a large-loss cap on claims, targets another estimand).
        dgp: the data-generating process (:mod:`shared.synth.dgp`).

    Returns:
        ``(cohort, truth)``; ``truth`` as one site's entry of the federation truth, plus ``seed``
        (and ``dgp`` for a process other than the baseline).

    Raises:
        SpecError: unknown profile or process, or ``n`` below 1.
    """
    process = get_dgp(dgp)
    if profile not in PROFILES_BY_NAME:
        raise SpecError(f"unknown site profile {profile!r}; known: {', '.join(PROFILES_BY_NAME)}")
    if n < 1:
        raise SpecError(f"n must be at least 1, got {n}")
    prof = PROFILES_BY_NAME[profile]
    sim = _simulate(_site_rng(seed, prof), prof, n, process, _site_rng(seed, prof, (1,)))
    cohort = _cohort(sim, person_ids(prof.prefix, n))
    truth = {"seed": seed, "site": prof.name, "kind": prof.kind, **_truth([sim], outcomes)}
    return cohort, {**truth, **_dgp_truth(process)}
