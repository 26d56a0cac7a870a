r"""A doubly robust ATT from sufficient statistics: regression adjustment within propensity strata.

The outcome model, fitted on the **controls**, is linear in the covariates with one intercept
per propensity stratum and one slope shared by all strata:

.. math:: y_i = \alpha_{b(i)} + z_i^\top\gamma + \varepsilon_i .

Its least-squares slope uses only within-stratum (centred) cross-products,
:math:`\hat\gamma = S_{zz}^{-1} S_{zy}` with
:math:`S_{zz} = \sum_{i:C} z_i z_i^\top - \sum_b \Sigma z_{bC}\Sigma z_{bC}^\top / n_{bC}` and
:math:`S_{zy}` alike, so besides the stratified table (:class:`~shared.psm.table.PsmTable`: per
stratum × arm count, Σy, Σy², Σz) a node sends only the controls' :math:`\sum zz^\top` (D × D)
and :math:`\sum zy^\top` (D × O), pooled over strata. Why a pooled slope and not one per stratum:
it is estimable in strata with a handful of controls, and under DP it adds one D × D and one
D × O block of noise instead of S of each. The model's mean prediction for the treated of
stratum b is :math:`\bar y_{bC} + (\bar z_{bT} - \bar z_{bC})^\top\hat\gamma`, so

.. math::
    \widehat{ATT}_{DR} = \sum_{b\in\mathcal B} w_b\big[\bar y_{bT} - \bar y_{bC}
        - (\bar z_{bT} - \bar z_{bC})^\top\hat\gamma\big]
      = \widehat{ATT}_{strat} - d^\top\hat\gamma,\qquad d = \sum_b w_b(\bar z_{bT} - \bar z_{bC}),

the stratified estimate (:mod:`shared.psm.estimator`, same weights and common support) corrected
by the covariate imbalance left inside the strata. Doubly robust: if :math:`E[Y(0)\mid z]` is
linear in z (with any stratum shifts) the correction removes the bias whatever the propensity
model; if the propensity model is right, :math:`d \to 0` and the correction vanishes.

Variance (delta method, target the sample ATT as the stratified estimator does): the error is
:math:`\sum_b w_b(\bar\varepsilon_{bT} - \bar\varepsilon_{bC}) - d^\top(\hat\gamma - \gamma)`,
the two parts uncorrelated (within-stratum centring), so

.. math::
    \widehat V = r \sum_b w_b^2 s^2_{bC}\Big(\frac{1}{n_{bT}} + \frac{1}{n_{bC}}\Big)
        + \hat\sigma^2\, d^\top S_{zz}^{-1} d,

with :math:`s^2_{bC}` the stratified estimator's cell variances (borrowed where cells are small,
:func:`shared.psm.cells.cell_variances`), :math:`\hat\sigma^2 = RSS/(N_C - G - D)` the pooled
residual variance and :math:`r = \hat\sigma^2 / s^2_{within}` the share of the within-stratum
outcome variance the model leaves (the per-stratum residual variance would need per-stratum
cross-products; scaling each stratum's variance by the pooled share is the stated
approximation). Coverage: ``bench/bench_dr.py``.

Strata whose control count is below ``min_cell`` (under DP: noise-only cells) share the
intercept of the nearest stratum that has enough, so a noisy near-zero count never divides a
noisy sum.

DP: two Gaussian releases, each charged as its own mechanism (:func:`dr_sigmas` splits one
budget between them), so that the imbalance and the slope carry **independent** noise:

* ``cells`` (:func:`dr_sensitivities`): the stratified table's count, Σy, Σy², Σz per stratum ×
  arm — the stratified ATT and the imbalance :math:`d` are read from it;
* ``slope``: the controls' Σzzᵀ and Σzyᵀ with their own copy of the control cells' count, Σz
  and Σy (for the within-stratum centring) — :math:`\hat\gamma` is read from it.

Why two: from one release (the first version), the noise of the control cells' Σz entered both
:math:`\bar z_{bC}` (in :math:`d`) and the centring of :math:`S_{zy}` (in :math:`\hat\gamma`)
as :math:`-e_b/n_{bC}` and :math:`-e_b\bar y_{bC}^\top`, so :math:`d^\top\hat\gamma` held
their product, whose mean is not 0: 1k treated, misspecified uptake, ε = 1, 10 seeds × 20
draws, the noise of Σz alone moved the adjustment's mean by +1,366 ± 96 (claims, of a true
adjustment of −48; noisy d with exact γ: −4.5, exact d with noisy γ: +232, both: +1,406),
i.e. mostly the product; this was the +598 ± 140 of the single release's 120-seed table at 10k treated
(docs/STATISTICS.md). With independent releases
:math:`E[\hat d^\top\hat\gamma] = E[\hat d]^\top E[\hat\gamma]`, and the remaining
nonlinearities are corrected or damped:

* the centring :math:`-\sum_g s_g s_g^\top/n_g` of a noisy group sum has mean
  :math:`-ss^\top/n_g - m_g\sigma^2 I/n_g` (:math:`m_g` strata in the group): the known
  :math:`\sigma^2\sum_g m_g/n_g` is added back (:func:`_fit`, ``noise_sd``); uncorrected it
  shrank :math:`S_{zz}` and inflated :math:`\hat\gamma` (the +232 above);
* :math:`S_{zz}` itself is noisy in every direction and :math:`S^{-1}` of a noisy matrix has
  no finite mean where its eigenvalues are of the noise's size: the ridge :func:`dp_ridge`
  (a prior γ = 0, i.e. the stratified estimate, with precision the noise's spectral scale)
  keeps the inverse bounded and shrinks the adjustment in the directions the noise hides —
  a bias toward the stratified estimate, never beyond it; a noisy :math:`S_{zz}` that is not
  positive semi-definite is projected first, so :math:`S_{zz} + \lambda` has every eigenvalue
  at least λ.

Privacy SE: a parametric bootstrap from the known noise distribution, both releases' noise
re-drawn on the released arrays and corrected for re-drawing at a noisy point
(:func:`redraw_dr_se`), added in quadrature to the sampling SE. Measured (400 seeds, 1k
treated, ε = 1, ``bench/bench_dr.py``): no bias beyond stratification's (paired differences
within 1.5 Monte-Carlo SEs), coverage 94.8–98.8 % — still conservative, see
docs/STATISTICS.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from shared.errors import DataError, EmptyArmError, EstimationError, NoOverlapError
from shared.psm._checks import check_t, check_unit_outcomes, check_z, require_keys
from shared.psm.cells import cell_means, cell_variances, clamped_counts
from shared.psm.estimator import Z_95, AttEstimate
from shared.psm.table import PsmTable, psm_table
from shared.study import Outcome

__all__ = [
    "DrEstimate",
    "DrStats",
    "DrRelease",
    "bilinear_redraw_se",
    "dp_ridge",
    "dr_sensitivities",
    "dr_sigmas",
    "redraw_dr_se",
    "dr_stats",
    "estimate_dr",
    "estimate_dr_release",
    "release_dr",
    "slope_arrays",
    "with_dr",
]


@dataclass(frozen=True)
class DrStats:
    """Additive statistics of the DR estimator: the stratified table plus the controls'
    ``zz`` = Σzzᵀ ``(D, D)`` and ``zy`` = Σzyᵀ ``(D, O)`` (z and y on the [0, 1] scale)."""

    table: PsmTable
    zz: np.ndarray
    zy: np.ndarray

    def __post_init__(self) -> None:
        d, o = self.table.n_covariates, self.table.n_outcomes
        if self.zz.shape != (d, d) or self.zy.shape != (d, o):
            raise DataError(
                f"DR cross-products {self.zz.shape}, {self.zy.shape}; expected ({d}, {d}), ({d}, {o})"
            )

    @classmethod
    def from_answer(cls, arrays: dict[str, np.ndarray]) -> "DrStats":
        """A (summed) PSM-statistics answer of a DR study: the table and :func:`slope_arrays`
        summed over strata."""
        require_keys(arrays, ("zz_c", "zy_c"), "DR statistics")
        return cls(
            table=PsmTable.from_arrays(arrays),
            zz=np.asarray(arrays["zz_c"], dtype=float).sum(axis=0),
            zy=np.asarray(arrays["zy_c"], dtype=float).sum(axis=0),
        )

    def merge(self, other: "DrStats") -> "DrStats":
        return DrStats(table=self.table + other.table, zz=self.zz + other.zz, zy=self.zy + other.zy)

    __add__ = merge


def dr_stats(*, z, t, y, beta, edges, names=None) -> DrStats:
    """A node's DR statistics at ``beta`` over ``edges`` (inputs as :func:`psm_table`)."""
    table = psm_table(z=z, t=t, y=y, beta=beta, edges=edges, names=names)
    z = check_z(z, names=names)
    t = check_t(t, n=z.shape[0])
    y = check_unit_outcomes(y, n=z.shape[0])
    zc, yc = z[t == 0], y[t == 0]
    return DrStats(table=table, zz=zc.T @ zc, zy=zc.T @ yc)


