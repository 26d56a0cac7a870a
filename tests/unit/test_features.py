import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import CovariateBoundsError, DataError
from shared.features import FEATURE_NAMES, FEATURES, check_bounds, scale, unscale


def test_sixteen_features_with_public_bounds():
    assert len(FEATURES) == 16 and len(set(FEATURE_NAMES)) == 16
    assert all(f.hi > f.lo for f in FEATURES)
    assert {f.name for f in FEATURES if f.kind == "binary"} == {
        "sex",
        "bp_treated",
        "diabetes",
        "smoker",
        "family_history",
    }


def _rows_within_bounds(n):
    cols = [
        st.integers(0, 1).map(float) if f.kind == "binary" else st.floats(f.lo, f.hi, allow_nan=False)
        for f in FEATURES
    ]
    return st.lists(st.tuples(*cols), min_size=1, max_size=n).map(np.array)


@given(_rows_within_bounds(20))
def test_scaling_round_trips_and_lands_in_unit_interval(x):
    z = scale(x, FEATURES)
    assert z.min() >= 0.0 and z.max() <= 1.0
    np.testing.assert_allclose(unscale(z, FEATURES), x, rtol=1e-12, atol=1e-9)


def test_bounds_are_inclusive():
    lo = np.array([[f.lo for f in FEATURES]])
    hi = np.array([[f.hi for f in FEATURES]])
    assert scale(lo, FEATURES).max() == 0.0
    assert scale(hi, FEATURES).min() == 1.0


@pytest.mark.parametrize("name,value", [("age", 91), ("sbp", 79.9), ("hdl", 0.0), ("smoker", 0.5)])
def test_out_of_bounds_names_row_and_field(name, value):
    x = np.array([[f.lo for f in FEATURES]] * 3)
    x[2, FEATURE_NAMES.index(name)] = value
    with pytest.raises(CovariateBoundsError) as e:
        scale(x, FEATURES)
    assert e.value.row == 2 and e.value.field == name
    assert name in str(e.value) and "row 2" in str(e.value)


def test_nan_is_an_error_not_a_silent_value():
    x = np.array([[f.lo for f in FEATURES]])
    x[0, 3] = np.nan
    with pytest.raises(DataError, match="dbp"):
        check_bounds(x, FEATURES)
