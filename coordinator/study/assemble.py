"""Turn what a study run learned into the :class:`shared.result.StudyResult` contract."""

from __future__ import annotations

from shared import __version__
from shared.dp.accounting import accountant_label
from shared.dp.capround import result_caps
from shared.driver import StudyRun
from shared.psm.selection import C_QUA
from shared.psm.strata import score_range
from shared.result import PrivacySpent, Propensity, RoundLog, Selection, SiteSummary, StudyResult
from shared.terms import candidate_name, candidates


def _site_summaries(run: StudyRun, dropped: dict[str, str]) -> tuple[SiteSummary, ...]:
    """Released counts per site (aggregates only), and the sites that failed, with why."""
    out = []
    for site, count in sorted(run.site_counts.items()):
        if site in dropped:
            out.append(SiteSummary(name=site, status="failed", error=dropped[site]))
            continue
        n_c, n_t = (max(int(round(float(c))), 0) for c in count)  # noisy under DP
        out.append(SiteSummary(name=site, n=n_c + n_t, n_treated=n_t, n_control=n_c))
    for who, why in sorted(dropped.items()):
        if who not in run.site_counts:
            out.append(SiteSummary(name=who, status="failed", error=why))
    return tuple(out)


def _privacy(run: StudyRun) -> PrivacySpent:
    """The study's budget and what each node's ledger reports as spent on its dataset."""
    if run.plan is None:
        return PrivacySpent(enabled=False)
    return PrivacySpent(
        enabled=True,
        # the whole study's, the negative controls' releases included (a share within ε,
        # shared/dp/plan.py): epsilon_planned ≤ epsilon
        epsilon=run.plan.epsilon,
        delta=run.plan.delta,
        accountant=accountant_label(run.plan.accountant),
        per_site=dict(run.privacy_study),
        ledger_total=dict(run.privacy_spent),
        resplit=run.resplit.model_dump() if run.resplit else None,
        secure_nodes=run.secure[0] if run.secure else None,
        large_loss_caps=(
            result_caps(run.caps, count=run.table.count)
            if run.caps is not None and run.table is not None
            else None
        ),
        negative_control_share=run.plan.control_share if run.plan.n_negative_controls else None,
    )


def _selection(run: StudyRun) -> Selection | None:
    """The stepwise rule's record, its terms named as the balance table names them."""
    if run.selection is None:
        return None
    covs = run.spec.covariates
    cands = candidates(covs)
    return Selection(
        threshold=C_QUA,
        candidates=len(cands),
        terms=tuple(candidate_name(covs, cands[c]) for c in run.selection.chosen),
        statistics=tuple(float(s) for s in run.selection.statistics),
        rounds=run.selection.rounds,
    )


def assemble_result(
    run: StudyRun, *, dropped: dict[str, str], started_at: str, finished_at: str, total_s: float
) -> StudyResult:
    assert run.estimate is not None and run.fitter is not None and run.table is not None
    spec = run.spec
    parts = run.estimate.to_result_parts(score_range=score_range(beta=run.fitter.beta))
    # caliper strata tile the public score range (up to ~1,500 with 16 covariates); the result
    # keeps those holding anyone (under DP, noisy counts: every quantile stratum is kept)
    parts["strata"] = tuple(
        s for s in parts["strata"] if run.plan is not None or s.n_treated + s.n_control > 0
    )
    rounds_s = sum(r.seconds for r in run.rounds)
    warnings = tuple(parts.pop("warnings")) + tuple(
        f"site {who} left the study: {why}" for who, why in sorted(dropped.items())
    )
    clipped = {
        o.name: int(sum(float(v[k]) for s, v in run.n_clipped.items() if s not in dropped))
        for k, o in enumerate(spec.analysed_outcomes)
    }
    warnings += tuple(f"{n} value(s) of {name} clipped to its public cap" for name, n in clipped.items() if n)
    return StudyResult(
        study=spec.study.name,
        spec_hash=spec.spec_hash(),
        spec=spec.public().model_dump(mode="json"),
        software_version=__version__,
        started_at=started_at,
        finished_at=finished_at,
        sites=_site_summaries(run, dropped),
        strata_method=run.strata_method,
        propensity=Propensity(
            beta=tuple(float(b) for b in run.fitter.beta),
            iterations=run.fitter.iterations,
            converged=run.fitter.converged,
            loglik=run.fitter.loglik,
            selection=_selection(run),
        ),
        warnings=warnings,
        negative_controls=run.negative_controls,
        privacy=_privacy(run),
        estimator=spec.estimator,
        rounds=tuple(RoundLog(name=r.name, seconds=r.seconds, nodes=r.sites) for r in run.rounds),
        timings={
            "rounds_s": rounds_s,
            "node_compute_s": sum(r.node_seconds for r in run.rounds),
            "coordinator_compute_s": run.compute_s,
            "total_s": total_s,
        },
        **parts,
    )