def slope_arrays(*, z, t, y, beta, edges, names=None, pooled: bool = False) -> dict[str, np.ndarray]:
    """What a node adds to its PSM-statistics answer in a DR study: the controls' Σzzᵀ
    ``zz_c`` ``(S, D, D)`` and Σzyᵀ ``zy_c`` ``(S, D, O)`` per stratum. Per stratum, not pooled,
    so that a cell the node suppresses (fewer than k controls) takes its rows' cross-products
    with it (:func:`shared.answer.suppress_small_cells`); the coordinator sums over strata
    (:meth:`DrStats.from_answer`).

    ``pooled`` (a DP answer, whose ``dr_slope`` release sums over strata anyway): one ``(1, D,
    D)`` / ``(1, D, O)`` sum over every control, in time and memory that do not depend on how
    many strata hold controls — per stratum they did (one product and one D × D page per
    occupied stratum), which the reply's timing told a coordinator choosing fine edges
    (tests/security/test_answer_oracles.py f)."""
    from shared.psm.strata import logit_scores, stratum_index

    z = check_z(z, names=names)
    t = check_t(t, n=z.shape[0])
    y = check_unit_outcomes(y, n=z.shape[0])
    edges = np.asarray(edges, dtype=float)
    b = stratum_index(logit_scores(z=z, beta=np.asarray(beta, dtype=float)), edges)
    s, d, o = edges.size - 1, z.shape[1], y.shape[1]
    c = t == 0
    if pooled:
        return {"zz_c": (z[c].T @ z[c])[None], "zy_c": (z[c].T @ y[c])[None]}
    zz, zy = np.zeros((s, d, d)), np.zeros((s, d, o))
    for k in np.unique(b[c]):
        rows = c & (b == k)
        zz[k] = z[rows].T @ z[rows]
        zy[k] = z[rows].T @ y[rows]
    return {"zz_c": zz, "zy_c": zy}


