"""The stratified estimator: row-level oracles, units, coverage against the synthetic truth,
agreement with 1:1 NN matching, noisy tables, and the mapping onto shared.result."""

import numpy as np
import pytest
from psm_dgp import COVARIATES, OUTCOMES, make_study

from shared.features import FEATURE_NAMES, FEATURES, scale
from shared.psm.estimator import estimate_att
from shared.psm.reference import estimate_att_pooled, nn_match_att
from shared.psm.strata import logit_scores
from shared.psm.table import PsmTable, scale_outcomes, unscale_outcomes
from shared.result import BalanceRow, Diagnostic, OutcomeEstimate, StratumCounts
from shared.study import Outcome
from shared.synth import generate_cohort
from shared.synth.outcomes import OUTCOMES as SYNTH_OUTCOMES

CAPS = np.array([o.cap for o in OUTCOMES])


@pytest.fixture(scope="module")
def study():
    return make_study(n=6000, seed=24)  # has strata with a single control or treated


@pytest.fixture(scope="module")
def pooled(study):
    return estimate_att_pooled(z=study.z, t=study.t, y=study.y, outcomes=OUTCOMES, covariates=COVARIATES)


def test_estimate_equals_row_level_computation(study, pooled):
    """Per-stratum means and variances straight from the rows (no table) give the same numbers."""
    y = np.clip(study.y, 0, CAPS)
    b = np.searchsorted(pooled.edges, logit_scores(z=study.z, beta=pooled.fitter.beta), side="right") - 1
    t = study.t
    used = [s for s in np.unique(b) if ((b == s) & (t == 1)).any() and ((b == s) & (t == 0)).sum() >= 1]
    n_t = sum(((b == s) & (t == 1)).sum() for s in used)
    for k, o in enumerate(OUTCOMES):
        controls = [y[(b == s) & (t == 0), k] for s in used]
        assert any(c.size == 1 for c in controls)  # the small-cell fallback is exercised
        treated = [y[(b == s) & (t == 1), k] for s in used]
        dof = [max(c.size - 1, 0) for c in controls]
        ss = [((c - c.mean()) ** 2).sum() for c in controls]

        def worth(cell):
            """The degrees of freedom a cell's variance is worth: n − 1, and for a 0/1 outcome
            at most 2n·p(1 − p)/(1 − 2p)² (the delta method against a normal variance)."""
            d, p = max(cell.size - 1, 0), cell.mean() if cell.size else 0.0
            if o.kind != "binary" or d == 0 or p == 0.5:
                return d
            return min(d, 2 * cell.size * p * (1 - p) / (1 - 2 * p) ** 2)

        info = [worth(c) for c in controls]
        big = [i for i in range(len(used)) if worth(controls[i]) >= 10 and worth(treated[i]) >= 10]
        assert any(dof[i] < 10 and treated[i].size > 10 for i in range(len(used)))  # both rules run
        if o.kind == "binary":  # cells of ten or more controls but too few events borrow too
            assert any(dof[i] >= 10 > info[i] for i in range(len(used)))
        kappa = (sum(ss[i] for i in big) / sum(dof[i] for i in big)) / (
            sum(treated[i].var() * treated[i].size for i in big) / sum(treated[i].size - 1 for i in big)
        )

        def variance(i):
            if info[i] >= 10:
                return ss[i] / dof[i]
            for r in range(len(used)):  # the nearest symmetric window worth 10 dof
                win = range(max(i - r, 0), min(i + r + 1, len(used)))
                if sum(info[j] for j in win) >= 10 or len(win) == len(used):
                    pooled = sum(ss[j] for j in win) / sum(dof[j] for j in win)
                    break
            if worth(treated[i]) >= 10:  # the stratum's many treated give the local spread
                pooled = max(pooled, kappa * treated[i].var(ddof=1))
            return pooled

        att = var = 0.0
        mix = []  # (weight, control mean, control variance) per stratum, for control_sd
        for i, (s, yc) in enumerate(zip(used, controls)):
            yt = y[(b == s) & (t == 1), k]
            w = yt.size / n_t
            att += w * (yt.mean() - yc.mean())
            var += w**2 * variance(i) * (1 / yt.size + 1 / yc.size)
            mix.append((w, yc.mean(), variance(i)))
        est = pooled.estimate.outcome(o.name)
        assert est.att == pytest.approx(att, rel=1e-9)
        # the SD of the controls reweighted to the treated: the mixture over strata
        m_c = sum(w * m for w, m, _ in mix)
        sd_c = np.sqrt(sum(w * (v + (m - m_c) ** 2) for w, m, v in mix))
        assert est.control_sd == pytest.approx(sd_c, rel=1e-9)
        assert est.control_mean == pytest.approx(m_c, rel=1e-9)
        assert est.se_sampling == est.se == pytest.approx(np.sqrt(var), rel=1e-9)
        assert est.n_treated == n_t and est.n_treated_dropped == int(t.sum()) - n_t
        assert est.ci[0] < est.att < est.ci[1]


