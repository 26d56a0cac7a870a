"""Property tests: adding or removing one row — adversarial, at the public bounds — never moves a
release, in the form the node adds noise to (shared.dp.forms), by more than its stated L2
sensitivity (shared.dp.sensitivity)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.dp.forms import release_form
from shared.dp.sensitivity import (
    RELEASE_KEYS,
    count_sensitivity,
    cov_moments_sensitivity,
    ps_fit_sensitivity,
    psm_balance_sensitivity,
    psm_main_sensitivity,
    psm_sumsq_sensitivity,
)
from shared.psm.propensity import cov_moments, ps_contribution
from shared.psm.strata import score_grid, score_histogram
from shared.psm.table import psm_table

unit = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))  # bounds are favoured


@st.composite
def dataset_and_row(draw):
    d = draw(st.integers(1, 5))
    o = draw(st.integers(1, 3))
    n = draw(st.integers(0, 12))
    rows = draw(
        st.lists(
            st.tuples(
                st.lists(unit, min_size=d, max_size=d),
                st.sampled_from([0.0, 1.0]),
                st.lists(unit, min_size=o, max_size=o),
            ),
            min_size=n,
            max_size=n,
        )
    )
    extra = draw(
        st.tuples(
            st.lists(unit, min_size=d, max_size=d),
            st.sampled_from([0.0, 1.0]),
            st.lists(unit, min_size=o, max_size=o),
        )
    )
    beta = np.array(draw(st.lists(st.floats(-6.0, 6.0), min_size=d + 1, max_size=d + 1)))
    return d, o, rows, extra, beta


def _arrays(rows, d, o):
    z = np.array([r[0] for r in rows], dtype=float).reshape(-1, d)
    t = np.array([r[1] for r in rows], dtype=float)
    y = np.array([r[2] for r in rows], dtype=float).reshape(-1, o)
    return z, t, y


def _releases(rows, d, o, beta) -> dict[str, dict[str, np.ndarray]]:
    z, t, y = _arrays(rows, d, o)
    edges = np.array([-np.inf, beta[0] - 1.0, beta[0], beta[0] + 2.0, np.inf])
    grid = score_grid(beta=beta, n_bins=7)
    table = psm_table(z=z, t=t, y=y, beta=beta, edges=edges).to_arrays()
    exact = {
        "describe": cov_moments(z=z, t=t).to_arrays(),
        "cov_moments": cov_moments(z=z, t=t).to_arrays(),
        "ps_fit": ps_contribution(z=z, t=t, beta=beta).to_arrays(),
        "score_hist": {"count": score_histogram(z=z, t=t, beta=beta, grid=grid)},
        "psm_main": table,
        "psm_sumsq": table,
        "psm_balance": table,
    }
    return {name: release_form(name, arrays) for name, arrays in exact.items()}


def _l2_change(a: dict, b: dict, keys) -> float:
    return math.sqrt(sum(float(np.sum((np.asarray(a[k]) - np.asarray(b[k])) ** 2)) for k in keys))


def _bounds(d: int, o: int) -> dict[str, tuple[float, tuple[str, ...]]]:
    return {
        "describe": (count_sensitivity(), RELEASE_KEYS["describe"]),
        "cov_moments": (cov_moments_sensitivity(n_covariates=d), ("count", "sum_z", "sum_zz")),
        "ps_fit": (ps_fit_sensitivity(n_covariates=d), RELEASE_KEYS["ps_fit"]),
        "score_hist": (count_sensitivity(), RELEASE_KEYS["score_hist"]),
        "psm_main": (psm_main_sensitivity(n_outcomes=o), RELEASE_KEYS["psm_main"]),
        "psm_sumsq": (psm_sumsq_sensitivity(n_outcomes=o), RELEASE_KEYS["psm_sumsq"]),
        "psm_balance": (psm_balance_sensitivity(n_covariates=d), RELEASE_KEYS["psm_balance"]),
    }


@settings(max_examples=150, deadline=None)
@given(dataset_and_row())
def test_one_row_never_moves_a_release_beyond_its_sensitivity(case):
    d, o, rows, extra, beta = case
    without = _releases(rows, d, o, beta)
    with_row = _releases(rows + [extra], d, o, beta)
    for name, (delta, keys) in _bounds(d, o).items():
        change = _l2_change(without[name], with_row[name], keys)
        assert change <= delta * (1 + 1e-12) + 1e-12, (name, change, delta)


@pytest.mark.parametrize("d,o", [(1, 1), (3, 2), (16, 3)])
def test_bounds_are_attained_by_the_extreme_row(d, o):
    """The stated Δ is tight where it should be: an all-ones row moves the PSM releases and the
    counts by exactly Δ (so the property test above could fail if Δ were understated)."""
    base = []
    extreme = ([1.0] * d, 1.0, [1.0] * o)
    beta = np.zeros(d + 1)
    without, with_row = _releases(base, d, o, beta), _releases(base + [extreme], d, o, beta)
    for name in ("describe", "score_hist", "psm_main", "psm_sumsq", "psm_balance", "cov_moments"):
        delta, keys = _bounds(d, o)[name]
        assert _l2_change(without[name], with_row[name], keys) == pytest.approx(delta, rel=1e-12)
    # the propensity bound needs |t - p| = 1 and p(1 - p) = 1/4 at once, so it is not attained,
    # but a row at p = 1/2 comes within a factor sqrt(q/4 + q^2/16) / sqrt(q + q^2/16), with
    # q = 1 + d/4 the squared norm of the centred all-ones row [1, 1/2, ..., 1/2]
    delta, keys = _bounds(d, o)["ps_fit"]
    change = _l2_change(without["ps_fit"], with_row["ps_fit"], keys)
    q = 1 + d / 4
    assert change == pytest.approx(math.sqrt(q / 4 + q * q / 16), rel=1e-12)
    assert change < delta


def test_centring_shrinks_the_propensity_sensitivity_without_changing_the_fit():
    """The release form is the same information: mapped back, it is the uncentred answer, and
    the uncentred answer of the all-ones row would move the release 2.3x further (d = 16)."""
    from shared.dp.forms import ps_from_release

    rng = np.random.default_rng(3)
    z, t = rng.uniform(size=(50, 16)), (rng.uniform(size=50) < 0.4) * 1.0
    exact = ps_contribution(z=z, t=t, beta=rng.normal(size=17)).to_arrays()
    formed = release_form("ps_fit", exact)
    g, H = ps_from_release(g=formed["g"], H=formed["H"])
    assert np.allclose(g, exact["g"]) and np.allclose(H, exact["H"])
    assert math.sqrt(17 + 17**2 / 16) / ps_fit_sensitivity(n_covariates=16) == pytest.approx(2.31, abs=0.01)


def test_centred_balance_sums_map_back_and_only_named_arrays_leave():
    from shared.dp.forms import balance_from_release, release_arrays

    rng = np.random.default_rng(4)
    z, t, y = rng.uniform(size=(80, 3)), (rng.uniform(size=80) < 0.5) * 1.0, rng.uniform(size=(80, 2))
    table = psm_table(z=z, t=t, y=y, beta=np.zeros(4), edges=np.array([-np.inf, 0.0, np.inf]))
    released = release_arrays("psm_balance", table.to_arrays())
    assert set(released) == {"sum_z", "sumsq_z"}  # counts and outcome sums are withheld
    assert released["sumsq_z"].shape == (2, 3)  # one total per arm, not per stratum
    sum_z, arm_sumsq = balance_from_release(count=table.count, **released)
    assert np.allclose(sum_z, table.sum_z) and np.allclose(arm_sumsq, table.sumsq_z.sum(axis=0))


def test_sensitivity_rejects_bad_dimensions():
    with pytest.raises(ValueError):
        psm_main_sensitivity(n_outcomes=0)
    with pytest.raises(ValueError):
        ps_fit_sensitivity(n_covariates=1.5)


def test_centred_outcome_sums_map_back_and_halve_the_sensitivity():
    """The node releases Σ(y − ½) and Σ(y − ½)²; mapped back with the counts they are the
    table's Σy and Σy², and an all-ones or all-zeros row moves them by ½ and ¼ per outcome."""
    from shared.dp.forms import main_from_release, release_arrays

    rng = np.random.default_rng(5)
    z, t, y = rng.uniform(size=(60, 2)), (rng.uniform(size=60) < 0.5) * 1.0, rng.uniform(size=(60, 3))
    table = psm_table(z=z, t=t, y=y, beta=np.zeros(3), edges=np.array([-np.inf, 0.0, np.inf]))
    arrays = table.to_arrays()
    main, sumsq = release_arrays("psm_main", arrays), release_arrays("psm_sumsq", arrays)
    sum_y, sumsq_y = main_from_release(count=main["count"], sum_y=main["sum_y"], sumsq_y=sumsq["sumsq_y"])
    assert np.allclose(sum_y, table.sum_y) and np.allclose(sumsq_y, table.sumsq_y)
    assert psm_main_sensitivity(n_outcomes=3) == pytest.approx(math.sqrt(1 + 3 / 4))
    assert psm_sumsq_sensitivity(n_outcomes=3) == pytest.approx(math.sqrt(3) / 4)