@dataclass(frozen=True)
class DrEstimate:
    """One outcome's DR ATT in original units; ``adjustment`` = DR − stratified."""

    name: str
    att: float
    se: float
    ci: tuple[float, float]
    se_sampling: float
    se_privacy: float
    att_stratified: float
    adjustment: float


def with_dr(est: AttEstimate, dr: Sequence[DrEstimate]) -> AttEstimate:
    """The stratified estimate ``est`` with each outcome's ATT, SE and CI replaced by the DR
    estimate on the same strata (counterfactual mean, risk difference and relative risk
    follow the ATT), its stratified ATT kept as ``att_stratified``; strata, balance and
    diagnostics are unchanged (they describe the design both estimators share)."""
    from dataclasses import replace

    from shared.psm.estimator import with_att  # the one place an outcome's ATT is re-centred

    by_name = {d.name: d for d in dr}
    outcomes = []
    for o in est.outcomes:
        d = by_name[o.name]
        o2 = o.model_copy(update={"se": d.se, "se_sampling": d.se_sampling, "att_stratified": o.att})
        outcomes.append(_skew_ci_carried(o, with_att(o2, d.att)))
    return replace(est, outcomes=tuple(outcomes))


def _skew_ci_carried(strat, dr_outcome):
    r"""The DR outcome with the stratified outcome's skewness-corrected interval shape: its
    standardised ends :math:`(\widehat{ATT} - \text{end})/SE` (:mod:`shared.psm.skew`) applied to
    the DR estimate and SE; unchanged (Wald) when the stratified CI is Wald.

    Why: the DR error is the stratified error less :math:`d^\top(\hat\gamma - \gamma)`, so its
    skewness and its covariance with the variance estimate are those of the same cells' outcome
    residuals, approximated here by the outcomes'. Measured (bench/bench_skew_ci.py, 400 seeds,
    exact): DR rows in the 93–97 % band 13 of 18 with Wald, 17 of 18 with the carried shape."""
    if strat.ci_method != "skew_t" or not strat.se > 0:
        return dr_outcome
    upper, lower = (strat.att - strat.ci[0]) / strat.se, (strat.att - strat.ci[1]) / strat.se
    a, se = dr_outcome.att, dr_outcome.se
    return dr_outcome.model_copy(update={"ci": (a - upper * se, a - lower * se), "ci_method": "skew_t"})


def _groups(n_c: np.ndarray, min_cell: float) -> np.ndarray:
    """Intercept group per stratum: its own if it holds ``min_cell`` controls, else that of the
    nearest such stratum (ties to the lower), so a noise-only cell's sums join a large count."""
    own = np.flatnonzero(n_c >= min_cell)
    if own.size == 0:
        return np.zeros(n_c.size, dtype=int)
    idx = np.arange(n_c.size)
    nearest = np.argmin(np.abs(idx[:, None] - own[None, :]), axis=1)
    return nearest