def test_balance_matches_row_level_smd(study, pooled):
    z, t = study.z, study.t
    for j, row in enumerate(pooled.estimate.balance):
        zt, zc = z[t == 1, j], z[t == 0, j]
        sd = np.sqrt((zt.var(ddof=1) + zc.var(ddof=1)) / 2)
        assert row.covariate == COVARIATES[j]
        assert row.smd_before == pytest.approx((zt.mean() - zc.mean()) / sd, rel=1e-9)
        assert row.var_ratio_before == pytest.approx(zt.var(ddof=1) / zc.var(ddof=1), rel=1e-9)
        assert abs(row.smd_after) < 0.1 < abs(row.smd_before) or abs(row.smd_before) < 0.1
    assert max(abs(r.smd_after) for r in pooled.estimate.balance) < 0.1


def test_reported_in_original_units(study):
    """Raising a cap that clips nothing changes the [0,1] scale but not the reported numbers."""
    days = study.y[:, 2:3]
    assert days.max() < 60
    a = estimate_att_pooled(
        z=study.z, t=study.t, y=days, covariates=COVARIATES, outcomes=[Outcome(name="absence_days", cap=60.0)]
    ).estimate.outcomes[0]
    b = estimate_att_pooled(
        z=study.z,
        t=study.t,
        y=days + 5,
        covariates=COVARIATES,
        outcomes=[Outcome(name="absence_days", lo=5.0, cap=500.0)],
    ).estimate.outcomes[0]
    assert b.att == pytest.approx(a.att, rel=1e-9) and b.se == pytest.approx(a.se, rel=1e-9)
    assert b.control_mean == pytest.approx(a.control_mean + 5, rel=1e-9)
    y01, n_clipped = scale_outcomes(y=study.y, lo=[0, 0, 0], cap=CAPS)
    np.testing.assert_allclose(unscale_outcomes(y01=y01, lo=[0, 0, 0], cap=CAPS), np.clip(study.y, 0, CAPS))
    assert n_clipped.tolist() == [int((study.y[:, 0] > CAPS[0]).sum()), 0, 0]


def test_binary_outcome_gives_risk_difference_and_relative_risk(pooled):
    ev = pooled.estimate.outcome("cv_event")
    assert ev.risk_difference == ev.att
    assert ev.relative_risk == pytest.approx(ev.treated_mean / ev.control_mean)
    lo, hi = ev.relative_risk_ci
    assert lo < ev.relative_risk < hi < 1.0  # the simulated intervention lowers risk by 25 %
    assert pooled.estimate.outcome("claims_cost").relative_risk is None


def _dgp_study(seed):
    s = make_study(n=2000, seed=seed)
    return s.z, s.t, s.y, s.truth, OUTCOMES, COVARIATES


def _synth_study(seed):
    cohort, truth = generate_cohort(n=2000, seed=seed)
    z = scale(cohort[list(FEATURE_NAMES)].to_numpy(float), FEATURES)
    y = cohort[[o.name for o in SYNTH_OUTCOMES]].to_numpy(float)
    return z, cohort["treated"].to_numpy(float), y, truth["att_capped"], SYNTH_OUTCOMES, FEATURE_NAMES


@pytest.mark.parametrize(
    "make, seeds",
    [(_dgp_study, range(500, 650)), (_synth_study, range(700, 800))],
    ids=["test-dgp", "shared.synth"],
)
def test_ci_covers_the_true_att_across_seeds(make, seeds):
    """Each outcome's 95 % CI covers the sample ATT in 88-99.5 % of seeded studies (binomial
    sd ≈ 2 %; bench/bench_psm.py runs 400 seeds against the 93-97 % band)."""
    hits = []
    for seed in seeds:
        z, t, y, truth, outcomes, covariates = make(seed)
        est = estimate_att_pooled(z=z, t=t, y=y, outcomes=outcomes, covariates=covariates).estimate
        hits.append([o.ci[0] <= truth[o.name] <= o.ci[1] for o in est.outcomes])
    coverage = np.mean(hits, axis=0)
    assert np.all((coverage >= 0.88) & (coverage <= 0.995)), coverage


def test_stratified_and_nn_matching_agree_within_their_cis(study, pooled):
    scores = logit_scores(z=study.z, beta=pooled.fitter.beta)
    nn = nn_match_att(
        scores=scores,
        t=study.t,
        y=np.clip(study.y, 0, CAPS),
        caliper=0.2 * pooled.logit_sd,
        names=[o.name for o in OUTCOMES],
    )
    for m in nn:
        st = pooled.estimate.outcome(m.name)
        assert m.ci[0] <= st.att <= m.ci[1] and st.ci[0] <= m.att <= st.ci[1], (m, st)
        assert m.se > st.se * 0.8  # matching with replacement discards controls: no more precise
        ref = st.model_copy(update={"reference": m.as_reference()}).reference
        assert ref["att"] == m.att and ref["ci_hi"] == m.ci[1]


