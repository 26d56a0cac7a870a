"""An outcome-blind choice of the propensity basis: Imbens & Rubin's stepwise algorithm.

Why: a propensity score linear in the covariates leaves imbalance when uptake is not
logistic-linear (the ``misspecified`` process: an age², a BMI·smoker and an SBP·age term), and
the fixed remedy — every square of a continuous covariate (``[terms] squares``) — fixes that
process but overshoots on one it does not describe (``threshold_uptake``,
docs/STATISTICS.md, "Site effects"). Imbens & Rubin (2015, *Causal Inference*, ch. 13.3) choose
the second-order terms from the data instead, before any outcome is seen: starting from the
basis the design declares (every covariate, the site indicators), add the candidate — a square
of a continuous covariate or a product of two covariates — whose likelihood-ratio statistic is
largest, refit, and stop when no candidate's statistic exceeds ``C_qua = 2.71`` (the χ²₁ 90 %
point, their constant; fixed in advance, not tuned here).

The likelihood ratio of each candidate would need one fit per candidate. Its score (Rao)
statistic needs none: at the fit of the current basis, with every candidate's coefficient at 0,
the gradient and negative Hessian of the *full* basis — what :func:`shared.psm.propensity.
ps_contribution` returns for the expanded design, summed over sites like any fit round — give,
for candidate *c* alone,

.. math:: S_c = g_c^2 / (H_{cc} - H_{cA} H_{AA}^{-1} H_{Ac}),

asymptotically the same χ²₁ as the likelihood ratio. So each step costs the Newton rounds of
the refit and nothing else: every round is one sum of ``PsStats`` over the full basis.

Uses only covariates and treatment: the choice is part of the design, made blind to outcomes
as pre-registration requires.

Candidates: the second-order terms (:func:`candidate_pairs`) and, since a step or a threshold
is no second-order term, hinges at tenths of each continuous covariate's public range
(:func:`candidate_hinges`, :func:`shared.terms.hinge`).

An exact study runs it when its spec says ``[terms] select = "stepwise"``
(:func:`shared.driver.run_study`): the score rounds ask every candidate, the refits the chosen
ones, and each node checks that what a query names is among the candidates it derives itself
(:func:`shared.terms.basis_terms`). Measured first (``bench/bench_term_selection.py``,
docs/STATISTICS.md, "Choosing the basis from the data" and "Hinges"): from second-order terms
alone it does what declaring the squares does and fails where they fail; with hinges it covers
every row of the three non-linear processes at 10k treated, including one written before hinges
were measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from shared.psm.propensity import PropensityFitter, PsStats, ps_contribution
from shared.terms import as_terms, candidate_hinges, candidate_pairs

__all__ = [
    "C_QUA",
    "Stepwise",
    "as_terms",
    "candidate_hinges",
    "candidate_pairs",
    "rounds_over",
    "score_statistics",
    "stepwise_basis",
]

#: Imbens & Rubin's threshold for a second-order term (χ²₁ at 90 %).
C_QUA = 2.71


def score_statistics(total: PsStats, active: np.ndarray, *, ridge: float = 1e-6) -> np.ndarray:
    """Rao score statistic of adding each inactive parameter alone (NaN for the active ones).

    ``total`` holds the full basis's gradient and negative Hessian at a β that is the (ridge)
    fit over the ``active`` parameters, with zeros elsewhere; ``active`` is a boolean mask over
    the parameters (the intercept first). A candidate whose information left after the active
    ones is nil (a copy of them) scores 0.
    """
    active = np.asarray(active, dtype=bool)
    A, C = np.flatnonzero(active), np.flatnonzero(~active)
    out = np.full(active.size, np.nan)
    if C.size == 0:
        return out
    H_AA = total.H[np.ix_(A, A)] + ridge * np.eye(A.size)
    H_CA = total.H[np.ix_(C, A)]
    left = np.diag(total.H)[C] - np.einsum("ij,ji->i", H_CA, np.linalg.solve(H_AA, H_CA.T))
    scale = np.maximum(np.diag(total.H)[C], 1e-300)
    ok = left > 1e-9 * scale  # information a candidate adds beyond the active basis
    out[C] = np.where(ok, total.g[C] ** 2 / np.where(ok, left, 1.0), 0.0)
    return out


def rounds_over(
    designs: Sequence[np.ndarray], treated: Sequence[np.ndarray]
) -> Callable[[np.ndarray, Sequence[int] | None], PsStats]:
    """The ``stats_at`` of :func:`stepwise_basis` over sites holding the full designs (base
    columns, then candidate columns) and treatment indicators: each site's
    :func:`~shared.psm.propensity.ps_contribution` over the asked parameters, summed, as a
    study's round sums them. For benchmarks and tests: a study's nodes hold their own."""

    def stats_at(beta: np.ndarray, params: Sequence[int] | None) -> PsStats:
        if params is None:
            parts = [ps_contribution(z=x, t=t, beta=beta) for x, t in zip(designs, treated)]
        else:
            cols = [k - 1 for k in params[1:]]  # the intercept is parameter 0
            b = beta[list(params)]
            parts = [ps_contribution(z=x[:, cols], t=t, beta=b) for x, t in zip(designs, treated)]
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total

    return stats_at


def _restricted(stats: PsStats, params: Sequence[int]) -> PsStats:
    """``stats`` over the full basis, cut to the parameters ``params`` (a fit round's answer)."""
    idx = list(params)
    return PsStats(n=stats.n, g=stats.g[idx], H=stats.H[np.ix_(idx, idx)], loglik=stats.loglik)


@dataclass(frozen=True)
class Stepwise:
    """The chosen basis: ``chosen`` candidate indices in order of entry, each entry's score
    statistic, the final β over the active parameters (intercept, base columns, chosen
    candidates in candidate order: the columns of ``as_terms`` of the sorted choice) and the
    rounds of statistics it took."""

    chosen: tuple[int, ...]
    statistics: tuple[float, ...]
    beta: np.ndarray
    rounds: int


def stepwise_basis(
    stats_at: Callable[[np.ndarray, Sequence[int] | None], PsStats],
    *,
    n_base: int,
    n_candidates: int,
    threshold: float = C_QUA,
    max_terms: int | None = None,
    ridge: float = 1e-6,
    tol: float = 1e-8,
    max_iter: int = 25,
    start: np.ndarray | None = None,
) -> Stepwise:
    """Imbens & Rubin's forward selection of second-order terms (module docstring).

    Args:
        stats_at: ``(beta, params)``: one round of the study, the summed :class:`PsStats` over
            the parameters ``params`` (indices into the full basis — intercept, ``n_base`` base
            columns, then the ``n_candidates`` candidate columns; None: all of them) at the
            full-length ``beta``, whose other entries are 0. A refit's rounds ask for the active
            parameters only (an ordinary fit round over the current basis), each step's score
            round for all; once the refit is near convergence its rounds ask for all, so the
            round that confirms it is the score round too.
        threshold: a candidate enters while its score statistic exceeds this.
        max_terms: stop after this many entries (None: only the threshold stops).
        start: the first fit's start over the intercept and base columns (None: zeros), e.g.
            :func:`~shared.psm.propensity.initial_beta` of a study's describe moments.

    Raises:
        ConvergenceError: a refit did not converge within ``max_iter`` rounds (raised by
            :class:`~shared.psm.propensity.PropensityFitter`, as in a study's own fit).
        NoOverlapError: a refit separates the arms.
    """
    p = 1 + n_base + n_candidates
    order = list(range(1 + n_base))  # active parameters, in the order they entered
    beta_full = np.zeros(p)
    if start is not None:
        beta_full[order] = start
    chosen: list[int] = []
    stats: list[float] = []
    rounds = 0
    while True:
        fitter = PropensityFitter(
            p=len(order), ridge=ridge, tol=tol, max_iter=max_iter, beta0=beta_full[order]
        )
        last = max_terms is not None and len(chosen) >= max_terms  # no score round follows
        total: PsStats | None = None
        while True:
            beta_full = np.zeros(p)
            beta_full[order] = fitter.beta
            rounds += 1
            # Near convergence ask every candidate: the fitter keeps the β of the round that
            # confirms convergence, so that round is also the score round (one round less
            # per step; the statistics are the same sums at the same β).
            every = fitter.near_converged and not last
            got = stats_at(beta_full, None if every else list(order))
            if fitter.update(_restricted(got, order) if every else got):
                total = got if every else None
                break
        if last:
            break
        if total is None:
            total = stats_at(beta_full, None)  # every candidate at the fit: the score round
            rounds += 1
        mask = np.zeros(p, dtype=bool)
        mask[order] = True
        s = score_statistics(total, mask, ridge=ridge)
        if np.all(np.isnan(s)):
            break
        best = int(np.nanargmax(s))
        if not s[best] > threshold:
            break
        order = sorted(order + [best])  # candidate order: a query's chosen columns (shared.terms.expand)
        chosen.append(best - 1 - n_base)
        stats.append(float(s[best]))
    return Stepwise(chosen=tuple(chosen), statistics=tuple(stats), beta=fitter.beta.copy(), rounds=rounds)