def _fit(slope: DrStats, min_cell: float, ridge: float, noise_sd: float = 0.0):
    r"""Within-group slope γ ``(D, O)``, the (ridged) S_zz, RSS and S_yy per outcome, N_C and G,
    from ``slope``'s control cells and cross-products.

    Computed from the arrays centred on the public midpoints (:func:`_centre`): within-group
    cross-products do not change under a shift, and a DP release is noised in exactly that
    form, so no noisy total (Σ over hundreds of strata) is added back to every entry.
    ``noise_sd``: the SD of the release's noise on each centred cell sum; the mean it gives the
    centring terms, :math:`\sigma^2 m_g/n_g` per group, is added back (module docstring).
    """
    tab, c = slope.table, _centre(slope)
    n = clamped_counts(tab.count)
    grp = _groups(n[:, 0], min_cell)
    n_g = np.bincount(grp, weights=n[:, 0])
    m_g = np.bincount(grp).astype(float)
    keep = n_g > 0
    sz = np.stack([np.bincount(grp, weights=c["sum_z"][:, 0, j]) for j in range(tab.n_covariates)], axis=1)
    sy = np.stack([np.bincount(grp, weights=c["sum_y"][:, 0, k]) for k in range(tab.n_outcomes)], axis=1)
    syy = c["sumsq_y"][:, 0, :].sum(axis=0)
    sz, sy, n_g, m_g = sz[keep], sy[keep], n_g[keep], m_g[keep]
    bias = float(noise_sd) ** 2 * float(np.sum(m_g / n_g))
    szz = c["zz"] - (sz.T / n_g) @ sz + bias * np.eye(tab.n_covariates)
    szy = c["zy"] - (sz.T / n_g) @ sy
    syy_w = syy - np.sum(sy**2 / n_g[:, None], axis=0) + bias
    szz = (szz + szz.T) / 2.0
    vals = np.linalg.eigvalsh(szz)
    if not vals[0] > 1e-9 * max(vals[-1], 1.0):
        # a sum of squares is positive semi-definite: a noisy one that is not is projected
        # before the ridge, so S_zz + λ keeps every eigenvalue ≥ λ (the ridge added to an
        # indefinite matrix left it near-singular now and then: a claims bias of 4.5 million
        # over 400 seeds at 1k treated, ε = 1)
        from shared.dp.mechanisms import project_psd  # post-processing of a noisy release

        if not vals[-1] > 0:
            raise EstimationError("the controls' covariates do not vary within strata: no outcome model")
        szz = project_psd(szz, floor=1e-6 * vals[-1])
    szz_r = szz + ridge * np.eye(szz.shape[0])
    gamma = np.linalg.solve(szz_r, szy)
    rss = syy_w - 2 * np.sum(gamma * szy, axis=0) + np.sum(gamma * (szz @ gamma), axis=0)
    return gamma, szz_r, rss, syy_w, float(n[:, 0].sum()), int(keep.sum())


