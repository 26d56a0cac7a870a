"""Node layouts of the coverage grid: how many nodes, of which case mix, holding how many treated.

A layout names the nodes' site profiles (:data:`shared.synth.sites.PROFILES`) and a target
number of treated people in the whole federation, spread evenly over the nodes. Uptake depends
on the profile *and* the data-generating process (weak confounding enrols fewer people), so a
node's size is read off a pilot cohort of that profile under that process
(:func:`pilot_uptake`), not off a table that would go stale when the generator changes.

Small companies keep fewer than 500 staff (``max_staff``): where the target would need more,
the node stays at the limit and the federation holds fewer treated, which the grid reports.

>>> LAYOUTS["k20_900"].k, LAYOUTS["k20_900"].max_staff
(20, 499)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from shared.dp.study_sim import SiteArrays
from shared.features import FEATURES, scale
from shared.psm.table import scale_outcomes
from shared.study import Outcome
from shared.synth import generate_cohort

__all__ = ["LAYOUTS", "Layout", "Node", "build_nodes", "pilot_uptake"]

NAMES = [f.name for f in FEATURES]
#: Seed and size of the pilot cohort that measures a profile's uptake under a process; the
#: seed lies far from the benchmark's data seeds (``seed * 1000 + node``, seed < 10,000).
PILOT_SEED, PILOT_N = 987_654_321, 20_000

_INSURERS5 = ("insurer_large", "insurer_mid_1", "insurer_mid_2", "company_logistics", "company_software")
#: company_retail enrols ~8 %: 45 treated would need > 500 staff, so the 20 companies cycle the
#: four others (logistics, software, manufacturing, clinic)
_COMPANIES = ("company_logistics", "company_software", "company_manufacturing", "company_clinic")


@dataclass(frozen=True)
class Layout:
    """A federation's shape.

    Args:
        name: short key (``k5_10k``).
        about: one line for tables.
        profiles: one site profile per node.
        treated: target number of treated people over all nodes.
        max_staff: upper bound on a node's people (companies), or None.
    """

    name: str
    about: str
    profiles: tuple[str, ...]
    treated: int
    max_staff: int | None = None

    @property
    def k(self) -> int:
        return len(self.profiles)


LAYOUTS: dict[str, Layout] = {
    lay.name: lay
    for lay in (
        Layout("k2_2k", "2k treated over two insurers", ("insurer_large", "insurer_mid_1"), 2_000),
        Layout("k5_1k", "1k treated over five nodes", _INSURERS5, 1_000),
        Layout("k5_10k", "10k treated over five nodes", _INSURERS5, 10_000),
        Layout(
            "k20_900",
            "900 treated over 20 companies (< 500 staff each)",
            _COMPANIES * 5,
            900,
            max_staff=499,
        ),
    )
}


@dataclass(frozen=True)
class Node:
    """One node's arrays for both estimators and its truth."""

    arrays: SiteArrays  #: scaled z, t and outcomes in [0, 1] (the DP study's input)
    y_raw: np.ndarray  #: outcomes in their units (the exact study clips them itself)
    n_treated: int
    att_capped: dict[str, float | None]
    att_raw: dict[str, float | None] | None = None  #: the uncapped truth (a lowered cap's bias)


@lru_cache(maxsize=None)
def pilot_uptake(profile: str, dgp: str) -> float:
    """Share treated in a large pilot cohort of ``profile`` under ``dgp``."""
    cohort, _ = generate_cohort(n=PILOT_N, seed=PILOT_SEED, profile=profile, dgp=dgp)
    return float(cohort["treated"].mean())


def node_sizes(layout: Layout, dgp: str) -> list[int]:
    """People per node so that each holds about ``treated / K`` treated (at most ``max_staff``)."""
    per_node = layout.treated / layout.k
    sizes = [int(round(per_node / pilot_uptake(p, dgp))) for p in layout.profiles]
    return [min(n, layout.max_staff) if layout.max_staff else n for n in sizes]


def build_nodes(
    *, layout: Layout, dgp: str, seed: int, outcomes: tuple[Outcome, ...]
) -> tuple[list[Node], dict[str, float]]:
    """The layout's nodes for one seed and the federation's true ATT per outcome.

    Node ``i`` is ``generate_cohort(seed=seed * 1000 + i)`` of its profile, so nodes of the same
    profile are independent draws. The truth is the sample ATT over all treated people, capped
    at ``outcomes``' bounds: the node truths weighted by their treated counts.
    """
    nodes: list[Node] = []
    for i, (profile, n) in enumerate(zip(layout.profiles, node_sizes(layout, dgp))):
        cohort, truth = generate_cohort(
            n=n, seed=seed * 1000 + i, profile=profile, outcomes=outcomes, dgp=dgp
        )
        y_raw = cohort[[o.name for o in outcomes]].to_numpy(dtype=float)
        y01, _ = scale_outcomes(y=y_raw, lo=[o.lo for o in outcomes], cap=[o.cap for o in outcomes])
        z = scale(cohort[NAMES].to_numpy(dtype=float), FEATURES)
        t = cohort["treated"].to_numpy(dtype=float)
        nodes.append(
            Node(
                SiteArrays(z=z, t=t, y=y01), y_raw, int(truth["n_treated"]), truth["att_capped"], truth["att"]
            )
        )
    n_t = sum(nd.n_treated for nd in nodes)
    att = {
        o.name: sum(float(nd.att_capped[o.name] or 0.0) * nd.n_treated for nd in nodes) / max(n_t, 1)
        for o in outcomes
    }
    return nodes, att


def uncapped_truth(nodes: list[Node], outcomes: tuple[Outcome, ...]) -> dict[str, float]:
    """The federation's sample ATT per outcome without any cap (what a capped estimand is
    biased against)."""
    n_t = sum(nd.n_treated for nd in nodes)
    return {
        o.name: sum(float((nd.att_raw or {}).get(o.name) or 0.0) * nd.n_treated for nd in nodes) / max(n_t, 1)
        for o in outcomes
    }
