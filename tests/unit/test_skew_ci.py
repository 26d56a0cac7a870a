"""The exact study's skewness-corrected CI (shared/psm/skew.py) and the power sums it needs.

What could fail: the cumulants from power sums differ from the rows'; Hall's inverse is not the
inverse; the interval does not lean toward the long tail; on a skewed process it covers no
better than Wald; a node with a small ``min_cell`` gives away cells of three or four people
through Σy³ and Σy⁴; a DP release carries them.
"""

import numpy as np
import pytest
from scipy import stats

from shared.answer import HIGHER_MIN_CELL, suppress_small_cells
from shared.dp.sensitivity import RELEASE_KEYS
from shared.psm.cells import cell_variances, clamped_counts
from shared.psm.estimator import estimate_att
from shared.psm.skew import _cumulants, hall_inverse, skew_t_multipliers
from shared.psm.table import HIGHER, PsmTable, psm_table
from shared.study import Outcome

OUT = (Outcome(name="cost", cap=1.0),)


def _one_stratum_table(y_c, y_t):
    """One stratum: controls ``y_c``, treated ``y_t`` (on [0, 1]), one dummy covariate."""
    y = np.concatenate([y_c, y_t])[:, None]
    t = np.r_[np.zeros(y_c.size), np.ones(y_t.size)]
    z = np.full((y.shape[0], 1), 0.5)
    return psm_table(z=z, t=t, y=y, beta=np.zeros(2), edges=np.array([-np.inf, np.inf]))


def test_cumulants_from_power_sums_equal_the_rows():
    rng = np.random.default_rng(1)
    y = rng.lognormal(0, 1.2, 37) / 50
    s = [np.array([np.sum(y**p)]) for p in (1, 2, 3, 4)]
    k3, m4 = _cumulants(*s, np.array([float(y.size)]))
    assert k3[0] == pytest.approx(stats.kstat(y, 3), rel=1e-9)
    assert m4[0] == pytest.approx(stats.moment(y, 4), rel=1e-9)


def test_hall_inverse_inverts_the_monotone_cubic():
    for a, b in ((0.3, 0.1), (-0.25, -0.05), (0.0, 0.2)):
        for x in (-2.5, -1.96, 0.0, 1.96, 3.0):
            t = hall_inverse(x, a, b)
            assert t + a * t**2 + a**2 * t**3 / 3 + b == pytest.approx(x, abs=1e-12)
        assert hall_inverse(-1.96, a, b) < hall_inverse(1.96, a, b)


def test_one_sample_coefficients_are_johnsons():
    """Controls only matter (many treated): A = B = −γ/√n, so the cubic's a = −γ/(3√n) and
    b = −γ/(6√n), Johnson's (1978) correction of −ȳ."""
    rng = np.random.default_rng(2)
    y_c = np.clip(rng.lognormal(0, 1.0, 400) / 40, 0, 1)
    y_t = np.full(400_000, 0.01)  # n_T ≫ n_C: the treated's terms vanish to 1e-6
    tab = _one_stratum_table(y_c, y_t)
    n = clamped_counts(tab.count)
    used = np.array([True])
    var = cell_variances(tab.sum_y, tab.sumsq_y, n, np.ones((1, 2), bool))
    m = skew_t_multipliers(table=tab, n=n, used=used, w=np.ones(1), var=var, k=0, level=0.95)
    gamma = stats.kstat(y_c, 3) / np.var(y_c, ddof=1) ** 1.5
    assert m.a == pytest.approx(-gamma / np.sqrt(y_c.size), rel=2e-3)
    assert m.b == pytest.approx(-gamma / np.sqrt(y_c.size), rel=2e-3)
    # Satterthwaite with the sample variance's non-normal variance (m4 of a lognormal: far
    # fewer degrees of freedom than the 399 a normal sample of 400 would give)
    s2, k = np.var(y_c, ddof=1), y_c.size
    var_s2 = stats.moment(y_c, 4) / k - s2**2 * (k - 3) / (k * (k - 1))
    assert m.dof == pytest.approx(2 * s2**2 / var_s2, rel=1e-9)
    assert 10 < m.dof < 200


def test_interval_leans_toward_the_long_tail():
    """Right-skewed control costs, few controls: the estimate's error is −ȳ_C's, left-skewed, so
    the interval reaches further below the estimate than above and is wider than Wald's."""
    rng = np.random.default_rng(3)
    tab = _one_stratum_table(np.clip(rng.lognormal(0, 1.5, 30) / 60, 0, 1), rng.uniform(0, 0.05, 300))
    o = estimate_att(table=tab, outcomes=OUT, covariates=["x"]).outcome("cost")
    assert o.ci_method == "skew_t"
    below, above = o.att - o.ci[0], o.ci[1] - o.att
    assert below > 1.05 * above
    assert below + above > 2 * 1.959963984540054 * o.se