def estimate_dr(
    *,
    stats: DrStats,
    outcomes: Sequence[Outcome],
    min_cell: float = 1,
    se_privacy: Sequence[float] | None = None,
    ridge: float = 0.0,
    slope: DrStats | None = None,
    slope_noise_sd: float = 0.0,
    att_stratified: np.ndarray | None = None,
    imbalance: np.ndarray | None = None,
) -> tuple[DrEstimate, ...]:
    """DR ATT, SE and 95 % CI per outcome from summed (possibly noisy) statistics.

    Args:
        stats: the sum of every node's :func:`dr_stats` (or a :func:`release_dr`).
        outcomes: the study's outcomes, table order (public ``[lo, cap]``).
        min_cell: common support and intercept groups as in :func:`shared.psm.estimate_att`.
        se_privacy: DP SE per outcome in original units, added in quadrature.
        ridge: λ added to :math:`S_{zz}`'s diagonal (0 exact; under DP :func:`dp_ridge`): shrinks
            the slope toward 0, i.e. toward the stratified estimate, in the directions the
            noise hides.
        slope: where the slope is read (its control cells, ``zz``, ``zy``): ``stats`` itself
            when None (exact); under DP the ``slope`` release (:func:`release_dr`).
        slope_noise_sd: that release's noise SD per centred entry (0 exact).
        att_stratified, imbalance: the stratified ATT ``(O,)`` and the imbalance d ``(D,)`` on
            the [0, 1] scale where they are not read off ``stats``' cells: a DP study releases
            both as weighted sums over the same strata (:mod:`shared.dp.drwsum`); the cells
            then give the sampling variance only.

    Raises:
        DataError: dimensions disagree, non-finite entries, ``min_cell`` not positive.
        EmptyArmError / NoOverlapError / EstimationError: as the stratified estimator, or the
            covariates do not vary within strata among the controls.
    """
    tab = stats.table
    if tab.n_outcomes != len(outcomes):
        raise DataError(f"DR statistics hold {tab.n_outcomes} outcomes, study has {len(outcomes)}")
    if not min_cell > 0:
        raise DataError(f"min_cell must be positive, got {min_cell!r}")
    if not ridge >= 0:
        raise DataError(f"ridge must be non-negative, got {ridge!r}")
    src = stats if slope is None else slope
    for name, arr in (
        ("count", tab.count),
        ("sum_y", tab.sum_y),
        ("sum_z", tab.sum_z),
        ("zz", src.zz),
        ("zy", src.zy),
    ):
        if not np.all(np.isfinite(arr)):
            raise DataError(f"DR statistics {name} hold non-finite values", field=name)
    n = clamped_counts(tab.count)
    if n[:, 1].sum() < 1 or n[:, 0].sum() < 1:
        raise EmptyArmError(f"an arm is empty: {n[:, 1].sum():.0f} treated, {n[:, 0].sum():.0f} controls")
    used = (n[:, 1] >= min_cell) & (n[:, 0] >= min_cell)
    if not used.any():
        raise NoOverlapError("no stratum holds both arms: treated and controls do not overlap")
    w = np.where(used, n[:, 1], 0.0) / n[used, 1].sum()
    ybar = cell_means(tab.sum_y, n, clamp=False)[used]  # (U, 2, O)
    zbar = cell_means(tab.sum_z, n, clamp=False)[used]  # (U, 2, D)
    wu, nu = w[used], n[used]
    att_strat = (
        wu @ (ybar[:, 1] - ybar[:, 0]) if att_stratified is None else np.asarray(att_stratified, float)
    )
    d = wu @ (zbar[:, 1] - zbar[:, 0]) if imbalance is None else np.asarray(imbalance, dtype=float)
    gamma, szz, rss, syy_w, n_c, n_groups = _fit(
        stats if slope is None else slope, min_cell, ridge, slope_noise_sd
    )
    att = att_strat - d @ gamma

    dof = max(n_c - n_groups - tab.n_covariates, 1.0)
    sigma2 = np.clip(rss, 0.0, None) / dof
    s2_within = np.clip(syy_w, 1e-300, None) / max(n_c - n_groups, 1.0)
    ratio = np.clip(sigma2 / s2_within, 0.0, 1.0)
    if slope_noise_sd > 0:
        # under DP the residual and within-stratum sums of squares are noise-dominated (claims
        # on [0, 1]: Σ(y − ȳ)² of a few units against noise of tens): the share the model
        # leaves is not resolved, so none is claimed (ratio 1, σ̂² = s²_within: the model can
        # only lower the residual variance, so this errs on the wide side)
        sigma2 = np.clip(s2_within, 0.0, 0.25)
        ratio = np.ones_like(ratio)
    binary = np.array([o.kind == "binary" for o in outcomes])
    var = cell_variances(tab.sum_y, tab.sumsq_y, n, np.repeat(used[:, None], 2, axis=1), binary=binary)[
        used, 0
    ]  # (U, O)
    v_main = ratio * np.sum((wu**2 * (1.0 / nu[:, 1] + 1.0 / nu[:, 0]))[:, None] * var, axis=0)
    v_gamma = sigma2 * float(d @ np.linalg.solve(szz, d))
    se01 = np.sqrt(v_main + v_gamma)
    se_priv = np.zeros(len(outcomes)) if se_privacy is None else np.asarray(se_privacy, dtype=float)
    out = []
    for k, o in enumerate(outcomes):
        span = o.cap - o.lo
        se_s = float(se01[k]) * span
        se = float(math.hypot(se_s, float(se_priv[k])))
        a = float(att[k]) * span
        out.append(
            DrEstimate(
                name=o.name,
                att=a,
                se=se,
                ci=(a - Z_95 * se, a + Z_95 * se),
                se_sampling=se_s,
                se_privacy=float(se_priv[k]),
                att_stratified=float(att_strat[k]) * span,
                adjustment=a - float(att_strat[k]) * span,
            )
        )
    return tuple(out)


def dp_ridge(*, sigma: float, n_covariates: int) -> float:
    r"""Ridge for a noisy :math:`S_{zz}`: 3σ√D, 1.5 × the spectral norm (≈ 2σ√D) of a
    symmetric D × D matrix of N(0, σ²) noise (the zz release's part; the subtracted stratum
    sums add less, their noise is divided by the stratum counts). Directions whose
    within-stratum spread is below the noise get no adjustment instead of a noise-driven one.
    """
    return 3.0 * float(sigma) * math.sqrt(int(n_covariates))


def dr_sensitivities(*, n_covariates: int, n_outcomes: int) -> tuple[float, float]:
    r"""L2 sensitivities of the two releases of :func:`release_dr` (arrays centred on the
    public midpoints), ``(cells, slope)``.

    One row lands in one stratum × arm cell and moves its count by 1, its O sums (y − ½) and D
    sums (z − ½) by at most ½ each and its O sums (y − ½)² by at most ¼ each (``cells``); a
    control also moves the slope release's copy of its cell (count, O + D sums) and the
    D(D+1)/2 distinct entries of Σ(z − ½)(z − ½)ᵀ and the D·O entries of Σ(z − ½)(y − ½)ᵀ by at
    most ¼ each (``slope``):

    .. math:: \Delta_{cells} = \sqrt{1 + O/4 + D/4 + O/16},\qquad
        \Delta_{slope} = \sqrt{1 + O/4 + D/4 + (D(D+1)/2 + DO)/16}.

    >>> [round(x, 3) for x in dr_sensitivities(n_covariates=16, n_outcomes=3)]
    [2.385, 4.153]
    """
    from shared.dp.sensitivity import dr_slope_sensitivity

    d, o = int(n_covariates), int(n_outcomes)
    if d < 1 or o < 1:
        raise DataError("DR sensitivity needs at least one covariate and one outcome")
    cells = math.sqrt(1 + o / 4 + d / 4 + o / 16)
    return cells, dr_slope_sensitivity(n_covariates=d, n_outcomes=o)


