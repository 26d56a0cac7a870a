"""A DP study run in one process over K sites' arrays: the shipped study, with seeded noise.

:func:`run_dp_study` is the study driver (:func:`shared.driver.run_study`, the code the
coordinator runs over Flower) over in-process sites (:class:`shared.inprocess_sites.InProcessSites`)
that answer with the node's own answer and release code (:mod:`shared.answer`), each deriving
its noise plan from the query's public privacy terms as a node does. Only the ledger, grants and
the wire are left out (they are tested on their own), and the noise comes from seeded
generators instead of the OS CSPRNG. This is what the benchmark and the end-to-end DP tests
drive, so the coverage tables measure the code that ships.

>>> import numpy as np
>>> from shared.study import Outcome, Privacy
>>> rng = np.random.default_rng(0)
>>> sites = []
>>> for _ in range(2):
...     z = rng.uniform(size=(3000, 2)); t = (rng.uniform(size=3000) < 0.3 + 0.3 * z[:, 0]) * 1.0
...     sites.append(SiteArrays(z=z, t=t, y=(0.2 + 0.1 * t + 0.3 * z[:, :1].T).T))
>>> out = run_dp_study(sites=sites, outcomes=[Outcome(name="y", cap=1.0)], covariates=["a", "b"],
...                    privacy=Privacy(epsilon=4.0, unresolved_fit="warn"),
...                    rngs=[np.random.default_rng(i) for i in range(2)])
>>> out.estimate.outcomes[0].se_privacy > 0
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from shared.answer import SiteArrays
from shared.dp.capround import LargeLossCaps
from shared.dp.plan import NoisePlan
from shared.psm.estimator import AttEstimate, Check
from shared.study import Outcome, Privacy, StudySpec

__all__ = ["DpStudy", "SiteArrays", "dp_spec", "run_dp_study"]


@dataclass(frozen=True)
class DpStudy:
    estimate: AttEstimate
    beta: np.ndarray
    edges: np.ndarray
    plan: NoisePlan  #: the plan of the rounds after describe (re-split if the study re-split)
    at_describe: Check  #: ``dp_fit_resolution`` at describe (what ``unresolved_fit`` acts on)
    caps: LargeLossCaps | None = None  #: the large-loss cap round's caps (``privacy.large_loss_cap``)


def dp_spec(
    *,
    outcomes: Sequence[Outcome],
    covariates: Sequence[str],
    privacy: Privacy,
    n_sites: int,
    ridge: float = 1e-6,
    strata_n: int | None = None,
    estimator: Literal["stratified", "dr"] | None = None,
) -> StudySpec:
    """The study spec of a simulated DP study over arrays scaled to [0, 1]: ``strata_n`` asks
    for at most that many strata (quantile), None leaves it to the DP rule; ``estimator`` as
    the spec's (None: the spec's default)."""
    from shared.psm.reference import reference_spec

    if not privacy.enabled:
        raise ValueError("a DP study needs privacy.enabled = true")
    return reference_spec(
        outcomes=outcomes,
        covariates=covariates,
        n_sites=n_sites,
        strata="quantile" if strata_n else "auto",
        n_strata=strata_n or 8,
        ridge=ridge,
        privacy=privacy,
        estimator=estimator,
    )


def run_dp_study(
    *,
    sites: Sequence[SiteArrays],
    outcomes: Sequence[Outcome],
    covariates: Sequence[str],
    privacy: Privacy,
    rngs: Sequence[np.random.Generator],
    ridge: float = 1e-6,
    strata_n: int | None = None,
    estimator: Literal["stratified", "dr"] | None = None,
) -> DpStudy:
    """describe → R noisy Newton rounds → noisy score histogram → noisy PSM table → estimate,
    exactly as the Flower study runs it (re-split after describe included).

    Args:
        sites: the nodes' arrays (scaled; outcomes clipped and rescaled to [0, 1]).
        outcomes: outcomes with public bounds (the estimate is reported in their units).
        covariates: covariate names.
        privacy: the spec's ``[privacy]`` section (ε, δ, split, rounds, accountant,
            ``secure_aggregation``, ``unresolved_fit``).
        rngs: one noise generator per node (``secure_rng()`` on real nodes).
        ridge: propensity ridge.
        strata_n: an explicit upper bound on the number of strata (None: the DP rule alone).
        estimator: the spec's ``estimator`` (None: the spec's default for a DP study).

    Raises:
        EstimationError subclasses: an arm empty, no overlap, an unresolved fit told to stop.
    """
    from shared.driver import run_study
    from shared.inprocess_sites import InProcessSites

    spec = dp_spec(
        outcomes=outcomes,
        covariates=covariates,
        privacy=privacy,
        n_sites=len(sites),
        ridge=ridge,
        strata_n=strata_n,
        estimator=estimator,
    )
    names = [s.name for s in spec.sites]
    run = run_study(spec, InProcessSites(dict(zip(names, sites)), rngs=dict(zip(names, rngs))))
    assert run.estimate is not None and run.fitter is not None and run.table is not None
    assert run.plan is not None and run.at_describe is not None
    return DpStudy(
        estimate=run.estimate,
        beta=run.fitter.beta.copy(),
        edges=run.table.edges,
        plan=run.plan,
        at_describe=run.at_describe,
        caps=run.caps,
    )
