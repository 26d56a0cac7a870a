"""Risk model: torch ↔ numpy parameter exchange, numpy forward pass, tiers, FedAvg."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from node.risk.model import build_model, from_arrays, initial_arrays, to_arrays
from shared.errors import SpecError
from shared.features import FEATURES, scale
from shared.risk.arch import (
    RiskArch,
    check_arrays,
    fold_inputs,
    forward_logit,
    model_input,
    predict_proba,
    sigmoid,
)
from shared.risk.fedavg import weighted_average
from shared.risk.tiers import DEFAULT_CUTOFFS, TIERS, assign_tiers, check_cutoffs, tier_index

ARCHS = [RiskArch(kind="logistic"), RiskArch(kind="mlp", hidden=8)]


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.kind)
def test_arrays_round_trip_and_match_declared_shapes(arch):
    rng = np.random.default_rng(1)
    arrays = [rng.normal(size=s) for s in arch.shapes()]
    model = from_arrays(build_model(arch, seed=0), arrays, arch=arch)
    back = to_arrays(model)
    assert [a.shape for a in back] == arch.shapes()
    for a, b in zip(arrays, back):
        np.testing.assert_allclose(a, b, rtol=1e-6)  # float32 inside torch


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.kind)
def test_numpy_forward_matches_torch(arch):
    rng = np.random.default_rng(2)
    arrays = [rng.normal(size=s) for s in arch.shapes()]
    model = from_arrays(build_model(arch), arrays, arch=arch)
    z = rng.uniform(size=(500, 16))
    with torch.no_grad():
        u = torch.as_tensor(model_input(z), dtype=torch.float32)
        p_torch = torch.sigmoid(model(u)).numpy()
    arrays32 = [a.astype(np.float32).astype(np.float64) for a in arrays]
    p_np = predict_proba(arch=arch, arrays=arrays32, z=z)
    np.testing.assert_allclose(p_np, p_torch, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.kind)
def test_folded_weights_on_raw_features_equal_the_scaled_forward(arch):
    rng = np.random.default_rng(3)
    arrays = [rng.normal(size=s) for s in arch.shapes()]
    lo = np.array([f.lo for f in FEATURES])
    hi = np.array([f.hi for f in FEATURES])
    x = lo + rng.uniform(size=(300, 16)) * (hi - lo)
    binary = [f.kind == "binary" for f in FEATURES]
    x[:, binary] = np.round(x[:, binary])
    raw = forward_logit(arch=arch, arrays=fold_inputs(arch=arch, arrays=arrays), inputs=x)
    scaled = forward_logit(arch=arch, arrays=arrays, inputs=model_input(scale(x, FEATURES)))
    np.testing.assert_allclose(raw, scaled, rtol=1e-10, atol=1e-10)


def test_logistic_starts_at_zero_and_mlp_init_is_seeded():
    assert all(np.all(a == 0) for a in initial_arrays(RiskArch()))
    mlp = RiskArch(kind="mlp", hidden=4)
    a, b = initial_arrays(mlp, seed=3), initial_arrays(mlp, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], initial_arrays(mlp, seed=4)[0])


def test_wrong_arrays_are_refused():
    arch = RiskArch()
    with pytest.raises(SpecError, match="needs 2 arrays"):
        check_arrays(arch=arch, arrays=[np.zeros((1, 16))])
    with pytest.raises(SpecError, match="shape"):
        check_arrays(arch=arch, arrays=[np.zeros((1, 15)), np.zeros(1)])
    with pytest.raises(SpecError, match="NaN"):
        check_arrays(arch=arch, arrays=[np.full((1, 16), np.nan), np.zeros(1)])
    with pytest.raises(SpecError):
        RiskArch(kind="forest")  # type: ignore[arg-type]


def test_sigmoid_is_stable_at_extremes():
    s = np.array([-1e4, -30.0, 0.0, 30.0, 1e4])
    p = sigmoid(s)
    assert np.all(np.isfinite(p)) and p[0] == 0.0 and p[-1] == 1.0 and p[2] == 0.5
    np.testing.assert_allclose(p[1:4], 1 / (1 + np.exp(-s[1:4])), rtol=1e-12)


def test_tiers_default_cutoffs_with_boundaries_in_upper_tier():
    p = [0.0, 0.0499, 0.05, 0.0999, 0.10, 0.1999, 0.20, 1.0]
    assert assign_tiers(p).tolist() == [
        "low",
        "low",
        "medium",
        "medium",
        "high",
        "high",
        "very_high",
        "very_high",
    ]
    assert DEFAULT_CUTOFFS == (0.05, 0.10, 0.20)


@given(
    st.lists(st.floats(0, 1), min_size=1, max_size=50),
    st.lists(st.floats(0.01, 0.99), min_size=3, max_size=3, unique=True).map(sorted),
)
def test_tiers_are_monotone_in_probability_for_any_cutoffs(p, cut):
    if not cut[0] < cut[1] < cut[2]:
        return
    idx = tier_index(p, cutoffs=cut)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(idx[order]) >= 0)
    expected = [sum(v >= c for c in cut) for v in p]
    assert idx.tolist() == expected
    assert set(assign_tiers(p, cutoffs=cut)) <= set(TIERS)


@pytest.mark.parametrize("bad", [(0.1, 0.05, 0.2), (0.05, 0.1), (0.0, 0.1, 0.2), (0.1, 0.2, 1.0)])
def test_bad_cutoffs_are_refused(bad):
    with pytest.raises(SpecError, match="cut-offs"):
        check_cutoffs(bad)


@settings(max_examples=50)
@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_fedavg_matches_np_average(k, seed):
    rng = np.random.default_rng(seed)
    shapes = RiskArch(kind="mlp", hidden=3).shapes()
    lists = [[rng.normal(size=s) for s in shapes] for _ in range(k)]
    w = rng.integers(1, 1000, size=k)
    avg = weighted_average(arrays_list=lists, weights=w)
    for i in range(len(shapes)):
        np.testing.assert_allclose(
            avg[i], np.average([arrs[i] for arrs in lists], axis=0, weights=w), rtol=1e-12, atol=1e-12
        )


def test_fedavg_refuses_bad_input():
    a = [np.zeros((1, 16)), np.zeros(1)]
    with pytest.raises(SpecError):
        weighted_average(arrays_list=[], weights=[])
    with pytest.raises(SpecError, match="weights"):
        weighted_average(arrays_list=[a, a], weights=[0, 0])
    with pytest.raises(SpecError, match="shapes"):
        weighted_average(arrays_list=[a, [np.zeros((1, 15)), np.zeros(1)]], weights=[1, 1])
