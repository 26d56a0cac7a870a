r"""The stratified ATT estimator over a summed :class:`~shared.psm.table.PsmTable`.

Over strata holding both arms (common support, :math:`\mathcal B`), with :math:`w_b =
n_{bT} / \sum_{\mathcal B} n_{bT}`:

.. math::
    \widehat{ATT} = \sum_{b \in \mathcal B} w_b (\bar y_{bT} - \bar y_{bC}),

and CI = estimate ± 1.96·SE (the Wald interval) where the table has only first and second
sums (DP), and in an exact study Hall's skewness-corrected interval with a kurtosis-aware t
reference (:mod:`shared.psm.skew`: the outcomes' Σy³, Σy⁴ per cell), where

.. math::
    \widehat V = \sum_{b \in \mathcal B} w_b^2\, s^2_{bC}
                  \Big(\frac{1}{n_{bT}} + \frac{1}{n_{bC}}\Big).

Why this form: the target is the *sample* ATT of the supported treated,
:math:`\frac{1}{N_T}\sum_{i:T}(Y_i(1) - Y_i(0))`. Its error is
:math:`\sum_b w_b(\bar y_{bT}(0) - \bar y_{bC})` — the treated's own :math:`Y(1)` cancel — and
within a stratum :math:`Y(0)` of treated and controls share one distribution (the score
balances), so both terms carry the controls' within-stratum variance :math:`s^2_{bC}`. Using the
treated's :math:`s^2_{bT}` instead (the usual population-ATT form) mis-states the SE whenever the
effect changes the outcome's spread (−20 % on costs shrinks it: 92 % coverage on the test
DGP; this form: 94–96 %). Cells worth fewer than ten degrees of freedom (a binary outcome's
about twice its events, :func:`shared.psm.cells.variance_information`) borrow a variance from
neighbouring strata or from the stratum's other arm (:func:`shared.psm.cells.cell_variances`).
Treated in strata without controls are dropped and reported (attrition), so the estimand is the
ATT on the supported treated.

Not modelled: the propensity score is estimated. For the ATT that can make the estimator more
or less precise than this variance says (Abadie & Imbens 2016, *Econometrica* 84(2)): measured,
``misspecified``'s absence days over-cover (~97.6 %) and ``threshold_uptake``'s claims and CV
event under a data-chosen basis fall 6–9 % short (docs/STATISTICS.md, "Hinges").

Relative risk (binary outcomes): :math:`\bar p_T/\bar p_C` over the same weights, CI by the
delta method on the log scale, :math:`\mathrm{Var}\log RR \approx V_T/\bar p_T^2 + V_C/\bar p_C^2`
with :math:`V_a = \sum w_b^2 s^2_{ba}/n_{ba}`.

``control_sd``: the outcome's SD among the controls reweighted to the treated,
:math:`\sqrt{\sum_b w_b\,(s^2_{bC} + (\bar y_{bC} - \bar y_C)^2)}` (the mixture over strata),
for the E-value of a continuous outcome (:mod:`coordinator.report.sensitivity`).

Everything is computed on the [0, 1] scale of the table and reported in the outcome's original
units: means as ``lo + m (cap - lo)``, differences and SEs times ``cap - lo``.

Noisy (DP) tables: see :mod:`shared.psm.cells`; the DP share of the error enters through
``se_privacy`` (per outcome, original units), added in quadrature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from shared import thresholds as th
from shared.errors import DataError, EmptyArmError, NoOverlapError
from shared.psm.balance import (
    BalanceNoise,
    WeightedImbalance,
    balance_table,
    balance_verdict,
    overlap_coefficient,
)
from shared.psm.cells import cell_means, cell_variances, clamped_counts
from shared.psm.skew import skew_t_multipliers
from shared.psm.table import PsmTable
from shared.result import BalanceRow, Diagnostic, OutcomeEstimate, StratumCounts
from shared.study import Outcome

__all__ = ["AttEstimate", "Check", "estimate_att", "with_att"]

Z_95 = 1.959963984540054
CI_LEVEL = 0.95
#: The estimator's diagnostics are :class:`shared.result.Diagnostic` (this name is kept for the
#: DP workflow and simulation, which build and pass them as ``Check``): one type per concept.
Check = Diagnostic


@dataclass(frozen=True)
class AttEstimate:
    """Everything the stratified estimator found, in the types of the study result
    (:mod:`shared.result`): the result and the evidence report carry these very objects, so an
    outcome, a balance row or a diagnostic has one definition from estimator to report.

    ``strata`` edges may be ±inf here (unbounded outer strata); :meth:`to_result_parts` makes
    them finite for JSON.
    """

    outcomes: tuple[OutcomeEstimate, ...]
    balance: tuple[BalanceRow, ...]
    strata: tuple[StratumCounts, ...]
    diagnostics: tuple[Diagnostic, ...]
    warnings: tuple[str, ...]
    n_treated: int  # all treated (before common support)
    n_control: int
    n_treated_dropped: int
    overlap: float  # overlap coefficient of the arms' score distributions over strata

    def outcome(self, name: str) -> OutcomeEstimate:
        for o in self.outcomes:
            if o.name == name:
                return o
        raise KeyError(name)

    def to_result_parts(self, *, score_range: tuple[float, float] | None = None) -> dict:
        """``outcomes``, ``balance``, ``strata``, ``diagnostics``, ``warnings`` for
        :class:`shared.result.StudyResult`: the same objects, strata with finite edges.

        JSON (and the signed report) has no infinities, so the outer ±inf edges are replaced by
        ``score_range`` (the public range, :func:`shared.psm.strata.score_range`) if given, else
        by extending the neighbouring stratum's width — which for caliper strata is exactly the
        public lower end.
        """
        los, his = _finite_edges(self.strata, score_range)
        return {
            "outcomes": self.outcomes,
            "balance": self.balance,
            "strata": tuple(
                s.model_copy(update={"lo": lo, "hi": hi}) for s, lo, hi in zip(self.strata, los, his)
            ),
            "diagnostics": self.diagnostics,
            "warnings": self.warnings,
        }


def _finite_edges(strata: Sequence[StratumCounts], score_range) -> tuple[list[float], list[float]]:
    edges = np.array([s.lo for s in strata] + [strata[-1].hi], dtype=float)
    finite = edges[np.isfinite(edges)]
    step = float(np.diff(finite)[0]) if finite.size >= 2 else 1.0
    step_hi = float(np.diff(finite)[-1]) if finite.size >= 2 else 1.0
    lo = score_range[0] if score_range else (finite[0] - step if finite.size else -1.0)
    hi = score_range[1] if score_range else (finite[-1] + step_hi if finite.size else 1.0)
    if not np.isfinite(edges[0]):
        edges[0] = min(lo, edges[1]) if np.isfinite(edges[1]) else lo
    if not np.isfinite(edges[-1]):
        edges[-1] = max(hi, edges[-2]) if np.isfinite(edges[-2]) else hi
    return edges[:-1].tolist(), edges[1:].tolist()


def estimate_att(
    *,
    table: PsmTable,
    outcomes: Sequence[Outcome],
    covariates: Sequence[str],
    min_cell: float = 1,
    se_privacy: Sequence[float] | None = None,
    balance_noise: BalanceNoise | None = None,
    imbalance: WeightedImbalance | None = None,
    extra_checks: Sequence[Check] = (),
) -> AttEstimate:
    """Stratified ATT, SE, CI, balance and diagnostics from a summed table.

    Args:
        table: the summed (possibly noisy) table over all nodes.
        outcomes: the study's outcomes (names, kinds and public ``[lo, cap]``), table order.
        covariates: covariate names, table order.
        min_cell: a stratum is in common support when both arms count at least this (> 0;
            raise it under DP so noise-only cells stay out).
        se_privacy: optional DP-noise SE per outcome in original units, added in quadrature.
        balance_noise: the DP noise of the balance sums (SMDs it cannot resolve are None).
        imbalance: a doubly robust DP study's released d over these strata and weights, read
            for the SMD after weighting and its noise SD (:mod:`shared.psm.balance`).
        extra_checks: diagnostics of the caller's own (e.g. the DP fit's resolution), listed
            and warned about like the estimator's.

    Returns:
        :class:`AttEstimate`.

    Raises:
        DataError: table dimensions disagree with outcomes/covariates, or non-finite entries.
        EmptyArmError: an arm has (after clamping) fewer than one row.
        NoOverlapError: no stratum holds both arms.
    """
    _check_table(table, outcomes, covariates, min_cell)
    n = clamped_counts(table.count)
    n_t_all, n_c_all = float(n[:, 1].sum()), float(n[:, 0].sum())
    if n_t_all < 1 or n_c_all < 1:
        raise EmptyArmError(f"an arm is empty: {n_t_all:.0f} treated, {n_c_all:.0f} controls")
    used = (n[:, 1] >= min_cell) & (n[:, 0] >= min_cell)
    if not used.any():
        raise NoOverlapError(
            f"no stratum holds both arms (>= {min_cell:g} each) among {table.n_strata}: "
            "treated and controls do not overlap on the propensity score"
        )
    n_t_used = float(n[used, 1].sum())
    w = np.where(used, n[:, 1], 0.0) / n_t_used
    n_treated_dropped = _count(n_t_all - n_t_used)

    usable = np.repeat(used[:, None], 2, axis=1)
    mean = cell_means(table.sum_y, n, clamp=False)  # unbiased under DP noise (see cells)
    binary = np.array([o.kind == "binary" for o in outcomes])
    var = cell_variances(table.sum_y, table.sumsq_y, n, usable, binary=binary)
    se_priv = np.zeros(len(outcomes)) if se_privacy is None else np.asarray(se_privacy, dtype=float)
    warnings: list[str] = []
    skew = table.has_higher and not np.any(se_priv)

    def multipliers(k: int) -> tuple[float, float] | None:
        if not skew:
            return None
        m = skew_t_multipliers(
            table=table, n=n, used=used, w=w, var=var, k=k, level=CI_LEVEL, binary=bool(binary[k])
        )
        return m.upper, m.lower

    results = tuple(
        _outcome_att(
            o, k, w, used, n, mean, var, float(se_priv[k]), n_treated_dropped, warnings, multipliers(k)
        )
        for k, o in enumerate(outcomes)
    )
    balance = balance_table(
        table=table, covariates=covariates, weights=w, used=used, noise=balance_noise, imbalance=imbalance
    )
    overlap = overlap_coefficient(n)
    strata = tuple(
        StratumCounts(
            lo=float(table.edges[b]),
            hi=float(table.edges[b + 1]),
            n_treated=_count(n[b, 1]),
            n_control=_count(n[b, 0]),
            used=bool(used[b]),
        )
        for b in range(table.n_strata)
    )
    checks = _diagnostics(n_t_all, n_c_all, n_t_used, balance, overlap, warnings, extra_checks)
    return AttEstimate(
        outcomes=results,
        balance=balance,
        strata=strata,
        diagnostics=checks,
        warnings=tuple(warnings),
        n_treated=_count(n_t_all),
        n_control=_count(n_c_all),
        n_treated_dropped=n_treated_dropped,
        overlap=overlap,
    )


def _check_table(table: PsmTable, outcomes, covariates, min_cell) -> None:
    if table.n_outcomes != len(outcomes):
        raise DataError(f"table holds {table.n_outcomes} outcomes, study has {len(outcomes)}")
    if table.n_covariates != len(covariates):
        raise DataError(f"table holds {table.n_covariates} covariates, study has {len(covariates)}")
    if not min_cell > 0:
        raise DataError(f"min_cell must be positive, got {min_cell!r}")
    for name in ("count", "sum_y", "sumsq_y", "sum_z", "sumsq_z"):
        if not np.all(np.isfinite(getattr(table, name))):
            raise DataError(f"PSM table {name} holds non-finite values", field=name)


def _count(x: float) -> int:
    return int(round(max(float(x), 0.0)))


def _outcome_att(
    o: Outcome,
    k: int,
    w,
    used,
    n,
    mean,
    var,
    se_priv: float,
    n_treated_dropped: int,
    warnings: list[str],
    multipliers: tuple[float, float] | None = None,
) -> OutcomeEstimate:
    """One outcome's estimate; ``multipliers`` ``(upper, lower)`` give the skewness-corrected CI
    ``(att - upper·SE, att - lower·SE)`` (:mod:`shared.psm.skew`), None the Wald interval."""
    span = o.cap - o.lo
    nt, nc = n[used, 1], n[used, 0]
    mt, mc = mean[used, 1, k], mean[used, 0, k]
    wu = w[used]
    treated01, control01 = float(wu @ mt), float(wu @ mc)
    var_t = float(np.sum(wu**2 * var[used, 1, k] / nt))
    var_c = float(np.sum(wu**2 * var[used, 0, k] / nc))
    var_satt = float(np.sum(wu**2 * var[used, 0, k] * (1.0 / nt + 1.0 / nc)))
    att = (treated01 - control01) * span
    # the controls reweighted to the treated form a mixture over strata: its variance is the
    # weighted within-cell variance plus the spread of the cell means about their weighted mean
    control_var01 = float(wu @ (var[used, 0, k] + (mc - control01) ** 2))
    se_s = float(np.sqrt(var_satt)) * span
    se = float(np.hypot(se_s, se_priv))
    rr = rr_ci = rd = None
    if o.kind == "binary":
        rd = att
        if treated01 > 0 and control01 > 0:
            rr = treated01 / control01
            half = Z_95 * np.sqrt(var_t / treated01**2 + var_c / control01**2)
            rr_ci = (float(rr * np.exp(-half)), float(rr * np.exp(half)))
        else:
            warnings.append(f"{o.name}: relative risk undefined (a weighted arm risk is 0)")
    return OutcomeEstimate(
        name=o.name,
        kind=o.kind,
        att=att,
        se=se,
        ci=(att - Z_95 * se, att + Z_95 * se)
        if multipliers is None
        else (att - multipliers[0] * se, att - multipliers[1] * se),
        ci_method="wald" if multipliers is None else "skew_t",
        n_treated=_count(nt.sum()),
        n_control=_count(nc.sum()),
        n_treated_dropped=n_treated_dropped,
        treated_mean=o.lo + treated01 * span,
        control_mean=o.lo + control01 * span,
        control_sd=float(np.sqrt(max(control_var01, 0.0))) * span,
        se_sampling=se_s,
        se_privacy=se_priv,
        privacy_share_of_ci=(se - se_s) / se if se > 0 else 0.0,
        risk_difference=rd,
        relative_risk=rr,
        relative_risk_ci=rr_ci,
    )


def _diagnostics(
    n_t: float,
    n_c: float,
    n_t_used: float,
    balance,
    overlap: float,
    warnings: list[str],
    extra: Sequence[Diagnostic] = (),
) -> tuple[Diagnostic, ...]:
    ratio = n_c / n_t
    verdict = balance_verdict(balance, th.SMD_MAX)
    kept = n_t_used / n_t
    # thresholds read at call time from their one definition, as the report's checks read them
    checks = (
        Diagnostic(
            name="size_gate_treated",
            passed=n_t >= th.MIN_TREATED,
            value=n_t,
            threshold=th.MIN_TREATED,
            message=f"{n_t:.0f} treated (the design asks for at least {th.MIN_TREATED})",
        ),
        Diagnostic(
            name="size_gate_control_ratio",
            passed=ratio >= th.MIN_CONTROL_RATIO,
            value=ratio,
            threshold=th.MIN_CONTROL_RATIO,
            message=f"control pool {ratio:.2f}x the treated (at least {th.MIN_CONTROL_RATIO:g}x asked)",
        ),
        Diagnostic(
            name="balance_after",
            passed=verdict.state == "balanced",
            value=verdict.max_abs_smd,
            threshold=th.SMD_MAX,
            message=f"largest |SMD| after weighting ({verdict.worst}): {verdict.reads}",
        ),
        Diagnostic(
            name="common_support",
            passed=kept >= th.MIN_SUPPORT,
            value=kept,
            threshold=th.MIN_SUPPORT,
            message=f"{n_t - n_t_used:.0f} treated dropped for lack of controls in their "
            f"stratum ({kept:.2%} kept; the estimand is the ATT on those kept)",
        ),
        Diagnostic(
            name="score_overlap",
            passed=overlap > 0,
            value=overlap,
            threshold=None,
            message="overlap coefficient of treated and control score distributions over strata",
        ),
        *extra,
    )
    for c in checks:
        if not c.passed and c.name != "score_overlap":
            warnings.append(f"{c.name}: {c.message}")
    return checks


def with_att(o, att: float):
    """An outcome's estimate with the weighted sum's ATT: the Wald CI re-centred on it (same SE),
    the counterfactual control mean the treated mean minus it, the risks of a binary outcome
    recomputed (its relative-risk CI moved by the same factor)."""
    control = o.treated_mean - att
    update: dict = {
        "att": att,
        "ci": (att - Z_95 * o.se, att + Z_95 * o.se),
        "ci_method": "wald",
        "control_mean": control,
    }
    if o.kind == "binary":
        update["risk_difference"] = att
        if o.relative_risk is not None and control > 0:
            rr = o.treated_mean / control
            k = rr / o.relative_risk
            update["relative_risk"] = rr
            if o.relative_risk_ci is not None:
                update["relative_risk_ci"] = (o.relative_risk_ci[0] * k, o.relative_risk_ci[1] * k)
        else:
            update["relative_risk"] = update["relative_risk_ci"] = None
    return o.model_copy(update=update)