#: Share of the DR budget (zCDP ρ) spent on the slope release. Equal shares: stated, not tuned.
SLOPE_SHARE = 0.5


def dr_sigmas(
    *,
    epsilon: float,
    delta: float,
    n_covariates: int,
    n_outcomes: int,
    slope_share: float = SLOPE_SHARE,
    accountant: str | None = None,
) -> tuple[float, float]:
    r"""Noise SD ``(cells, slope)`` of the two DR releases together costing at most ``epsilon``
    at ``delta``: the multiplier μ of one release at the whole budget
    (:func:`shared.dp.plan.single_release_multiplier`, the ledger's accountant) split by ρ
    shares, :math:`\mu_i = \mu/\sqrt{s_i}` — Gaussian mechanisms compose by adding
    :math:`1/\mu^2` (GDP) or ρ (zCDP/RDP), so the pair costs exactly what one release at μ does
    (checked against the accountant in ``tests/unit/test_psm_dr.py``).
    """
    from shared.dp.accounting import DEFAULT_ACCOUNTANT
    from shared.dp.plan import single_release_multiplier

    if not 0 < slope_share < 1:
        raise DataError(f"slope_share must lie in (0, 1), got {slope_share!r}")
    mu = single_release_multiplier(epsilon=epsilon, delta=delta, accountant=accountant or DEFAULT_ACCOUNTANT)
    d_cells, d_slope = dr_sensitivities(n_covariates=n_covariates, n_outcomes=n_outcomes)
    return mu / math.sqrt(1 - slope_share) * d_cells, mu / math.sqrt(slope_share) * d_slope


#: The centred arrays of each DR release (:func:`_centre`); the slope release holds the
#: control arm's cells only.
CELL_ARRAYS = ("count", "sum_y", "sumsq_y", "sum_z")
SLOPE_ARRAYS = ("count", "sum_y", "sum_z", "zz", "zy")


def _centre(stats: DrStats) -> dict[str, np.ndarray]:
    """The release's centred arrays (bounded per row as :func:`dr_sensitivities` says)."""
    t = stats.table
    n = t.count
    n_c = t.count[:, 0].sum()
    sz_c, sy_c = t.sum_z[:, 0].sum(axis=0), t.sum_y[:, 0].sum(axis=0)
    return {
        "count": n,
        "sum_y": t.sum_y - n[..., None] / 2,
        "sumsq_y": t.sumsq_y - t.sum_y + n[..., None] / 4,
        "sum_z": t.sum_z - n[..., None] / 2,
        "zz": stats.zz - (sz_c[:, None] + sz_c[None, :]) / 2 + n_c / 4,
        "zy": stats.zy - (sz_c[:, None] + sy_c[None, :]) / 2 + n_c / 4,
    }


def _uncentre(c: dict[str, np.ndarray], edges: np.ndarray, sumsq_z: np.ndarray) -> DrStats:
    """Inverse of :func:`_centre` (post-processing: uses only released arrays)."""
    n = c["count"]
    sum_y = c["sum_y"] + n[..., None] / 2
    sum_z = c["sum_z"] + n[..., None] / 2
    n_c = n[:, 0].sum()
    sz_c, sy_c = sum_z[:, 0].sum(axis=0), sum_y[:, 0].sum(axis=0)
    zz = c["zz"] + (sz_c[:, None] + sz_c[None, :]) / 2 - n_c / 4
    zy = c["zy"] + (sz_c[:, None] + sy_c[None, :]) / 2 - n_c / 4
    table = PsmTable(
        edges=edges,
        count=n,
        sum_y=sum_y,
        sumsq_y=c["sumsq_y"] + sum_y - n[..., None] / 4,
        sum_z=sum_z,
        sumsq_z=sumsq_z,
    )
    return DrStats(table=table, zz=(zz + zz.T) / 2, zy=zy)


@dataclass(frozen=True)
class DrRelease:
    """The two DR releases as the coordinator sees them (uncentred), and their noise SDs.

    ``cells``: the stratified table (its ``zz``/``zy`` are not released and hold zeros);
    ``slope``: the control cells' copy (treated cells zero; Σy² taken from ``cells``, read only
    for the residual variance) with the controls' ``zz`` and ``zy``. ``sigma_cells``: one SD
    for every centred cell array, or one per array (:data:`CELL_ARRAYS`) where they come from
    different releases (a study: count and Σy from ``psm_main``, Σy² from ``psm_sumsq``, Σz
    from ``psm_balance``, :func:`shared.dp.drstudy.dp_dr_release`).
    """

    cells: DrStats
    slope: DrStats
    sigma_cells: float | Mapping[str, float]
    sigma_slope: float


