"""A DP study run in one process over K sites' arrays: the math of the Flower workflow.

Each simulated node answers with the same ``shared.psm`` functions and the same Gaussian
mechanism (:func:`shared.dp.mechanisms.release`) a real node uses, on the arrays the plan
names (:data:`shared.dp.sensitivity.RELEASE_KEYS`); the coordinator side is
:mod:`shared.dp.workflow`. No ledger here (the node's ledger is tested on its own): this is
what the benchmark and the end-to-end DP tests drive.

>>> import numpy as np
>>> from shared.study import BudgetSplit, Outcome
>>> from shared.dp.plan import plan_study
>>> rng = np.random.default_rng(0)
>>> sites = []
>>> for _ in range(2):
...     z = rng.uniform(size=(3000, 2)); t = (rng.uniform(size=3000) < 0.3 + 0.3 * z[:, 0]) * 1.0
...     sites.append(SiteArrays(z=z, t=t, y=(0.2 + 0.1 * t + 0.3 * z[:, :1].T).T))
>>> plan = plan_study(epsilon=4.0, delta=1e-6, split=BudgetSplit(), n_covariates=2, n_outcomes=1)
>>> out = run_dp_study(sites=sites, outcomes=[Outcome(name="y", cap=1.0)], covariates=["a", "b"],
...                    plan=plan, rngs=[np.random.default_rng(i) for i in range(2)])
>>> out.estimate.outcomes[0].se_privacy > 0
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from shared.dp.mechanisms import release
from shared.dp.plan import NoisePlan
from shared.dp.forms import release_arrays
from shared.dp.sensitivity import RELEASE_KEYS
from shared.secure_sum import secured
from shared.dp.workflow import (after_describe, dp_edges, dp_estimate, dp_fitter, dp_grid,
                                dp_ps_stats, dp_start_beta, dp_table)
from shared.psm.estimator import AttEstimate, Check
from shared.psm.propensity import cov_moments, ps_contribution
from shared.psm.strata import score_histogram
from shared.psm.table import psm_table
from shared.study import Outcome

__all__ = ["DpStudy", "SiteArrays", "run_dp_study"]


@dataclass(frozen=True)
class SiteArrays:
    """One node's scaled data: z in [0,1]^d, t in {0,1}, y in [0,1]^O (clipped, rescaled)."""

    z: np.ndarray
    t: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class DpStudy:
    estimate: AttEstimate
    beta: np.ndarray
    edges: np.ndarray
    plan: NoisePlan
    at_describe: Check  #: ``dp_fit_resolution`` at describe (what ``unresolved_fit`` acts on)


def _noisy_sum(plan: NoisePlan, query: str, answers: Sequence[dict], rngs,
               secure_aggregation: bool) -> dict[str, np.ndarray]:
    """Each node releases its answer's ``query`` arrays with the plan's σ (σ/√K under secure
    aggregation for the releases summed securely, where only the sum is seen); their sum."""
    keys = RELEASE_KEYS[query]
    shared_noise = secure_aggregation and secured(query)
    sigma = plan.sigma(query) / (np.sqrt(len(answers)) if shared_noise else 1.0)
    noisy = [release(arrays=release_arrays(query, a), sigma=sigma, rng=rng)
             for a, rng in zip(answers, rngs)]
    return {k: sum(n[k] for n in noisy) for k in keys}


def run_dp_study(*, sites: Sequence[SiteArrays], outcomes: Sequence[Outcome],
                 covariates: Sequence[str], plan: NoisePlan, rngs: Sequence[np.random.Generator],
                 ridge: float = 1e-6, strata_n: int | None = None,
                 secure_aggregation: bool = False, split=None,
                 unresolved_fit: str = "warn") -> DpStudy:
    """describe → R noisy Newton rounds → noisy score histogram → noisy PSM table → estimate.

    Args:
        sites: the nodes' arrays.
        outcomes: outcomes with public bounds (the estimate is reported in their units).
        covariates: covariate names.
        plan: the study's :class:`NoisePlan`.
        rngs: one noise generator per node (``secure_rng()`` on real nodes).
        ridge: propensity ridge.
        strata_n: an explicit upper bound on the number of strata (None: the DP rule alone).
        secure_aggregation: as ``[privacy] secure_aggregation`` (each node adds σ/√K to the
            releases after describe; only their sums are seen).
        split: the :class:`~shared.study.BudgetSplit` ``plan`` was made from: the study then
            re-splits after describe as the Flower study does (:func:`dp_resplit`); None keeps
            ``plan`` throughout.
        unresolved_fit: ``warn`` or ``stop``, as the spec's ``[privacy] unresolved_fit``.

    Raises:
        EstimationError subclasses: an arm empty, no overlap, an unresolved fit told to stop.
    """
    k, d = len(sites), sites[0].z.shape[1]
    sa = {"secure_aggregation": secure_aggregation}

    def noisy_sum(query: str, answers: Sequence[dict]) -> dict[str, np.ndarray]:
        return _noisy_sum(plan, query, answers, rngs, secure_aggregation)

    counts = noisy_sum("describe", [cov_moments(z=s.z, t=s.t).to_arrays() for s in sites])["count"]
    gate = after_describe(counts=counts, n_covariates=d, plan=plan, split=split, n_nodes=k,
                          unresolved_fit=unresolved_fit, **sa)
    plan = gate.plan
    fitter = dp_fitter(plan=plan, n_covariates=d, ridge=ridge,
                       beta0=dp_start_beta(counts=counts, n_covariates=d))
    for _ in range(plan.n_ps_rounds):
        answers = [ps_contribution(z=s.z, t=s.t, beta=fitter.beta).to_arrays() for s in sites]
        total = noisy_sum("ps_fit", answers)
        fitter.update(dp_ps_stats(g=total["g"], H=total["H"], plan=plan, n_nodes=k, **sa))
    beta = fitter.beta.copy()
    grid = dp_grid(beta=beta)
    hist = noisy_sum("score_hist", [{"count": score_histogram(z=s.z, t=s.t, beta=beta, grid=grid)}
                                    for s in sites])["count"]
    edges = dp_edges(beta=beta, hist=hist, plan=plan, n_nodes=k, n_treated=float(counts[1]),
                     requested=strata_n, **sa)
    tables = [psm_table(z=s.z, t=s.t, y=s.y, beta=beta, edges=edges).to_arrays() for s in sites]
    main = {**noisy_sum("psm_main", tables), **noisy_sum("psm_sumsq", tables)}
    balance = noisy_sum("psm_balance", tables) if plan.has("psm_balance") else None
    table = dp_table(main=main, balance=balance, edges=edges, n_covariates=d)
    est = dp_estimate(table=table, plan=plan, n_nodes=k, outcomes=outcomes, covariates=covariates,
                      **sa)
    return DpStudy(estimate=est, beta=beta, edges=edges, plan=plan, at_describe=gate.check)
