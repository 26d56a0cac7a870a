r"""The study's noise plan: σ for every planned release, public and deterministic.

Coordinator and nodes compute the same plan from the study spec (ε, δ, the budget split, the
number of covariates and outcomes, the number of DP Newton rounds), so the coordinator knows
every noise scale it must account for in the CI, and a node can check that what it is asked to
release matches the spec.

**How the split's shares map to noise.** A Gaussian release with noise multiplier
:math:`\mu = \sigma/\Delta_2` is :math:`\rho`-zCDP with :math:`\rho = 1/(2\mu^2)`, and its RDP
curve :math:`\alpha\rho` composes by adding :math:`\rho` (Bun & Steinke 2016). The shares of
:class:`shared.study.BudgetSplit` are shares of the study's total :math:`\rho`:

=====================  =========================================================================
share                  releases (each its own Gaussian mechanism)
=====================  =========================================================================
``describe``           ``describe``: per-arm counts
``ps_fit``             R ``ps_fit`` rounds (g, H) and one ``score_hist`` (the quantile-strata
                       histogram), each :math:`\rho_{ps}/(R + 1)`
``psm_stats``          ``psm_main``: counts and Σ(y − ½) per stratum × arm, 45 %; ``psm_sumsq``:
                       Σ(y − ½)², 10 % (:data:`SUMSQ_SHARE`); ``psm_wsum``: the ATT itself as
                       one weighted sum per outcome, 45 % (:data:`WSUM_SHARE`)
``balance``            ``psm_balance``: Σz, Σz² per stratum × arm (0 = not released)
``psm_stats``, DR      a doubly robust study (``estimator = "dr"``, :data:`DR_SHARES`):
                       ``psm_main`` 22.5 %, ``psm_sumsq`` 10 %, ``psm_wsum`` 22.5 % (the
                       stratified ATT's weighted sums, as in a stratified study), ``dr_dsum``
                       22.5 %: the imbalance d as D weighted sums of the covariates with the
                       same weights (:mod:`shared.dp.drwsum`), ``dr_slope`` 22.5 %: the
                       controls' Σzzᵀ, Σzyᵀ and their own copy of the control cells;
                       ``balance`` must be positive (its Σz centres the d release)
(negative controls)    ``nc_main``: the C negative controls' Σ(y − ½) per stratum × arm (the
                       counts are ``psm_main``'s), ``nc_sumsq``: their Σ(y − ½)², ``nc_wsum``:
                       their weighted sums, in the proportions of ``psm_main``, ``psm_sumsq`` and
                       ``psm_wsum`` in a stratified study (:data:`NC_SHARES`), together a
                       share f of ``psm_stats``, the outcomes' releases keeping 1 − f (below)
(``cap_round``)        ``cap_hist``: the large-loss cap's noisy histogram (over every column,
                       the negative controls' too: its Δ counts them)
                       (:mod:`shared.dp.capquantile`), a fixed :data:`~shared.dp.capquantile.CAP_SHARE`
                       of ρ taken off the top; the split's shares then divide the rest
=====================  =========================================================================

Outcome sums are released centred on ½ (:mod:`shared.dp.forms`). The ATT's point estimate is
the weighted sum ``psm_wsum`` (:mod:`shared.dp.wsum`): once ``psm_main``'s noisy counts are
public, each person's weight in the stratified ATT is fixed (1/N_T treated, −n_bT/(N_T·n_bC) a
control of stratum b), so the ATT is one sum per outcome whose sensitivity is the largest weight
times ½, instead of S × 2 cell sums each with their own noise. Its noise on the estimate has two
parts of about equal size at equal ρ, whatever the study's size: σ_wsum·v_max/N_T, and the
counts' noise through the weights, σ_count·√(Σ_b v_b² (ȳ_bC − ½)² + …)/N_T (v_b = n_bT/n_bC,
:func:`shared.dp.wsum.wsum_privacy_se`). With Σ_b v_b² ≈ 2 v_max², (ȳ − ½)² ≤ ¼ and the counts
released beside the cell sums (Δ² = 1 + O/4), the two variances are a/ρ_wsum and b/ρ_main with
a ≈ b, so the sum of both is smallest at equal shares: 45 % each. The cell sums and their
squares are read only for the sampling variance, the count terms' cell means and the balance
diagnostics; Σ(y − ½)² keeps 10 %, enough for its clamped cell variances (at 15 % before the
weighted sum it cost 20 % less noise than the joint release). This split is derived, not tuned
on a benchmark cell. Measured after the fact (10k treated, five nodes, ε = 1, secure
aggregation, 40 seeds): once the weighted sum centres every cell on its noisy mean
(:mod:`shared.dp.wsum`), the counts' share of the ATT's privacy variance fell to about a
quarter (SD 0.0014 against 0.0026 on the [0, 1] scale); a ``psm_wsum`` share of 60 % instead
of 45 % changed the CI widths by under 2 % (3.91 / 1.35 / 8.45× the exact width against 3.85 /
1.37 / 8.34×, claims / CV event / absence days), so the split was left as derived.

**The doubly robust split** (:mod:`shared.psm.dr`, :mod:`shared.dp.drwsum`). With the counts
of ``psm_main`` public, every person's weight :math:`v_i` is fixed, and the DR ATT is
:math:`\frac1N[\sum_i v_i y_i - (\sum_i v_i z_i)^\top\hat\gamma]` (+ the centres' terms): the
stratified study's weighted sums ``psm_wsum`` for the outcomes, the same weighted sums of the D
covariates ``dr_dsum`` for the imbalance :math:`\hat d`, and the slope :math:`\hat\gamma` from
``dr_slope`` — three independent noises beside the counts'. Its privacy variance per outcome,
linearised (:func:`shared.dp.drwsum.dr_wsum_privacy_se`), on the [0, 1] scale with
:math:`\rho_x` each release's share of ``psm_stats``' ρ and :math:`\mu_x^2 = 1/(2\rho_x)`:

.. math::
    V = \underbrace{\frac{O v_{max}^2}{8 N^2 \rho_W}}_{\text{psm\_wsum}}
      + \underbrace{\frac{b}{\rho_M}}_{\text{counts}}
      + \underbrace{\frac{D\lVert\gamma\rVert^2 v_{max}^2}{8 N^2 \rho_D}}_{\gamma^\top\xi_d/N}
      + \underbrace{\frac{d^\top\Sigma_1 d}{\rho_S}}_{d^\top(\hat\gamma - \gamma)}
      + \underbrace{\frac{\mathrm{tr}(\Sigma_1)\,D v_{max}^2}{8 N^2 \rho_D\rho_S}}_{\text{both noises}}

(:math:`\Delta = \sqrt{O}\,v_{max}/2` and :math:`\sqrt{D}\,v_{max}/2` for the two weighted sums,
:math:`\Sigma_1` the slope's noise covariance at ρ = 1). The first two are the stratified
study's, equal at equal shares (a ≈ b, above). The third is the covariates' weighted sum read
through γ: the plan cannot know γ (it is the data's), and at :math:`D\lVert\gamma\rVert^2 = O` —
the covariates' part of the residual :math:`y - z^\top\gamma` moving the weighted sum as much as
the outcome does, the neutral assumption — it equals the first. A sum :math:`\sum_x c_x/\rho_x`
under :math:`\sum_x\rho_x` fixed is smallest at :math:`\rho_x\propto\sqrt{c_x}`, so the three get
equal shares. The slope's terms: the fourth shrinks as :math:`1/N_C^2` (:math:`\Sigma_1 \propto
S_{zz}^{-2}`) and the fifth, the product of the two noises, is smallest for a given
:math:`\rho_D + \rho_S` at :math:`\rho_D = \rho_S` (the DR study's earlier split, which read d
from the balance release, made the same argument). So ``psm_main``, ``psm_wsum``, ``dr_dsum``
and ``dr_slope`` take equal shares of what ``psm_sumsq``'s 10 % leaves, 22.5 % each
(:data:`DR_SHARES`): derived, not tuned. Measured after the fact (10k treated, five nodes,
SecAgg+, ε = 1, 10 seeds, claims, median privacy SEs): the d release through γ̂ 354 against the
outcomes' weighted sums' own 292 (the neutral assumption within 20 %), the slope's noise 538;
a slope share of 54 % did not remove DR's bias there (docs/PRIVACY.md, "DR as the DP default"),
so the split stands. Coverage and widths: docs/benchmarks/dr_privacy.md.
The balance release keeps the spec's ``balance`` share; its Σz gives the d release its centres.

**Negative controls within ε** (issue #21). The controls the spec declares (``[[negative_controls]]``,
their number C and their share f signed with the study, :class:`shared.protocol.PrivacyQuery`)
are not outcomes of the study's releases: ``psm_main``, ``psm_sumsq`` and ``psm_wsum`` carry the
O outcomes only (their Δ grows with the columns, √O-type, so riding along, 24 controls widened
every outcome's noise ×2–3), and the controls travel in releases of their own, ``nc_main``,
``nc_sumsq``, ``nc_wsum``, which divide a share f of ``psm_stats``' ρ in the stratified
proportions (:data:`NC_SHARES`); the outcomes' three releases keep 1 − f of it. Every share is
still a share of the one total ρ, calibrated over all releases, so a study with controls costs a
node exactly what it costs without them (the same ε; under the exact Gaussian accountant the same
ρ), and each outcome σ of ``psm_stats`` is 1/√(1 − f) that of the study without controls.

Why f = 1/(1 + √O) (:func:`default_control_share`, 0.366 at O = 3): the calibrated estimate is
θ̂ − μ̂ (:mod:`shared.psm.calibration`), whose error is θ̂'s (sampling, systematic τ², and the
outcome's privacy noise) plus μ̂'s. An outcome's privacy variance is that of one of O columns of
releases holding ρ(1 − f), ∝ O/(1 − f); μ̂ averages C controls each ∝ C/f, so its privacy variance
is ∝ 1/f (C cancels). The sum O/(1 − f) + 1/f is smallest at (1 − f)/f = √O. It assumes a
control's privacy noise on the log ratio is like an outcome's (the data decide their means, the
plan cannot); it minimises the width of a calibrated CI that carries μ̂'s error, not that of the
reported one (which leaves μ̂'s error out and would take f → 0, leaving μ̂ to the noise).
Measured: docs/benchmarks/nc_share.md (``bench/bench_nc_share.py``). A DR study's controls still ride in
its releases (:func:`shared.protocol.controls_apart`): its outcomes are DR estimates, and
controls estimated apart by the weighted sums would be stratified ones, whose systematic error is
another estimator's; a DR plan asked with controls divides the share the same way. A spec
without negative controls plans (and hashes) exactly as before.

The total :math:`\rho` is the largest for which the accountant (:mod:`.accounting`) composes all
releases to at most the study's ε at δ, found by bisection and returned from the conservative
end (never above ε, Opacus' ``get_noise_multiplier`` convention). A node charges its ledger
with the *same* accountant, so the plan's releases always fit a fresh budget of ε.

>>> from shared.study import BudgetSplit
>>> plan = plan_study(epsilon=1.0, delta=1e-6, split=BudgetSplit(), n_covariates=16,
...                   n_outcomes=3, n_ps_rounds=4)
>>> plan.epsilon_planned <= 1.0, [r.query for r in plan.releases][:3]
(True, ['describe', 'ps_fit', 'ps_fit'])
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

from shared.dp.accounting import DEFAULT_ACCOUNTANT, epsilon_spent
from shared.dp.sensitivity import (
    count_sensitivity,
    dr_slope_sensitivity,
    nc_main_sensitivity,
    ps_fit_sensitivity,
    psm_balance_sensitivity,
    psm_main_sensitivity,
    psm_sumsq_sensitivity,
)
from shared.errors import PrivacyError

#: Share of the study's privacy loss (zCDP ρ) the large-loss cap's histogram takes
#: (:mod:`shared.dp.capquantile`), fixed in advance: that of describe's counts
#: (``BudgetSplit.describe``), like them one count per row per outcome. Here, with the other
#: shares, so the plan need not import the cap's module.
CAP_SHARE = 0.05
#: The sensitivity a plan records for ``psm_wsum``: a unit. That release's Δ depends on the
#: largest weight the query asks for (:func:`shared.dp.sensitivity.psm_wsum_sensitivity`); the
#: plan fixes its noise multiplier μ, and σ = μ·Δ follows from the query
#: (:meth:`PlannedRelease.for_sensitivity`).
UNIT_SENSITIVITY = 1.0

__all__ = [
    "CAP_SHARE",
    "DEFAULT_PS_ROUNDS",
    "DR_SHARES",
    "DR_SLOPE_SHARE",
    "NC_RELEASES",
    "NC_SHARES",
    "NoisePlan",
    "PlannedRelease",
    "SUMSQ_SHARE",
    "WSUM_SHARE",
    "default_control_share",
    "plan_study",
    "single_release_multiplier",
]

#: Newton rounds of the propensity fit under DP (fixed, so the plan can be set in advance).
DEFAULT_PS_ROUNDS = 4
#: Share of the ``psm_stats`` budget spent on the sums of squares (see the module docstring).
SUMSQ_SHARE = 0.10
#: Share of the ``psm_stats`` budget spent on the ATT's weighted sums (see the module docstring).
WSUM_SHARE = 0.45
#: How a doubly robust study divides the ``psm_stats`` budget (see the module docstring):
#: ``psm_sumsq`` as in a stratified study, the rest equally between the counts, the outcomes'
#: weighted sums, the imbalance's weighted sums and the slope.
DR_SHARES: dict[str, float] = {
    "psm_main": (1.0 - SUMSQ_SHARE) / 4,
    "psm_sumsq": SUMSQ_SHARE,
    "psm_wsum": (1.0 - SUMSQ_SHARE) / 4,
    "dr_dsum": (1.0 - SUMSQ_SHARE) / 4,
    "dr_slope": (1.0 - SUMSQ_SHARE) / 4,
}
#: Share of the ``psm_stats`` budget a doubly robust study spends on ``dr_slope``.
DR_SLOPE_SHARE = DR_SHARES["dr_slope"]
#: The negative controls' releases and how they divide the controls' part of ``psm_stats``
#: (:func:`default_control_share` of it): the stratified study's ``psm_main``, ``psm_sumsq`` and
#: ``psm_wsum`` proportions (see the module docstring).
NC_SHARES: dict[str, float] = {
    "nc_main": 1.0 - SUMSQ_SHARE - WSUM_SHARE,
    "nc_sumsq": SUMSQ_SHARE,
    "nc_wsum": WSUM_SHARE,
}
#: The negative controls' releases, in plan order.
NC_RELEASES: tuple[str, ...] = tuple(NC_SHARES)


def default_control_share(n_outcomes: int) -> float:
    r"""The default share of ``psm_stats``' ρ the negative controls' own releases take, within
    the study's ρ: :math:`f = 1/(1 + \sqrt{O})` for O outcomes (0.5 at one outcome, 0.366 at
    the synthetic three). It minimises the variance of the calibrated estimate
    :math:`\hat\theta - \hat\mu` (module docstring, "Negative controls within ε").

    >>> round(default_control_share(3), 3)
    0.366
    """
    if n_outcomes < 1:
        raise ValueError(f"n_outcomes must be at least 1, got {n_outcomes!r}")
    return 1.0 / (1.0 + math.sqrt(n_outcomes))


@dataclass(frozen=True)
class PlannedRelease:
    """One Gaussian release of the plan.

    Attributes:
        query: ``describe``, ``ps_fit``, ``score_hist``, ``psm_main``, ``psm_sumsq``,
            ``psm_balance``, ``psm_wsum`` or ``dr_slope`` (the keys of
            :data:`shared.dp.sensitivity.RELEASE_KEYS`).
        index: round number among releases of the same query (ps_fit 0..R-1, else 0).
        sensitivity: :math:`\\Delta_2` from the public bounds (``psm_wsum``: a unit until
            :meth:`for_sensitivity` sets the query's).
        noise_multiplier: :math:`\\mu = \\sigma/\\Delta_2`.
    """

    query: str
    index: int
    sensitivity: float
    noise_multiplier: float

    @property
    def sigma(self) -> float:
        """Noise standard deviation each node adds to every entry."""
        return self.noise_multiplier * self.sensitivity

    def for_sensitivity(self, sensitivity: float) -> "PlannedRelease":
        """The same release (same μ, so the same privacy loss) at the sensitivity a query
        declares: how ``psm_wsum`` gets its σ from the largest weight it is asked for."""
        return PlannedRelease(
            query=self.query,
            index=self.index,
            sensitivity=float(sensitivity),
            noise_multiplier=self.noise_multiplier,
        )

    def total_sigma(self, n_nodes: int, *, secure_aggregation: bool = False) -> float:
        """SD of the noise in the coordinator's sum over ``n_nodes`` nodes.

        Without secure aggregation each node adds σ, so the sum carries σ√K; with SecAgg+
        each node adds σ/√K and only the sum is seen (central-DP noise σ).
        """
        return self.sigma if secure_aggregation else self.sigma * math.sqrt(n_nodes)


@dataclass(frozen=True)
class NoisePlan:
    """Every release of a DP study with its σ. :attr:`epsilon` is the study's ε and bounds the
    composition of every release, the negative controls' included (:attr:`epsilon_planned`
    ≤ :attr:`epsilon`: the controls take a share of ρ within it)."""

    epsilon: float
    delta: float
    accountant: str
    rho: float
    n_ps_rounds: int
    releases: tuple[PlannedRelease, ...]
    epsilon_planned: float
    #: the study opens with the large-loss cap's histogram (``cap_hist``), paid off the top
    cap_round: bool = False
    #: C, the negative controls released apart (``nc_*``, within :attr:`rho`)
    n_negative_controls: int = 0
    #: the share of ``psm_stats``' ρ the controls' releases take (0: no controls apart)
    control_share: float = 0.0

    def release(self, query: str) -> PlannedRelease:
        """The first planned release of ``query`` (all ps_fit rounds have equal noise).

        Raises:
            PrivacyError: the plan has no such release (e.g. balance share 0).
        """
        for r in self.releases:
            if r.query == query:
                return r
        raise PrivacyError(f"the study's noise plan has no {query!r} release")

    def has(self, query: str) -> bool:
        return any(r.query == query for r in self.releases)

    def sigma(self, query: str) -> float:
        return self.release(query).sigma

    def for_controls(self) -> "NoisePlan":
        """The plan as the negative controls' estimates read it: ``psm_sumsq`` and
        ``psm_wsum`` carry the controls' ``nc_sumsq`` and ``nc_wsum`` noise, ``psm_main`` keeps
        the counts' (released once, for outcomes and controls alike). Not for charging.

        Raises:
            PrivacyError: the plan holds no controls' releases.
        """
        if not self.n_negative_controls:
            raise PrivacyError("the study's noise plan releases no negative controls apart")
        nc = {"psm_sumsq": self.release("nc_sumsq"), "psm_wsum": self.release("nc_wsum")}
        releases = tuple(
            PlannedRelease(r.query, r.index, nc[r.query].sensitivity, nc[r.query].noise_multiplier)
            if r.query in nc
            else r
            for r in self.releases
            if r.query not in NC_SHARES
        )
        return dataclasses.replace(self, releases=releases)

    def epsilon_for_sigma(self, query: str, sigma: float) -> float:
        """The study ε at which ``query`` would carry noise ``sigma`` per node, with the same
        split, δ and rounds: every σ scales together when ε changes, so this is the accountant's
        ε for all multipliers scaled by ``sigma / self.sigma(query)``."""
        k = sigma / self.sigma(query)
        return epsilon_spent(
            noise_multipliers=[r.noise_multiplier * k for r in self.releases],
            delta=self.delta,
            accountant=self.accountant,
        )

    def with_split(self, split) -> "NoisePlan":
        """The same total ρ spread by another split (same sensitivities and rounds): how a study
        re-plans its rounds after describe (a re-split; the coordinator no longer asks one).

        Gaussian releases compose by adding ρ, so under the RDP accountant the ε is unchanged
        whatever the split; it is recomputed and checked all the same (PRV composes otherwise).

        Raises:
            PrivacyError: the split names a release this plan has no sensitivity for, or the
                re-split plan would cost more than the study's ε.
        """
        sens = {r.query: r.sensitivity for r in self.releases}
        shares = tuple(
            _release_shares(
                split,
                self.n_ps_rounds,
                dr=self.has("dr_slope"),
                cap_round=self.cap_round,
                controls=self.control_share,
            )
        )
        unknown = sorted({q for q, _, _ in shares} - set(sens))
        if unknown:
            raise PrivacyError(f"cannot re-split onto release(s) the plan lacks: {', '.join(unknown)}")
        eps = epsilon_spent(
            noise_multipliers=[_multiplier(self.rho * s) for _, _, s in shares],
            delta=self.delta,
            accountant=self.accountant,
        )
        if eps > self.epsilon * (1.0 + 1e-9):
            raise PrivacyError(
                f"the re-split plan would cost ε = {eps:.6g}, more than the study's ε = {self.epsilon:g}"
            )
        return _assemble(
            self.epsilon,
            self.delta,
            self.accountant,
            self.rho,
            self.n_ps_rounds,
            shares,
            sens,
            eps,
            self.cap_round,
            n_negative_controls=self.n_negative_controls,
            control_share=self.control_share,
        )

    def to_dict(self) -> dict:
        out = {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "accountant": self.accountant,
            "rho": self.rho,
            "n_ps_rounds": self.n_ps_rounds,
            "epsilon_planned": self.epsilon_planned,
            "cap_round": self.cap_round,
            "releases": [
                {
                    "query": r.query,
                    "index": r.index,
                    "sensitivity": r.sensitivity,
                    "noise_multiplier": r.noise_multiplier,
                    "sigma": r.sigma,
                }
                for r in self.releases
            ],
        }
        if self.n_negative_controls:  # a plan without controls: its dict as before
            out["n_negative_controls"] = self.n_negative_controls
            out["control_share"] = self.control_share
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "NoisePlan":
        """Inverse of :meth:`to_dict` (a node caches its plan per study: calibrating it costs
        seconds of accountant work, and every Flower message starts a fresh process)."""
        releases = tuple(
            PlannedRelease(
                query=r["query"],
                index=int(r["index"]),
                sensitivity=float(r["sensitivity"]),
                noise_multiplier=float(r["noise_multiplier"]),
            )
            for r in d["releases"]
        )
        return cls(
            epsilon=float(d["epsilon"]),
            delta=float(d["delta"]),
            accountant=d["accountant"],
            rho=float(d["rho"]),
            n_ps_rounds=int(d["n_ps_rounds"]),
            releases=releases,
            epsilon_planned=float(d["epsilon_planned"]),
            cap_round=bool(d.get("cap_round", False)),
            n_negative_controls=int(d.get("n_negative_controls", 0)),
            control_share=float(d.get("control_share", 0.0)),
        )


def _release_shares(
    split, n_ps_rounds: int, *, dr: bool = False, cap_round: bool = False, controls: float = 0.0
) -> list[tuple[str, int, float]]:
    """(query, index, share of ρ) for every release with a positive share; ``dr``: a doubly
    robust study's (:data:`DR_SHARES`: ``dr_dsum`` and ``dr_slope`` beside ``psm_wsum``); with
    ``cap_round`` the cap histogram first, at its fixed share, and the other shares scaled to
    the rest; ``controls``: the share of ``psm_stats`` the negative controls' releases take
    (:data:`NC_SHARES`), the outcomes' ``psm_stats`` releases keeping the rest. The shares
    sum to 1 either way."""
    if cap_round:
        rest = _release_shares(split, n_ps_rounds, dr=dr, controls=controls)
        return [("cap_hist", 0, CAP_SHARE)] + [(q, i, (1.0 - CAP_SHARE) * s) for q, i, s in rest]
    ps_each = split.ps_fit / (n_ps_rounds + 1)
    stats = split.psm_stats * (1.0 - controls)  # the outcomes' part of psm_stats
    shares = DR_SHARES if dr else {"psm_main": 1.0 - SUMSQ_SHARE - WSUM_SHARE, "psm_sumsq": SUMSQ_SHARE}
    out = [("describe", 0, split.describe)]
    out += [("ps_fit", i, ps_each) for i in range(n_ps_rounds)]
    out += [("score_hist", 0, ps_each)]
    out += [(q, 0, stats * shares[q]) for q in ("psm_main", "psm_sumsq")]
    out += [(q, 0, stats * s) for q, s in shares.items() if q not in ("psm_main", "psm_sumsq")]
    if not dr:
        out += [("psm_wsum", 0, stats * WSUM_SHARE)]
    out += [("psm_balance", 0, split.balance)]
    out += [(q, 0, split.psm_stats * controls * share) for q, share in NC_SHARES.items()]
    return [r for r in out if r[2] > 0]


def plan_study(
    *,
    epsilon: float,
    delta: float,
    split,
    n_covariates: int,
    n_outcomes: int,
    n_ps_rounds: int = DEFAULT_PS_ROUNDS,
    accountant: str = DEFAULT_ACCOUNTANT,
    estimator: str = "stratified",
    cap_round: bool = False,
    n_negative_controls: int = 0,
    control_share: float | None = None,
    rho: float | None = None,
) -> NoisePlan:
    r"""σ for every release so that all releases, the negative controls' included, compose to
    at most ``epsilon`` at ``delta`` (see the module docstring).

    Args:
        epsilon, delta: the study's budget (per node and dataset).
        split: a :class:`shared.study.BudgetSplit` (shares of ρ, see the module docstring).
        n_covariates, n_outcomes: D and O (the sensitivities depend on them); O counts the
            study's outcomes, not its negative controls.
        n_ps_rounds: R, the fixed number of DP Newton rounds.
        accountant: ``"gaussian"`` (default, exact), ``"rdp"`` or ``"prv"``.
        estimator: ``"stratified"`` or ``"dr"`` (``dr_dsum`` and ``dr_slope`` beside ``psm_wsum``).
        cap_round: the study opens with the large-loss cap's histogram (``cap_hist``).
        n_negative_controls: C, the negative controls released apart (``nc_main``,
            ``nc_sumsq``, ``nc_wsum``); 0: none, the plan exactly as without them.
        control_share: the share of ``psm_stats``' ρ their releases take, in (0, 1); None:
            :func:`default_control_share` of O. Ignored without controls.
        rho: the total ρ to plan at instead of calibrating it (a node re-deriving a cached
            plan cheaply, to check it is this code's); it must fit ``epsilon``.

    Returns:
        The :class:`NoisePlan` (deterministic in its arguments).

    Raises:
        PrivacyError: ε or δ out of range, or describe, ps_fit or psm_stats has no share (or
            balance, in a doubly robust study), or a given ``rho`` does not fit ``epsilon``.
        ValueError: bad dimensions, accountant or estimator.
    """
    if estimator not in ("stratified", "dr"):
        raise ValueError(f"estimator must be 'stratified' or 'dr', got {estimator!r}")
    if not (math.isfinite(epsilon) and epsilon > 0) or not 0 < delta < 1:
        raise PrivacyError(f"a DP study needs ε > 0 and 0 < δ < 1, got ε={epsilon!r}, δ={delta!r}")
    if n_ps_rounds < 1:
        raise ValueError(f"n_ps_rounds must be at least 1, got {n_ps_rounds!r}")
    if int(n_negative_controls) != n_negative_controls or n_negative_controls < 0:
        raise ValueError(f"n_negative_controls must be a non-negative integer, got {n_negative_controls!r}")
    share = 0.0
    if n_negative_controls:
        share = default_control_share(n_outcomes) if control_share is None else float(control_share)
        if not 0.0 < share < 1.0:
            raise PrivacyError(f"the negative controls' share of psm_stats must be in (0, 1), got {share!r}")
    for name in ("describe", "ps_fit", "psm_stats") + (("balance",) if estimator == "dr" else ()):
        if not getattr(split, name) > 0:
            raise PrivacyError(
                f"privacy.split.{name} must be positive under DP: that round "
                "cannot run without releasing noisy statistics"
            )
    sens = {
        "describe": count_sensitivity(),
        "score_hist": count_sensitivity(),
        "ps_fit": ps_fit_sensitivity(n_covariates=n_covariates),
        "psm_main": psm_main_sensitivity(n_outcomes=n_outcomes),
        "psm_sumsq": psm_sumsq_sensitivity(n_outcomes=n_outcomes),
        "psm_balance": psm_balance_sensitivity(n_covariates=n_covariates),
        "psm_wsum": UNIT_SENSITIVITY,
        "dr_dsum": UNIT_SENSITIVITY,  # like psm_wsum's: σ = μ·Δ from the weights the query asks
        "dr_slope": dr_slope_sensitivity(n_covariates=n_covariates, n_outcomes=n_outcomes),
        # shared.dp.capquantile.cap_hist_sensitivity: the histogram covers every outcome column,
        # the negative controls' too (their caps are lowered with the outcomes')
        "cap_hist": math.sqrt(n_outcomes + n_negative_controls),
        "nc_main": nc_main_sensitivity(n_controls=max(int(n_negative_controls), 1)),
        "nc_sumsq": psm_sumsq_sensitivity(n_outcomes=max(int(n_negative_controls), 1)),
        "nc_wsum": UNIT_SENSITIVITY,
    }
    shares = tuple(
        _release_shares(split, n_ps_rounds, dr=estimator == "dr", cap_round=cap_round, controls=share)
    )
    if rho is None:
        rho, eps = _calibrate(float(epsilon), float(delta), tuple(s for _, _, s in shares), accountant)
    else:
        eps = epsilon_spent(
            noise_multipliers=[_multiplier(rho * s) for _, _, s in shares],
            delta=float(delta),
            accountant=accountant,
        )
        if not eps <= float(epsilon):
            raise PrivacyError(
                f"a total ρ of {rho:g} composes to ε = {eps:.6g}, above the study's {epsilon:g}"
            )
    return _assemble(
        float(epsilon),
        float(delta),
        accountant,
        rho,
        n_ps_rounds,
        shares,
        sens,
        eps,
        cap_round,
        n_negative_controls=int(n_negative_controls),
        control_share=share,
    )


def single_release_multiplier(*, epsilon: float, delta: float, accountant: str = DEFAULT_ACCOUNTANT) -> float:
    """Noise multiplier μ = σ/Δ₂ of one Gaussian release costing at most ``epsilon`` at
    ``delta`` under the ledger's accountant (the same bisection as :func:`plan_study`, with one
    release holding the whole ρ): a node charging this μ to a fresh ledger spends ≤ ε.

    >>> round(single_release_multiplier(epsilon=1.0, delta=1e-5), 2)
    3.73

    Raises:
        PrivacyError: ε or δ out of range.
    """
    if not (math.isfinite(epsilon) and epsilon > 0) or not 0 < delta < 1:
        raise PrivacyError(f"a DP release needs ε > 0 and 0 < δ < 1, got ε={epsilon!r}, δ={delta!r}")
    rho, _ = _calibrate(float(epsilon), float(delta), (1.0,), accountant)
    return _multiplier(rho)


def _assemble(
    epsilon: float,
    delta: float,
    accountant: str,
    rho: float,
    n_ps_rounds: int,
    shares,
    sens: dict[str, float],
    eps: float,
    cap_round: bool = False,
    *,
    n_negative_controls: int = 0,
    control_share: float = 0.0,
) -> NoisePlan:
    releases = tuple(
        PlannedRelease(query=q, index=i, sensitivity=sens[q], noise_multiplier=_multiplier(rho * s))
        for q, i, s in shares
    )
    return NoisePlan(
        epsilon=epsilon,
        delta=delta,
        accountant=accountant,
        rho=rho,
        n_ps_rounds=n_ps_rounds,
        releases=releases,
        epsilon_planned=eps,
        cap_round=cap_round,
        n_negative_controls=n_negative_controls,
        control_share=control_share,
    )


def _multiplier(rho: float) -> float:
    return 1.0 / math.sqrt(2.0 * rho)


@functools.lru_cache(maxsize=256)
def _calibrate(
    epsilon: float, delta: float, shares: tuple[float, ...], accountant: str
) -> tuple[float, float]:
    """Largest total ρ (to relative 1e-6) whose releases compose to ≤ ε; returns (ρ, ε(ρ))."""

    def eps_of(rho: float) -> float:
        return epsilon_spent(
            noise_multipliers=[_multiplier(rho * s) for s in shares], delta=delta, accountant=accountant
        )

    lo, hi = 1e-12, epsilon  # ρ ≤ ε always (ε ≥ ρ + 2√(ρ log 1/δ))
    while eps_of(hi) <= epsilon:  # pragma: no cover - defensive: ρ = ε never fits
        lo, hi = hi, hi * 2.0
    eps_lo = eps_of(lo)
    while hi / lo > 1.0 + 1e-6:
        mid = math.sqrt(lo * hi)
        e = eps_of(mid)
        if e <= epsilon:
            lo, eps_lo = mid, e
        else:
            hi = mid
    return lo, eps_lo