def test_nn_matching_equals_brute_force():
    rng = np.random.default_rng(4)
    s = rng.normal(size=300)
    t = (rng.uniform(size=300) < 0.3).astype(float)
    y = rng.normal(size=(300, 2)) + s[:, None]
    caliper = 0.05
    ctrl, trt = np.flatnonzero(t == 0), np.flatnonzero(t == 1)
    pairs = []
    for i in trt:
        d = np.abs(s[ctrl] - s[i])
        if d.min() <= caliper:
            pairs.append((i, ctrl[np.argmin(d)]))
    i, j = np.array(pairs).T
    res = nn_match_att(scores=s, t=t, y=y, caliper=caliper)
    for k, r in enumerate(res):
        diff = y[i, k] - y[j, k]
        assert r.att == pytest.approx(diff.mean(), rel=1e-12)
        assert r.n_matched == len(pairs) and r.n_treated_dropped == trt.size - len(pairs)
        used, counts = np.unique(j, return_counts=True)
        # Abadie-Imbens: sum over reused controls of K(K-1) * sigma^2 from the nearest other control
        extra = 0.0
        for c, kk in zip(used, counts):
            others = ctrl[ctrl != c]
            nb = others[np.argmin(np.abs(s[others] - s[c]))]
            extra += kk * (kk - 1) * 0.5 * (y[c, k] - y[nb, k]) ** 2
        var = (np.sum((diff - diff.mean()) ** 2) + extra) / len(pairs) ** 2
        assert r.se == pytest.approx(np.sqrt(var), rel=1e-12)


def test_noisy_table_never_yields_nan(pooled):
    """DP noise makes counts fractional or negative: estimates stay finite and clamped."""
    rng = np.random.default_rng(9)
    arrays = pooled.table.to_arrays()
    for key in ("count", "sum_y", "sumsq_y", "sum_z", "sumsq_z"):
        arrays[key] = arrays[key] + rng.normal(0, 3.0, arrays[key].shape)
    noisy = PsmTable.from_arrays(arrays)
    assert (noisy.count < 0).any()
    est = estimate_att(
        table=noisy, outcomes=OUTCOMES, covariates=COVARIATES, min_cell=5, se_privacy=[100.0, 0.01, 0.1]
    )
    for o in est.outcomes:
        vals = [o.att, o.se, o.se_sampling, *o.ci, o.treated_mean, o.control_mean, o.privacy_share_of_ci]
        assert np.all(np.isfinite(vals)) and 0 < o.privacy_share_of_ci < 1
        assert o.se == pytest.approx(np.hypot(o.se_sampling, o.se_privacy))
    for b in est.balance:
        assert np.isfinite(b.smd_before) and np.isfinite(b.smd_after)
    assert all(s.n_treated >= 0 and s.n_control >= 0 for s in est.strata)
    assert not any(s.used for s, c in zip(est.strata, noisy.count) if c.min() < 5)
    base = pooled.estimate.outcome("claims_cost")
    assert abs(est.outcome("claims_cost").att - base.att) < 3 * base.se


def test_size_gate_and_attrition_warn(study):
    keep = np.r_[np.flatnonzero(study.t == 1)[:60], np.flatnonzero(study.t == 0)[:150]]
    est = estimate_att_pooled(
        z=study.z[keep], t=study.t[keep], y=study.y[keep], outcomes=OUTCOMES, covariates=COVARIATES
    ).estimate
    checks = {c.name: c for c in est.diagnostics}
    assert not checks["size_gate_treated"].passed and checks["size_gate_treated"].value == 60
    assert not checks["size_gate_control_ratio"].passed
    assert any(w.startswith("size_gate_treated") for w in est.warnings)
    # attrition: treated in strata without controls are dropped and reported
    assert est.n_treated_dropped == 60 - est.outcomes[0].n_treated
    kept = est.outcomes[0].n_treated / 60
    assert checks["common_support"].value == pytest.approx(kept)
    assert checks["common_support"].passed == (kept >= 0.95)


def test_maps_one_to_one_onto_the_result_contract(pooled):
    parts = pooled.estimate.to_result_parts()
    assert all(isinstance(o, OutcomeEstimate) for o in parts["outcomes"])
    assert all(isinstance(b, BalanceRow) for b in parts["balance"])
    assert all(isinstance(d, Diagnostic) for d in parts["diagnostics"])
    strata = parts["strata"]
    assert all(isinstance(s, StratumCounts) for s in strata)
    edges = [s.lo for s in strata] + [strata[-1].hi]
    assert np.all(np.isfinite(edges)) and np.all(np.diff(edges) > 0)
    assert sum(s.n_treated for s in strata) == int(pooled.table.count[:, 1].sum())
    assert parts["outcomes"][0].att == pooled.estimate.outcomes[0].att