def test_covers_a_skewed_process_better_than_wald():
    """100 draws of a stratum of 25 lognormal controls facing 250 treated under a null effect
    (the truth is the treated's own Y(0) mean minus itself: err = ȳ_T(0) − ȳ_C)."""
    rng = np.random.default_rng(4)
    hits = {"wald": 0, "skew_t": 0}
    reps = 100
    for _ in range(reps):
        y_c = np.clip(rng.lognormal(0, 1.6, 25) / 80, 0, 1)
        y_t = np.clip(rng.lognormal(0, 1.6, 250) / 80, 0, 1)
        truth = 0.0  # Y(1) = Y(0): the sample ATT is 0
        tab = _one_stratum_table(y_c, y_t)
        o = estimate_att(table=tab, outcomes=OUT, covariates=["x"]).outcome("cost")
        hits["skew_t"] += o.ci[0] <= truth <= o.ci[1]
        wald = (o.att - 1.959963984540054 * o.se, o.att + 1.959963984540054 * o.se)
        hits["wald"] += wald[0] <= truth <= wald[1]
    assert hits["wald"] / reps < 0.9  # the process is one where Wald under-covers
    assert hits["skew_t"] >= hits["wald"] + 0.08 * reps


def test_a_table_without_higher_sums_keeps_wald():
    rng = np.random.default_rng(5)
    tab = _one_stratum_table(rng.uniform(0, 0.2, 30), rng.uniform(0, 0.2, 30))
    plain = PsmTable.from_arrays({k: v for k, v in tab.to_arrays().items() if k not in HIGHER})
    assert not plain.has_higher
    o = estimate_att(table=plain, outcomes=OUT, covariates=["x"]).outcome("cost")
    assert o.ci_method == "wald"
    assert o.ci == pytest.approx((o.att - 1.959963984540054 * o.se, o.att + 1.959963984540054 * o.se))
    # one site withholding them withholds the sum's: the merged table is plain too
    assert not (plain + tab).has_higher and not (tab + plain).has_higher


def _four_values_from_power_sums(p1, p2, p3, p4):
    """Newton's identities: the multiset of a cell of four from its first four power sums."""
    e1 = p1
    e2 = (e1 * p1 - p2) / 2
    e3 = (e2 * p1 - e1 * p2 + p3) / 3
    e4 = (e3 * p1 - e2 * p2 + e1 * p3 - p4) / 4
    return np.sort(np.roots([1, -e1, e2, -e3, e4]).real)


@pytest.mark.parametrize("min_cell", [2, 3, 4])
def test_a_node_below_the_floor_never_releases_a_cell_of_four_through_its_power_sums(min_cell):
    """Attack: a coordinator reads a four-person cell's Σy..Σy⁴ and solves for the four values.
    Against the unsuppressed answer (what a node at min_cell ≤ 4 would send without the floor)
    it recovers every value; the node's suppressed answer withholds Σy³ and Σy⁴."""
    y_c = np.array([0.013, 0.42, 0.077, 0.2])  # four controls' scaled costs
    tab = _one_stratum_table(y_c, np.full(20, 0.1)).to_arrays()
    s = [tab[k][0, 0, 0] for k in ("sum_y", "sumsq_y", "sum3_y", "sum4_y")]
    np.testing.assert_allclose(_four_values_from_power_sums(*s), np.sort(y_c), atol=1e-9)  # the attack
    sent = suppress_small_cells("psm_stats", tab, k=min_cell)
    assert not set(HIGHER) & set(sent)
    assert sent["count"][0, 0] == 4  # the cell itself is still released (min_cell ≤ 4)


def test_at_the_floor_and_above_they_are_released_with_small_cells_zeroed():
    tab = _one_stratum_table(np.array([0.1, 0.2, 0.3]), np.full(20, 0.1)).to_arrays()
    sent = suppress_small_cells("psm_stats", tab, k=HIGHER_MIN_CELL)
    assert set(HIGHER) <= set(sent)
    assert sent["sum3_y"][0, 0, 0] == 0 and sent["count"][0, 0] == 0  # three controls: suppressed
    assert sent["sum3_y"][0, 1, 0] == pytest.approx(20 * 0.1**3)


def test_no_dp_release_names_the_higher_power_sums():
    assert not any(set(HIGHER) & set(keys) for keys in RELEASE_KEYS.values())


@pytest.mark.parametrize("min_cell, method", [(3, "wald"), (HIGHER_MIN_CELL, "skew_t")])
def test_a_federation_with_a_site_below_the_floor_reports_wald(min_cell, method):
    """The study driver over in-process sites answering as nodes at ``min_cell`` (the node's
    suppression): below the floor no Σy³/Σy⁴ reaches the coordinator and the result says its
    CI is the Wald interval; at the floor it is the skewness-corrected one."""
    from psm_dgp import COVARIATES, OUTCOMES, make_study, partition

    from shared.answer import SiteArrays
    from shared.driver import run_study
    from shared.inprocess_sites import InProcessSites
    from shared.psm.reference import reference_spec
    from shared.psm.table import scale_outcomes

    st = make_study(n=3000, seed=7)
    parts = partition(st.t.size, 3, np.random.default_rng(7))
    spec = reference_spec(outcomes=OUTCOMES, covariates=COVARIATES, n_sites=3)
    lo, cap = [o.lo for o in OUTCOMES], [o.cap for o in OUTCOMES]
    sites = {
        s.name: SiteArrays(z=st.z[p], t=st.t[p], y=scale_outcomes(y=st.y[p], lo=lo, cap=cap)[0])
        for s, p in zip(spec.sites, parts)
    }
    run = run_study(spec, InProcessSites(sites, min_cell=min_cell))
    assert run.table is not None and run.table.has_higher == (method == "skew_t")
    assert run.estimate is not None and {o.ci_method for o in run.estimate.outcomes} == {method}