def _noisy(
    centred: dict[str, np.ndarray], sigma: float | Mapping[str, float], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """``centred`` plus N(0, σ²) on every entry (σ one for all, or per array); ``zz`` one draw
    per distinct entry, mirrored."""

    def sd(k: str) -> float:
        return float(sigma[k]) if isinstance(sigma, Mapping) else float(sigma)

    out = {k: v + rng.normal(0.0, sd(k), size=np.shape(v)) for k, v in centred.items() if k != "zz"}
    if "zz" in centred:
        upper = np.triu(rng.normal(0.0, sd("zz"), size=np.shape(centred["zz"])))
        out["zz"] = centred["zz"] + upper + np.triu(upper, 1).T
    return out


def _release_from_centred(
    cells: dict[str, np.ndarray],
    slope: dict[str, np.ndarray],
    edges,
    sigma_cells: float | Mapping[str, float],
    sigma_slope: float,
) -> DrRelease:
    """The coordinator's :class:`DrRelease` from the two released centred array sets
    (``slope`` holds the control arm only: ``count (S,)``, ``sum_y (S, O)``, ``sum_z (S, D)``)."""
    d, o = cells["sum_z"].shape[-1], cells["sum_y"].shape[-1]
    zero_dd, zero_do = np.zeros((d, d)), np.zeros((d, o))
    sumsq_z = np.zeros_like(cells["sum_z"])  # the balance's own release, not this one
    c = _uncentre({**cells, "zz": zero_dd, "zy": zero_do}, edges, sumsq_z)
    arm = np.zeros_like(cells["count"])
    arm[:, 0] = slope["count"]
    sy, sz = np.zeros_like(cells["sum_y"]), np.zeros_like(cells["sum_z"])
    sy[:, 0], sz[:, 0] = slope["sum_y"], slope["sum_z"]
    syy = np.zeros_like(cells["sumsq_y"])
    syy[:, 0] = cells["sumsq_y"][:, 0]
    s = _uncentre(
        {"count": arm, "sum_y": sy, "sumsq_y": syy, "sum_z": sz, "zz": slope["zz"], "zy": slope["zy"]},
        edges,
        sumsq_z,
    )
    return DrRelease(
        cells=DrStats(table=c.table, zz=zero_dd, zy=zero_do),
        slope=s,
        sigma_cells=dict(sigma_cells) if isinstance(sigma_cells, Mapping) else float(sigma_cells),
        sigma_slope=float(sigma_slope),
    )


def _split(stats: DrStats) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The exact centred arrays of the two releases."""
    c = _centre(stats)
    cells = {k: c[k] for k in CELL_ARRAYS}
    slope = {
        "count": c["count"][:, 0],
        "sum_y": c["sum_y"][:, 0],
        "sum_z": c["sum_z"][:, 0],
        "zz": c["zz"],
        "zy": c["zy"],
    }
    return cells, slope


def release_dr(
    stats: DrStats, *, sigma_cells: float, sigma_slope: float, rng: np.random.Generator
) -> DrRelease:
    """The two Gaussian releases of ``stats`` (:func:`dr_sigmas`), noise on every centred
    entry. ``sumsq_z`` (balance) is not part of them and is returned as zeros: its own release
    (``psm_balance``) is charged separately."""
    cells, slope = _split(stats)
    return _release_from_centred(
        _noisy(cells, sigma_cells, rng),
        _noisy(slope, sigma_slope, rng),
        stats.table.edges,
        sigma_cells,
        sigma_slope,
    )


def _estimate_release(rel: DrRelease, outcomes, min_cell: float, se_privacy=None) -> tuple[DrEstimate, ...]:
    return estimate_dr(
        stats=rel.cells,
        outcomes=outcomes,
        min_cell=min_cell,
        se_privacy=se_privacy,
        ridge=dp_ridge(sigma=rel.sigma_slope, n_covariates=rel.cells.table.n_covariates),
        slope=rel.slope,
        slope_noise_sd=rel.sigma_slope,
    )


def redraw_dr_se(
    rel: DrRelease, *, outcomes: Sequence[Outcome], min_cell: float, n_draws: int, rng, parts: bool = False
):
    r"""Privacy SE per outcome (original units): a parametric bootstrap from the releases' known
    noise, corrected for re-drawing at a noisy point.

    The adjustment is bilinear in the two releases, :math:`\hat d^\top\hat\gamma` with
    independent noises (covariances :math:`\Sigma_d`, :math:`\Sigma_\gamma`). Its variance is
    :math:`\gamma^\top\Sigma_d\gamma + d^\top\Sigma_\gamma d + \mathrm{tr}(\Sigma_d
    \Sigma_\gamma)`, but re-drawing both noises around the *released* :math:`(\hat d,
    \hat\gamma)` gives on average :math:`+2\,\mathrm{tr}(\Sigma_d\Sigma_\gamma)` more
    (:math:`E\,\hat d^\top\Sigma_\gamma\hat d = d^\top\Sigma_\gamma d + \mathrm{tr}`, and
    alike): CIs 14–28 % too wide in ``bench/bench_dr.py``'s 1k-treated cell. So the noise is
    re-drawn three ways with common draws — cells only (:math:`V_c`), slope only (:math:`V_s`),
    both (:math:`V_{cs}`) — and :math:`2V_c + 2V_s - V_{cs}` is unbiased for the variance of
    the bilinear form; it is floored at :math:`\min(V_c, V_s)`, whose mean is below those
    of both (:math:`\gamma^\top\Sigma_d\gamma + \mathrm{tr}`, :math:`d^\top\Sigma_\gamma d +
    \mathrm{tr}`), neither of which exceeds the variance. Not at :math:`\max(V_c, V_s)` (the
    first version): where the strata leave little imbalance the product of the two noises
    dominates, :math:`V_c` and :math:`V_s` are then both noisy estimates of about the variance
    itself (measured 0.86–1.15 of it, ``bench/bench_dr_noise.py --across``), and the larger of
    two such made the floor bind often and the privacy SE 1.19–1.44× the SD of the noise's
    effect across data sets (1k treated, ε = 1, a DR study's plan, 60 data sets); with the
    smaller one 1.10–1.31×, of which the unfloored combination itself holds 1.07–1.19× (the
    parts of the estimate that are not bilinear: ratios of noisy sums to noisy counts, the
    ridge). The stratified part's noise rides in :math:`V_c`.
    ``parts``: return :math:`(\sqrt{V_c}, \sqrt{V_s}, \sqrt{V_{cs}}, \text{SE})` instead
    (``bench/bench_dr_noise.py``).
    """
    cells, slope = _split(rel.cells)[0], _split(rel.slope)[1]
    edges = rel.cells.table.edges

    def est(c: dict[str, np.ndarray], s: dict[str, np.ndarray]) -> np.ndarray:
        r = _release_from_centred(c, s, edges, rel.sigma_cells, rel.sigma_slope)
        return np.array([e.att for e in _estimate_release(r, outcomes, min_cell)])

    v_c, v_s, v_cs, se = bilinear_redraw_se(
        est,
        cells,
        slope,
        redraw_a=lambda: _noisy(cells, rel.sigma_cells, rng),
        redraw_b=lambda: _noisy(slope, rel.sigma_slope, rng),
        n_draws=n_draws,
    )
    return (np.sqrt(v_c), np.sqrt(v_s), np.sqrt(v_cs), se) if parts else se


def bilinear_redraw_se(est, a, b, *, redraw_a, redraw_b, n_draws: int):
    r"""The three-way parametric bootstrap of :func:`redraw_dr_se` for any estimate
    ``est(a, b)`` bilinear in two independently noised releases: ``redraw_a()`` and
    ``redraw_b()`` each give one re-noised copy of ``a`` and ``b`` (in that order per draw, so a
    seeded ``rng`` gives the same draws as before this was shared). Returns :math:`(V_a, V_b,
    V_{ab}, SE)` with :math:`SE = \sqrt{\max(2V_a + 2V_b - V_{ab}, \min(V_a, V_b))}`
    (:func:`redraw_dr_se` says why). Also the DP DR study's adjustment
    :math:`\hat d^\top\hat\gamma` over the imbalance's weighted sums and the slope
    (:func:`shared.dp.drwsum.dr_wsum_estimates`)."""
    if n_draws < 2:
        raise DataError(f"n_draws must be at least 2, got {n_draws!r}")
    f_a, f_b, f_ab = [], [], []
    for _ in range(n_draws):
        na, nb = redraw_a(), redraw_b()
        f_a.append(est(na, b))
        f_b.append(est(a, nb))
        f_ab.append(est(na, nb))
    v_a, v_b, v_ab = (np.var(np.stack(f), axis=0, ddof=1) for f in (f_a, f_b, f_ab))
    return v_a, v_b, v_ab, np.sqrt(np.maximum(2 * v_a + 2 * v_b - v_ab, np.minimum(v_a, v_b)))


def estimate_dr_release(
    rel: DrRelease, *, outcomes: Sequence[Outcome], min_cell: float, n_draws: int = 40, rng
) -> tuple[DrEstimate, ...]:
    """The DP DR estimate of :func:`release_dr`'s two releases: slope from ``slope`` with the
    centring's noise mean added back and :func:`dp_ridge`, imbalance and stratified ATT from
    ``cells``, SE = sampling ⊕ :func:`redraw_dr_se` (``n_draws`` re-draws from ``rng``)."""
    se_priv = redraw_dr_se(rel, outcomes=outcomes, min_cell=min_cell, n_draws=n_draws, rng=rng)
    return _estimate_release(rel, outcomes, min_cell, se_privacy=list(se_priv))
