r"""Balance diagnostics from the table's Σz and Σz² per stratum × arm.

Standardised mean difference per covariate, before (all rows, unweighted) and after (treated in
common support vs controls reweighted to the treated's stratum distribution):

.. math::
    \mathrm{SMD} = \frac{\bar z_T - \bar z_C}{\sqrt{(s^2_T + s^2_C)/2}},

with the *same* denominator before and after — the unweighted pooled SD of the full sample
(Stuart 2010; cobalt's ``s.d.denom = "pooled"``) — so a change in SMD is a change in means only.
Variance ratios :math:`s^2_T / s^2_C` before and after (``None`` when the control variance is 0).
Under DP, moments are clamped to their valid ranges (:mod:`shared.psm.cells`), and a
covariate whose variance the noise cannot resolve — a noisy variance below 3 noise SDs,
as for a narrow covariate such as glucose (variance 0.002 on the [0, 1] scale) at ε = 1 — gets
``None`` instead of a quotient of noise (which reached 5e10): its SMDs when the SMD denominator
(the mean of the arm variances) is unresolved, a variance ratio when either variance is.

Under DP a noisy SMD is not an SMD: at ε = 1 on 10k treated its noise SD is about 0.14, larger
than the 0.1 threshold itself, so "max |SMD| < 0.1" read on noisy values fails every DP study
and, at a large ε, passes studies whose true imbalance it cannot see. Each row therefore carries
the SD the noise gives its SMD after weighting (delta method on the released cell sums and
counts), and :func:`balance_verdict` reads the rows against it: *balanced* only when every
covariate's |SMD| plus z noise SDs lies below the threshold, *imbalanced* when some covariate's
|SMD| minus z noise SDs reaches it, and otherwise *not shown* — the privacy noise hides the
answer. z is Bonferroni-corrected over the covariates read (2.96 for 16), so the chance that any
covariate at the threshold is called balanced by noise stays below 5 %. Without noise the
verdict is the plain rule.

**A doubly robust DP study reads the SMD after weighting from its d release.** The numerator of
the SMD after weighting, :math:`\bar z_{T,w} - \bar z_{C,w} = \sum_b w_b(\bar z_{bT} - \bar
z_{bC})`, is exactly the imbalance d that such a study already releases as D weighted sums
(``dr_dsum``, :mod:`shared.dp.drwsum`) with the weights the noisy counts fix. Read off the cells
it carries S × 2 noisy sums, each divided by a cell count; read off d, one sum per covariate
divided by N_T. So :func:`balance_table` takes that release (:class:`WeightedImbalance`) for the
numerator and its noise SD — post-processing of what is released, no new release. Measured
(``bench/bench_balance_gate.py``, 10k treated over five nodes, secure aggregation, 5 seeds):
median / largest SMD-after noise SD 0.031 / 0.063 from d against 0.112 / 0.239 from the cells
at ε = 1, 0.009 / 0.019 against 0.024 / 0.051 at ε = 16 (docs/STATISTICS.md). The
denominator, the SMD before and the variance ratios stay the cells' (d says nothing about
them), and so does the resolution rule: a covariate whose pooled SD the balance release cannot
resolve keeps ``None``. Without noise both numerators are the same number.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal, Sequence

import numpy as np

from shared.psm.cells import cell_means, clamped_counts
from shared.result import BalanceRow

__all__ = [
    "BalanceNoise",
    "BalanceVerdict",
    "WeightedImbalance",
    "balance_table",
    "balance_verdict",
    "overlap_coefficient",
]

_TINY = 1e-12
#: A noisy variance counts as resolved above this many noise SDs (pure noise passes 0.13 %).
RESOLVE_SD = 3.0


@dataclass(frozen=True)
class BalanceNoise:
    """SDs of the DP noise in one released Σ(z − c) and Σ(z − c)² entry (per covariate), with
    ``center`` = c the point the node centred on (0: released uncentred).

    ``sumsq_per_arm``: Σ(z − c)² was released per arm, not per cell (:mod:`shared.dp.forms`):
    the table's per-cell Σz² then only apportions the arm total, so the arm variances are read
    from one noisy total each and the variance ratios *after* weighting are not available.
    """

    sum_z: float
    sumsq_z: float
    center: float = 0.0
    sumsq_per_arm: bool = False
    count: float = 0.0  # SD of the noise on each cell count (the cell means divide by it)

    def variance_sd(self, *, coef_sum: np.ndarray, coef_sumsq: np.ndarray, mean: np.ndarray) -> np.ndarray:
        r"""Noise SD of a variance :math:`\sum_b c_b \Sigma(z-c)^2_b - (\bar z - c)^2` with
        :math:`\bar z - c = \sum_b c_b \Sigma(z-c)_b` (delta method; the variance is the same
        in either frame, its noise is smaller in the centred one)."""
        spread_sum = float(np.sqrt(np.sum(np.asarray(coef_sum, dtype=float) ** 2)))
        spread_sq = float(np.sqrt(np.sum(np.asarray(coef_sumsq, dtype=float) ** 2)))
        return np.hypot(spread_sq * self.sumsq_z, 2.0 * (mean - self.center) * spread_sum * self.sum_z)


@dataclass(frozen=True)
class WeightedImbalance:
    r"""The imbalance a doubly robust DP study releases as weighted sums (``dr_dsum``), per
    covariate on the table's [0, 1] scale: ``d`` ``(D,)`` = :math:`\sum_b w_b(\bar z_{bT} -
    \bar z_{bC})` over the strata and weights of the balance table, and ``noise_sd`` ``(D,)`` the
    SD the privacy noise gives it (:func:`shared.dp.drwsum.dsum_imbalance`). The balance table
    reads the SMD after weighting as ``d`` over the pooled SD (module docstring)."""

    d: np.ndarray
    noise_sd: np.ndarray


def _weighted_moments(
    sum_z: np.ndarray, sumsq_z: np.ndarray, n: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of z under stratum weights on the per-cell means (one arm).

    ``weights`` sum to 1 over strata. Neither the cell means nor the weighted mean are clamped
    to [0, 1] (only the variance, to ≥ 0): the SMD reads the mean as a linear function of the
    released sums, which is unbiased, while a clamp at a bound is not. Under DP a small control
    cell's noisy mean can lie far outside [0, 1], and so can the weighted mean of a rare binary
    covariate: on the demo federation (ε = 1, a high-weight stratum of ~350 noisy controls, mean
    noise SD 0.34 there) clamping moved diabetes' SMD after weighting by +0.07 on average, half
    its noise SD, and every such covariate toward "imbalanced". Without noise nothing changes.
    """
    m1 = cell_means(sum_z[:, None, :], n[:, None], clamp=False)[:, 0, :]
    m2 = cell_means(sumsq_z[:, None, :], n[:, None], clamp=False)[:, 0, :]
    mean = weights @ m1
    return mean, np.clip(weights @ m2 - mean**2, 0.0, None)


def _arm_moments(sum_z, sumsq_z, n) -> tuple[np.ndarray, np.ndarray]:
    """Unweighted mean and n − 1 variance of one arm from its summed cells."""
    total = max(float(n.sum()), 1.0)
    mean = np.clip(sum_z.sum(axis=0) / total, 0.0, 1.0)
    var = (sumsq_z.sum(axis=0) - total * mean**2) / max(total - 1.0, 1.0)
    return mean, np.clip(var, 0.0, None)


def _smd_after_sd(
    sum_z: np.ndarray, n: np.ndarray, wc: np.ndarray, noise: BalanceNoise, denom: np.ndarray
) -> np.ndarray:
    r"""Noise SD of the SMD after weighting, per covariate (delta method).

    The weighted arm mean is :math:`c + \sum_b w_b S_b / n_b` with :math:`S_b = \Sigma(z - c)`
    released with noise SD ``noise.sum_z`` and :math:`n_b` with ``noise.count``; so
    :math:`\mathrm{Var} = \sum_b (w_b/n_b)^2 (\sigma_S^2 + (\bar z_b - c)^2 \sigma_n^2)` per arm,
    the two arms independent, divided by the SMD's denominator (whose own noise is second order).
    """
    var = np.zeros(sum_z.shape[-1])
    for arm in (0, 1):
        nb = n[:, arm]
        coef = np.where((wc > 0) & (nb > 0), wc / np.maximum(nb, 1.0), 0.0)
        dev = cell_means(sum_z[:, arm, :][:, None, :], nb[:, None])[:, 0, :] - noise.center
        var += (coef**2) @ (noise.sum_z**2 + dev**2 * noise.count**2)
    return np.sqrt(var) / denom


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b > _TINY else None


def balance_table(
    *,
    table,
    covariates: Sequence[str],
    weights: np.ndarray,
    used: np.ndarray,
    noise: BalanceNoise | None = None,
    imbalance: WeightedImbalance | None = None,
) -> tuple[BalanceRow, ...]:
    """One :class:`shared.result.BalanceRow` per covariate (the type the study result and the
    evidence report carry).

    Args:
        table: the summed :class:`~shared.psm.table.PsmTable`.
        covariates: names in table order.
        weights: ``(S,)`` treated share per stratum over common support (0 outside).
        used: ``(S,)`` strata in common support.
        noise: the DP noise of the balance sums (None: exact table).
        imbalance: a doubly robust DP study's released d over the same strata and weights:
            the SMD after weighting and its noise SD are read from it instead of the cells
            (module docstring); None: from the cells.
    """
    n = clamped_counts(table.count)
    mt0, vt0 = _arm_moments(table.sum_z[:, 1], table.sumsq_z[:, 1], n[:, 1])
    mc0, vc0 = _arm_moments(table.sum_z[:, 0], table.sumsq_z[:, 0], n[:, 0])
    denom = np.maximum(np.sqrt((vt0 + vc0) / 2.0), _TINY)
    wc = np.where(used, weights, 0.0)
    mt1, vt1 = _weighted_moments(table.sum_z[:, 1], table.sumsq_z[:, 1], n[:, 1], wc)
    mc1, vc1 = _weighted_moments(table.sum_z[:, 0], table.sumsq_z[:, 0], n[:, 0], wc)
    known_smd = known_before = known_after = np.ones(len(covariates), dtype=bool)
    smd_sd = np.zeros(len(covariates))
    diff_after = mt1 - mc1
    if noise is not None:
        smd_sd = _smd_after_sd(table.sum_z, n, wc, noise, denom)

        def pooled_sd(arm, mean):  # every row of the arm weighted 1/N
            inv_n = 1.0 / max(float(n[:, arm].sum()), 1.0)
            cells = np.full(n.shape[0], inv_n)
            return noise.variance_sd(
                coef_sum=cells, mean=mean, coef_sumsq=np.array([inv_n]) if noise.sumsq_per_arm else cells
            )

        def stratified_sd(arm, mean):  # cell b weighted w_b / n_b
            coef = np.where(n[:, arm] > 0, wc / np.maximum(n[:, arm], 1.0), 0.0)
            return noise.variance_sd(coef_sum=coef, coef_sumsq=coef, mean=mean)

        sd_t0, sd_c0 = pooled_sd(1, mt0), pooled_sd(0, mc0)
        known_before = (vt0 > RESOLVE_SD * sd_t0) & (vc0 > RESOLVE_SD * sd_c0)
        known_after = (
            np.zeros(len(covariates), dtype=bool)
            if noise.sumsq_per_arm
            else (vt1 > RESOLVE_SD * stratified_sd(1, mt1)) & (vc1 > RESOLVE_SD * stratified_sd(0, mc1))
        )
        # the SMDs need only their shared denominator, the mean of the two arm variances
        known_smd = (vt0 + vc0) / 2.0 > RESOLVE_SD * 0.5 * np.hypot(sd_t0, sd_c0)
    if imbalance is not None:  # the same numerator, from one weighted sum per covariate
        diff_after = np.asarray(imbalance.d, dtype=float)
        smd_sd = np.asarray(imbalance.noise_sd, dtype=float) / denom

    def keep(ok: bool, value: float | None) -> float | None:
        return value if ok else None

    return tuple(
        BalanceRow(
            covariate=name,
            smd_before=keep(known_smd[j], float((mt0[j] - mc0[j]) / denom[j])),
            smd_after=keep(known_smd[j], float(diff_after[j] / denom[j])),
            var_ratio_before=keep(known_before[j], _ratio(vt0[j], vc0[j])),
            var_ratio_after=keep(known_after[j], _ratio(vt1[j], vc1[j])),
            smd_after_noise_sd=keep(known_smd[j], float(smd_sd[j])),
        )
        for j, name in enumerate(covariates)
    )


BalanceState = Literal["balanced", "imbalanced", "not_shown"]


def row_state(smd: float | None, sd: float | None, *, threshold: float, z: float) -> BalanceState:
    """One covariate read against the threshold with ``z`` noise SDs of margin."""
    if smd is None or sd is None:
        return "not_shown"
    if abs(smd) + z * sd < threshold:
        return "balanced"
    if abs(smd) - z * sd >= threshold:
        return "imbalanced"
    return "not_shown"


@dataclass(frozen=True)
class BalanceVerdict:
    """What the balance rows show against ``threshold`` (see the module docstring).

    ``z``: the noise SDs of margin each covariate gets (0 in an exact study); ``states``: one per
    row; ``worst``: the covariate with the largest |SMD| after weighting (None if none resolved).
    """

    state: BalanceState
    threshold: float
    z: float
    states: tuple[BalanceState, ...]
    worst: str | None
    max_abs_smd: float | None
    n_resolved: int
    n_rows: int

    @property
    def reads(self) -> str:
        """One line for the diagnostic and the report."""
        head = {
            "balanced": f"every covariate's |SMD| after weighting is below {self.threshold:g}",
            "imbalanced": f"at least one covariate's |SMD| after weighting is at or above {self.threshold:g}",
            "not_shown": f"the privacy noise leaves open whether every |SMD| is below {self.threshold:g}",
        }[self.state]
        if self.z > 0:
            head += (
                f" (read with {self.z:.2f} noise SDs of margin per covariate,"
                f" Bonferroni over {self.n_resolved})"
            )
        if self.n_resolved < self.n_rows:
            unresolved = self.n_rows - self.n_resolved
            head += f"; {unresolved} of {self.n_rows} covariates unresolved under the privacy noise"
        return head


def balance_verdict(rows: Sequence[BalanceRow], threshold: float, *, alpha: float = 0.05) -> BalanceVerdict:
    """Read the balance rows against ``threshold``, with the noise each SMD carries.

    A covariate counts as read when its SMD is resolved; z is the two-sided normal quantile at
    ``alpha`` / (2 · read covariates), used only when some SMD carries noise. Balance is shown
    only if every covariate is read and each lies below the threshold with that margin.
    """
    read = [r for r in rows if r.smd_after is not None and r.smd_after_noise_sd is not None]
    noisy = any((r.smd_after_noise_sd or 0.0) > 0 for r in read)
    z = NormalDist().inv_cdf(1.0 - alpha / (2.0 * len(read))) if noisy and read else 0.0
    states = tuple(row_state(r.smd_after, r.smd_after_noise_sd, threshold=threshold, z=z) for r in rows)
    if "imbalanced" in states:
        state: BalanceState = "imbalanced"
    elif read and all(s == "balanced" for s in states):
        state = "balanced"
    else:
        state = "not_shown"
    worst = max(read, key=lambda r: abs(r.smd_after or 0.0), default=None)
    return BalanceVerdict(
        state=state,
        threshold=threshold,
        z=z,
        states=states,
        worst=None if worst is None else worst.covariate,
        max_abs_smd=None if worst is None or worst.smd_after is None else abs(worst.smd_after),
        n_resolved=len(read),
        n_rows=len(rows),
    )


def overlap_coefficient(n: np.ndarray) -> float:
    r"""Overlap of the arms' score distributions over strata,
    :math:`\sum_b \min(n_{bT}/N_T,\ n_{bC}/N_C)` (1 = identical, 0 = disjoint)."""
    n = clamped_counts(n)
    tot = n.sum(axis=0)
    if not np.all(tot > 0):
        return 0.0
    return float(np.minimum(n[:, 1] / tot[1], n[:, 0] / tot[0]).sum())
