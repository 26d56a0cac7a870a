"""The named data-generating processes (shared/synth/dgp.py): the baseline unchanged, the others
changing what they say and nothing else, and every truth computed on the generated sample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shared.errors import SpecError
from shared.features import FEATURE_NAMES, FEATURES, scale
from shared.psm.propensity import fit_propensity
from shared.study import DEFAULT_OUTCOMES
from shared.synth import DGP_NAMES, generate_cohort, generate_federation
from shared.synth.dgp import CLAIMS_CAP, DGPS, effect_modifier
from shared.synth.outcomes import OUTCOMES
from shared.synth.uptake import PROPENSITY_RANGE

SEED = 5
FEATURE_COLS = list(FEATURE_NAMES)


def _pooled(fed, table: str) -> pd.DataFrame:
    return pd.concat([getattr(s, table) for s in fed.sites], ignore_index=True)


@pytest.fixture(scope="module")
def feds():
    """Three sites at scale 0.3 (~30k people) under every process, same seed."""
    return {d: generate_federation(seed=SEED, sites=3, scale=0.3, dgp=d) for d in DGP_NAMES}


def test_the_baseline_is_the_default_and_the_demo_truth_is_unchanged():
    """The demo (seed 7, all sites, scale 1) has always had these true ATTs; the processes must
    leave the default generator's output alone, bit for bit."""
    fed = generate_federation(seed=7)
    att = fed.truth["pooled"]["att_capped"]
    assert att["claims_cost"] == pytest.approx(-615.3370966317649, abs=1e-9)
    assert att["cv_event"] == pytest.approx(-0.016967326857575377, abs=1e-15)
    assert att["absence_days"] == pytest.approx(-1.8004289138387788, abs=1e-12)
    assert fed.truth["pooled"]["n_treated"] == 15854
    assert "dgp" not in fed.truth
    a, ta = generate_cohort(n=2000, seed=SEED)
    b, tb = generate_cohort(n=2000, seed=SEED, dgp="baseline")
    pd.testing.assert_frame_equal(a, b)
    assert ta == tb


def test_every_process_draws_the_same_people(feds):
    """Common random numbers: only uptake or outcomes differ between processes, never features."""
    base = _pooled(feds["baseline"], "cohort")[FEATURE_COLS]
    for name, fed in feds.items():
        pd.testing.assert_frame_equal(_pooled(fed, "cohort")[FEATURE_COLS], base, obj=name)
        assert fed.truth.get("dgp", "baseline") == name


@pytest.mark.parametrize("name", DGP_NAMES)
def test_truth_is_the_capped_sample_att_of_the_generated_people(feds, name):
    pot = _pooled(feds[name], "potential")
    t = pot["treated"].to_numpy(bool)
    for o in OUTCOMES:
        y0 = np.clip(pot[f"y0_{o.name}"].to_numpy(), o.lo, o.cap)
        y1 = np.clip(pot[f"y1_{o.name}"].to_numpy(), o.lo, o.cap)
        expected = float(np.mean(y1[t] - y0[t]))
        assert feds[name].truth["pooled"]["att_capped"][o.name] == pytest.approx(
            expected, rel=1e-12, abs=1e-12
        )


def test_the_null_process_has_no_effect_at_all_yet_stays_confounded(feds):
    fed = feds["null"]
    pot = _pooled(fed, "potential")
    for o in OUTCOMES:
        np.testing.assert_array_equal(pot[f"y0_{o.name}"], pot[f"y1_{o.name}"])
        assert fed.truth["pooled"]["att"][o.name] == 0.0
        assert fed.truth["pooled"]["att_capped"][o.name] == 0.0
    # the treated are sicker: a naive comparison would report a large claims increase
    assert fed.truth["pooled"]["naive_difference"]["claims_cost"] > 500


