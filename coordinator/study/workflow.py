"""The federated study: describe -> Newton rounds -> PSM statistics -> estimate.

Round trips cost seconds, so the workflow spends as few as it can: the Newton fit starts from a
discriminant direction computed from the describe moments, and once the fit is nearly converged
the PSM-statistics query rides along with the next gradient query (at the same β). When that
round confirms convergence, its table is the final one; otherwise one more round is needed.

The same functions (``shared.psm``) compute each node's answer and the coordinator's sums, so
without noise the result equals the pooled estimator on the union of the rows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import reduce
from typing import Callable, Protocol

import numpy as np

from shared.errors import FederationError
from shared.protocol import Describe, PsFit, PsmStats, StudyQuery
from shared.psm.estimator import AttEstimate, estimate_att
from shared.psm.propensity import CovMoments, PropensityFitter, PsStats, initial_beta
from shared.psm.strata import caliper_edges, logit_sd
from shared.psm.table import PsmTable
from shared.study import StudySpec

log = logging.getLogger("rehealth.coordinator")

#: Ask for the PSM table alongside the gradient once the Newton step falls below this: Newton
#: converges quadratically, so the next round very likely confirms convergence at that β; if it
#: does not, the table is discarded and only node compute (milliseconds) was lost.
NEAR_TOL = 0.05


class Federation(Protocol):
    def ask(self, query: StudyQuery, round_name: str) -> dict: ...

    @property
    def dropped(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class RoundRecord:
    name: str
    seconds: float
    sites: tuple[str, ...]
    node_seconds: float  # slowest node's own compute time


@dataclass
class StudyRun:
    """Everything the workflow learned; turned into a ``StudyResult`` by ``assemble``."""

    spec: StudySpec
    moments: dict[str, CovMoments] = field(default_factory=dict)
    n_clipped: dict[str, np.ndarray] = field(default_factory=dict)
    fitter: PropensityFitter | None = None
    table: PsmTable | None = None
    site_tables: dict[str, PsmTable] = field(default_factory=dict)
    estimate: AttEstimate | None = None
    rounds: list[RoundRecord] = field(default_factory=list)
    compute_s: float = 0.0


Progress = Callable[[str, dict], None]


def _sum(items):
    return reduce(lambda a, b: a + b, items)


def run_study(spec: StudySpec, fed: Federation, progress: Progress | None = None) -> StudyRun:
    """Run the study over ``fed`` and return what it learned (raises ``FederationError``)."""
    progress = progress or (lambda event, data: None)
    run = StudyRun(spec=spec)
    d = len(spec.covariates)

    def ask(ops: tuple, name: str) -> dict:
        started = time.perf_counter()
        progress("round_start", {"round": name, "ops": [o.op for o in ops]})
        answers = fed.ask(StudyQuery.for_spec(spec, ops), name)
        if not answers:
            raise FederationError(f"round {name}: no node answered", round_name=name)
        rec = RoundRecord(name, time.perf_counter() - started, tuple(sorted(answers)),
                          max(float(a.meta.get("seconds", 0.0)) for a in answers.values()))
        run.rounds.append(rec)
        progress("round_end", {"round": name, "seconds": rec.seconds, "sites": list(rec.sites)})
        log.info("round %s: %d sites in %.2f s", name, len(rec.sites), rec.seconds)
        return answers

    answers = ask((Describe(),), "describe")
    for site, a in answers.items():
        run.moments[site] = CovMoments.from_arrays(a.answers["describe"])
        run.n_clipped[site] = a.answers["describe"].get("n_clipped", np.zeros(len(spec.outcomes)))

    def total_moments() -> CovMoments:
        return _sum(m for s, m in run.moments.items() if s not in fed.dropped)

    fed_cfg = spec.federation
    t0 = time.perf_counter()
    fitter = PropensityFitter(p=d + 1, ridge=fed_cfg.ridge, tol=fed_cfg.tol,
                              max_iter=fed_cfg.max_newton_iter, beta0=initial_beta(moments=total_moments()),
                              near_tol=NEAR_TOL)
    run.fitter = fitter
    run.compute_s += time.perf_counter() - t0
    round_no = 0
    while True:
        round_no += 1
        beta = tuple(float(b) for b in fitter.beta)
        ops: tuple = (PsFit(beta=beta),)
        edges = None
        if fitter.near_converged:
            edges = _edges(spec, total_moments(), fitter.beta)
            ops += (PsmStats(beta=beta, edges=tuple(edges)),)
        answers = ask(ops, f"ps-fit-{round_no}")
        t0 = time.perf_counter()
        ps_total = _sum(PsStats.from_arrays(a.answers["ps_fit"]) for a in answers.values())
        converged = fitter.update(ps_total)
        run.compute_s += time.perf_counter() - t0
        progress("newton", {"iteration": fitter.iterations, "converged": converged})
        if converged:
            if edges is not None:
                run.site_tables = {s: PsmTable.from_arrays(a.answers["psm_stats"]) for s, a in answers.items()}
            break
    if not run.site_tables:
        beta = tuple(float(b) for b in fitter.beta)
        edges = _edges(spec, total_moments(), fitter.beta)
        answers = ask((PsmStats(beta=beta, edges=tuple(edges)),), "psm-stats")
        run.site_tables = {s: PsmTable.from_arrays(a.answers["psm_stats"]) for s, a in answers.items()}
    t0 = time.perf_counter()
    run.table = _sum(t for s, t in run.site_tables.items() if s not in fed.dropped)
    run.estimate = estimate_att(table=run.table, outcomes=spec.outcomes,
                                covariates=[c.name for c in spec.covariates])
    run.compute_s += time.perf_counter() - t0
    progress("estimated", {})
    return run


def _edges(spec: StudySpec, moments: CovMoments, beta: np.ndarray) -> np.ndarray:
    """Stratum edges on the logit score, from public quantities and pooled moments only."""
    return caliper_edges(beta=beta, sd=logit_sd(moments=moments, beta=beta),
                         caliper_sd=spec.strata.caliper_sd)
