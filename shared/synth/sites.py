"""Site profiles of the synthetic federation: size, case mix, departments, job types, uptake.

Sites differ on purpose (non-IID): a large insurer with a broad, older membership; mid insurers
with different regional outreach; small companies (< 500 staff) whose departments and job types
shift sex, smoking, body weight and activity, and whose workplace programmes reach departments
unequally. ``--sites N`` takes the first N profiles of :data:`PROFILES` in this fixed order, so
the large insurer is always first and adding a site never changes the ones before it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from shared.errors import SpecError


@dataclass(frozen=True)
class JobType:
    """A job type and the case-mix shifts it carries.

    Args:
        name: job type as written in the person table.
        share: share of its department's staff.
        male_share: probability of sex = 1.
        smoke_shift: added to the site's smoking log-odds.
        bmi_shift: added to BMI (kg/m²).
        activity: mean physical activity (MET-h/week) before age and adiposity effects.
    """

    name: str
    share: float
    male_share: float = 0.5
    smoke_shift: float = 0.0
    bmi_shift: float = 0.0
    activity: float = 18.0


@dataclass(frozen=True)
class Department:
    """A department (a region for insurers) with its job types and programme reach.

    ``uptake_shift`` is added to the uptake log-odds: how hard the programme is pushed there.
    """

    name: str
    share: float
    jobs: tuple[JobType, ...]
    uptake_shift: float = 0.0


@dataclass(frozen=True)
class SiteProfile:
    """One site's size and case mix.

    Args:
        name: site name (also the output folder).
        kind: ``"insurer"`` or ``"company"``.
        size: number of people at scale 1.
        prefix: raw person-id prefix, e.g. ``"A"`` gives ``A-000123``.
        age_range: ``(lo, hi)`` of the age distribution, ``lo + (hi - lo) * Beta(a, b)``.
        age_beta: ``(a, b)`` of that Beta.
        smoke_logit: baseline smoking log-odds at age 45.
        uptake_logit: baseline uptake log-odds of the programme at the site.
        departments: departments with their shares and job types.
        retire_age: from this age the job type becomes ``"retired"`` (insurers), or None.
        channels: intervention delivery channels used at the site, with probabilities.
    """

    name: str
    kind: str
    size: int
    prefix: str
    age_range: tuple[float, float]
    age_beta: tuple[float, float]
    smoke_logit: float
    uptake_logit: float
    departments: tuple[Department, ...]
    retire_age: int | None = None
    channels: tuple[tuple[str, float], ...] = (("in_person", 0.4), ("telehealth", 0.3), ("app", 0.3))

    def __post_init__(self) -> None:
        if abs(sum(d.share for d in self.departments) - 1.0) > 1e-9:
            raise ValueError(f"site {self.name}: department shares must sum to 1")
        for d in self.departments:
            if abs(sum(j.share for j in d.jobs) - 1.0) > 1e-9:
                raise ValueError(f"site {self.name}, {d.name}: job shares must sum to 1")
        if abs(sum(p for _, p in self.channels) - 1.0) > 1e-9:
            raise ValueError(f"site {self.name}: channel probabilities must sum to 1")

    @property
    def job_names(self) -> tuple[str, ...]:
        """Distinct job types in order of first appearance (plus ``retired`` for insurers)."""
        names = list(dict.fromkeys(j.name for d in self.departments for j in d.jobs))
        if self.retire_age is not None:
            names.append(RETIRED)
        return tuple(names)

    def job_matrix(self) -> np.ndarray:
        """``P[department, job]``: job-type shares within each department (rows sum to 1)."""
        names = self.job_names
        p = np.zeros((len(self.departments), len(names)))
        for i, d in enumerate(self.departments):
            for j in d.jobs:
                p[i, names.index(j.name)] = j.share
        return p

    def job_attribute(self, attr: str) -> np.ndarray:
        """One attribute of every job type, indexed like :attr:`job_names`."""
        by_name = {j.name: getattr(j, attr) for d in self.departments for j in d.jobs}
        by_name.setdefault(RETIRED, getattr(_RETIRED_JOB, attr))
        return np.array([by_name[n] for n in self.job_names], dtype=float)


RETIRED = "retired"
_RETIRED_JOB = JobType(RETIRED, 1.0, male_share=0.45, smoke_shift=-0.5, bmi_shift=0.5, activity=14.0)

_INSURED_JOBS = (
    JobType("office", 0.45, male_share=0.45, smoke_shift=-0.2, bmi_shift=0.0, activity=16.0),
    JobType("manual", 0.30, male_share=0.75, smoke_shift=0.45, bmi_shift=1.0, activity=22.0),
    JobType("service", 0.17, male_share=0.40, smoke_shift=0.25, bmi_shift=0.6, activity=17.0),
    JobType("self_employed", 0.08, male_share=0.60, smoke_shift=0.0, bmi_shift=0.2, activity=19.0),
)
_INSURER_CHANNELS = (("in_person", 0.35), ("telehealth", 0.35), ("app", 0.30))
_COMPANY_CHANNELS = (("workplace", 0.55), ("app", 0.30), ("in_person", 0.15))


def _regions(*shifts: tuple[str, float, float]) -> tuple[Department, ...]:
    """Insurer regions: ``(name, share, uptake_shift)``, all with the insured job mix."""
    return tuple(Department(n, s, _INSURED_JOBS, uptake_shift=u) for n, s, u in shifts)


PROFILES: tuple[SiteProfile, ...] = (
    SiteProfile(
        "insurer_large",
        "insurer",
        65_000,
        "A",
        (18, 90),
        (2.3, 3.3),
        smoke_logit=-1.35,
        uptake_logit=-2.20,
        retire_age=67,
        channels=_INSURER_CHANNELS,
        departments=_regions(
            ("north", 0.30, 0.3), ("south", 0.28, -0.2), ("east", 0.22, 0.0), ("west", 0.20, -0.4)
        ),
    ),
    SiteProfile(
        "insurer_mid_1",
        "insurer",
        20_000,
        "B",
        (18, 90),
        (2.6, 3.0),
        smoke_logit=-1.15,
        uptake_logit=-1.85,
        retire_age=67,
        channels=_INSURER_CHANNELS,
        departments=_regions(("urban", 0.6, 0.25), ("rural", 0.4, -0.35)),
    ),
    SiteProfile(
        "insurer_mid_2",
        "insurer",
        13_000,
        "C",
        (18, 90),
        (1.9, 3.4),
        smoke_logit=-1.55,
        uptake_logit=-2.45,
        retire_age=67,
        channels=_INSURER_CHANNELS,
        departments=_regions(("coast", 0.5, 0.1), ("inland", 0.5, -0.1)),
    ),
    SiteProfile(
        "company_logistics",
        "company",
        480,
        "D",
        (18, 67),
        (2.6, 2.4),
        smoke_logit=-1.1,
        uptake_logit=-1.65,
        channels=_COMPANY_CHANNELS,
        departments=(
            Department(
                "warehouse",
                0.45,
                (
                    JobType("picker", 0.7, male_share=0.7, smoke_shift=0.5, bmi_shift=0.8, activity=24.0),
                    JobType(
                        "forklift_operator",
                        0.3,
                        male_share=0.85,
                        smoke_shift=0.5,
                        bmi_shift=1.5,
                        activity=15.0,
                    ),
                ),
                uptake_shift=-0.2,
            ),
            Department(
                "transport",
                0.35,
                (JobType("driver", 1.0, male_share=0.9, smoke_shift=0.7, bmi_shift=2.5, activity=9.0),),
                uptake_shift=-0.7,
            ),
            Department(
                "office",
                0.20,
                (
                    JobType("clerk", 0.75, male_share=0.4, smoke_shift=-0.2, activity=16.0),
                    JobType("manager", 0.25, male_share=0.6, smoke_shift=-0.4, activity=18.0),
                ),
                uptake_shift=0.6,
            ),
        ),
    ),
    SiteProfile(
        "company_software",
        "company",
        220,
        "E",
        (20, 63),
        (2.0, 3.6),
        smoke_logit=-2.0,
        uptake_logit=-1.05,
        channels=_COMPANY_CHANNELS,
        departments=(
            Department(
                "engineering",
                0.6,
                (
                    JobType(
                        "developer", 0.85, male_share=0.75, smoke_shift=-0.1, bmi_shift=0.3, activity=13.0
                    ),
                    JobType("team_lead", 0.15, male_share=0.7, activity=14.0),
                ),
                uptake_shift=0.2,
            ),
            Department(
                "sales",
                0.25,
                (JobType("account_manager", 1.0, male_share=0.55, smoke_shift=0.3, activity=15.0),),
                uptake_shift=-0.3,
            ),
            Department(
                "administration",
                0.15,
                (
                    JobType("clerk", 0.8, male_share=0.3, activity=16.0),
                    JobType("manager", 0.2, male_share=0.5, activity=17.0),
                ),
            ),
        ),
    ),
    SiteProfile(
        "company_manufacturing",
        "company",
        450,
        "F",
        (18, 67),
        (2.9, 2.2),
        smoke_logit=-0.95,
        uptake_logit=-1.75,
        channels=_COMPANY_CHANNELS,
        departments=(
            Department(
                "production",
                0.55,
                (
                    JobType(
                        "machine_operator", 0.7, male_share=0.8, smoke_shift=0.5, bmi_shift=1.2, activity=20.0
                    ),
                    JobType(
                        "shift_supervisor", 0.3, male_share=0.8, smoke_shift=0.3, bmi_shift=1.5, activity=15.0
                    ),
                ),
                uptake_shift=-0.3,
            ),
            Department(
                "maintenance",
                0.20,
                (JobType("technician", 1.0, male_share=0.9, smoke_shift=0.4, bmi_shift=0.8, activity=21.0),),
            ),
            Department(
                "office",
                0.25,
                (
                    JobType("clerk", 0.7, male_share=0.35, smoke_shift=-0.2, activity=15.0),
                    JobType("engineer", 0.3, male_share=0.7, smoke_shift=-0.3, activity=17.0),
                ),
                uptake_shift=0.5,
            ),
        ),
    ),
    SiteProfile(
        "company_retail",
        "company",
        310,
        "G",
        (18, 66),
        (1.8, 2.8),
        smoke_logit=-0.9,
        uptake_logit=-1.95,
        channels=_COMPANY_CHANNELS,
        departments=(
            Department(
                "stores",
                0.75,
                (
                    JobType(
                        "sales_assistant", 0.8, male_share=0.3, smoke_shift=0.4, bmi_shift=0.5, activity=20.0
                    ),
                    JobType(
                        "store_manager", 0.2, male_share=0.45, smoke_shift=0.1, bmi_shift=0.8, activity=16.0
                    ),
                ),
                uptake_shift=-0.2,
            ),
            Department(
                "headquarters",
                0.25,
                (
                    JobType("clerk", 0.7, male_share=0.4, activity=15.0),
                    JobType("manager", 0.3, male_share=0.55, smoke_shift=-0.3, activity=17.0),
                ),
                uptake_shift=0.6,
            ),
        ),
    ),
    SiteProfile(
        "company_clinic",
        "company",
        160,
        "H",
        (20, 67),
        (2.4, 2.4),
        smoke_logit=-1.6,
        uptake_logit=-1.25,
        channels=_COMPANY_CHANNELS,
        departments=(
            Department(
                "wards",
                0.65,
                (
                    JobType("nurse", 0.8, male_share=0.15, smoke_shift=0.3, activity=22.0),
                    JobType("physician", 0.2, male_share=0.5, smoke_shift=-0.8, activity=18.0),
                ),
                uptake_shift=0.1,
            ),
            Department(
                "facilities",
                0.35,
                (
                    JobType("cleaner", 0.6, male_share=0.35, smoke_shift=0.6, bmi_shift=1.8, activity=19.0),
                    JobType(
                        "technician", 0.4, male_share=0.85, smoke_shift=0.4, bmi_shift=0.8, activity=18.0
                    ),
                ),
                uptake_shift=-0.4,
            ),
        ),
    ),
)

#: The most small firms a pooled small-firm study takes (issue 22: 5–20 companies of < 500 staff).
MAX_SMALL_FIRMS = 20
#: Staff per firm at scale 1, all below 500: a few micro firms, most between 100 and 400, a
#: few near the 500 line, as in a regional employers' association (fixed, so seeds reproduce).
_FIRM_SIZES = (
    480,
    140,
    320,
    95,
    260,
    410,
    180,
    75,
    350,
    230,
    120,
    460,
    210,
    65,
    300,
    155,
    390,
    110,
    270,
    440,
)
#: Per-firm shifts of smoking and programme uptake log-odds around the sector template: two
#: firms of one sector are alike but not identical (non-IID within a sector too).
_FIRM_SMOKE = (0.0, 0.15, -0.2, 0.25, -0.1, 0.1, -0.25, 0.2, 0.05, -0.15)
_FIRM_UPTAKE = (0.0, -0.25, 0.2, 0.35, -0.15, 0.1, -0.3, 0.25, 0.15, -0.05)


def _small_firms() -> tuple[SiteProfile, ...]:
    """Twenty small employers cycling through the five company sectors above (logistics,
    software, manufacturing, retail, clinic), each with its own size, smoking and uptake:
    ``firm_01_logistics`` … ``firm_20_clinic``. Raw id prefixes ``S01`` … keep persons apart."""
    templates = [p for p in PROFILES if p.kind == "company"]
    firms = []
    for i in range(MAX_SMALL_FIRMS):
        t = templates[i % len(templates)]
        sector = t.name.removeprefix("company_")
        firms.append(
            replace(
                t,
                name=f"firm_{i + 1:02d}_{sector}",
                size=_FIRM_SIZES[i],
                prefix=f"S{i + 1:02d}",
                smoke_logit=t.smoke_logit + _FIRM_SMOKE[i % len(_FIRM_SMOKE)],
                uptake_logit=t.uptake_logit + _FIRM_UPTAKE[(3 * i) % len(_FIRM_UPTAKE)],
            )
        )
    return tuple(firms)


#: ``rehealth synth --profile small-firms``: a federation of small companies only.
SMALL_FIRMS: tuple[SiteProfile, ...] = _small_firms()
#: Profile sets by the name ``rehealth synth --profile`` takes.
PROFILE_SETS: dict[str, tuple[SiteProfile, ...]] = {"default": PROFILES, "small-firms": SMALL_FIRMS}
PROFILES_BY_NAME: dict[str, SiteProfile] = {p.name: p for p in PROFILES + SMALL_FIRMS}


def spawn_key(profile: SiteProfile) -> tuple[int, ...]:
    """The profile's child-seed key: its place in :data:`PROFILES` (unchanged, so default
    federations stay byte-identical), small firms after an offset of 1000."""
    if profile in PROFILES:
        return (PROFILES.index(profile),)
    return (1000 + SMALL_FIRMS.index(profile),)


def select_profiles(sites: int | None, profile_set: str = "default") -> tuple[SiteProfile, ...]:
    """The first ``sites`` profiles of ``profile_set`` in fixed order (all of them for None).

    Raises:
        SpecError: unknown ``profile_set``, or ``sites`` below 1 or above the set's size.
    """
    if profile_set not in PROFILE_SETS:
        raise SpecError(f"unknown profile set {profile_set!r}; known: {', '.join(PROFILE_SETS)}")
    profiles = PROFILE_SETS[profile_set]
    if sites is None:
        return profiles
    if not 1 <= sites <= len(profiles):
        raise SpecError(f"sites must be between 1 and {len(profiles)} for {profile_set}, got {sites}")
    return profiles[:sites]


def site_size(profile: SiteProfile, scale: float) -> int:
    """People at ``scale`` (at least 20, so every site has a few rows).

    Raises:
        SpecError: ``scale`` is not positive.
    """
    if not scale > 0:
        raise SpecError(f"scale must be positive, got {scale}")
    return max(20, int(round(profile.size * scale)))