def test_heterogeneous_effects_change_sign_and_separate_att_from_ate(feds):
    cohort = _pooled(feds["heterogeneous"], "cohort")
    m = effect_modifier(DGPS["heterogeneous"], {k: cohort[k].to_numpy(float) for k in FEATURE_COLS})
    assert m is not None and m.min() < 0 < 1.5 < m.max()  # harm for some, more than double for others

    def gap(name: str) -> float:
        pot = _pooled(feds[name], "potential")
        y0 = np.clip(pot["y0_claims_cost"], 0, 100_000)
        y1 = np.clip(pot["y1_claims_cost"], 0, 100_000)
        return float(feds[name].truth["pooled"]["att_capped"]["claims_cost"] - np.mean(y1 - y0))

    # the baseline's effect already grows with risk; heterogeneity widens the ATT–ATE gap
    assert abs(gap("heterogeneous")) > 1.3 * abs(gap("baseline"))
    pot = _pooled(feds["heterogeneous"], "potential")
    assert (pot["y1_absence_days"] > pot["y0_absence_days"]).sum() > 0  # someone is harmed


def test_heavy_tail_keeps_the_mean_but_fattens_the_tail_under_the_cap(feds):
    assert CLAIMS_CAP == next(o.cap for o in DEFAULT_OUTCOMES if o.name == "claims_cost")
    base = _pooled(feds["baseline"], "potential")["y0_claims_cost"]
    heavy = _pooled(feds["heavy_tail"], "potential")["y0_claims_cost"]
    assert heavy.max() <= CLAIMS_CAP
    assert (base >= CLAIMS_CAP).sum() == 0 and (heavy >= CLAIMS_CAP).mean() > 1e-3  # mass at the cap
    assert (heavy > 50_000).mean() > 3 * (base > 50_000).mean() > 0
    assert heavy.std() > 1.3 * base.std()
    assert heavy.mean() == pytest.approx(base.mean(), rel=0.25)  # clipping takes a little off


def test_confounding_strength_orders_the_naive_bias(feds):
    def naive_bias(name: str) -> float:
        t = feds[name].truth["pooled"]
        return t["naive_difference"]["claims_cost"] - t["att_capped"]["claims_cost"]

    assert 0 < naive_bias("weak_confounding") < 0.6 * naive_bias("baseline")
    assert naive_bias("strong_confounding") > 1.1 * naive_bias("baseline")
    pi = _pooled(feds["strong_confounding"], "potential")["propensity"]
    assert pi.max() == PROPENSITY_RANGE[1]  # thin overlap: some people at the clip


def _logit(p):
    return np.log(p / (1 - p))


def test_misspecified_uptake_is_outside_the_logistic_linear_family(feds):
    """The true logit (where not clipped) minus linear terms in the 16 features and the
    department dummies: zero for the baseline, a large residual for the misspecified process;
    and the logistic-linear fit of the study misses the true propensity twice as far."""
    residual, fit_error = {}, {}
    for name in ("baseline", "misspecified"):
        site = feds[name].sites[0]  # the large insurer: one site logit, four regions
        pi = site.potential["propensity"].to_numpy()
        inside = (pi > PROPENSITY_RANGE[0]) & (pi < PROPENSITY_RANGE[1])
        dept = pd.get_dummies(site.cohort["department"]).to_numpy(float)
        x = np.column_stack([dept, site.cohort[FEATURE_COLS].to_numpy(float)])[inside]
        coef, *_ = np.linalg.lstsq(x, _logit(pi[inside]), rcond=None)
        residual[name] = float(np.std(_logit(pi[inside]) - x @ coef))
        z = scale(site.cohort[FEATURE_COLS].to_numpy(float), FEATURES)
        fit = fit_propensity(z=z, t=site.cohort["treated"].to_numpy(float))
        fitted = np.hstack([np.ones((len(z), 1)), z]) @ fit.beta
        fit_error[name] = float(np.sqrt(np.mean((fitted - _logit(pi)) ** 2)))
    assert residual["baseline"] < 1e-9
    assert residual["misspecified"] > 0.3
    assert fit_error["misspecified"] > 1.5 * fit_error["baseline"]


def test_unknown_process_is_a_spec_error():
    with pytest.raises(SpecError, match="unknown data-generating process"):
        generate_cohort(n=50, seed=1, dgp="nonsense")
    with pytest.raises(SpecError):
        generate_federation(seed=1, sites=1, scale=0.01, dgp="nonsense")
