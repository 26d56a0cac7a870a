"""The stepwise propensity basis (shared/psm/selection.py): its score statistics against a
brute-force recomputation, and the selection on data whose uptake has one known square."""

import numpy as np
import pytest

from shared.errors import SpecError
from shared.psm.propensity import ps_contribution
from shared.psm.selection import (
    as_terms,
    candidate_hinges,
    candidate_pairs,
    rounds_over,
    score_statistics,
    stepwise_basis,
)
from shared.study import Covariate
from shared.terms import DesignTerms, hinge


def _design(z, pairs):
    return np.column_stack([z] + [z[:, i] * z[:, j] for i, j in pairs]) if pairs else z


def _rounds(x: np.ndarray, t: np.ndarray):
    """One site's rounds over the full design ``x`` (base columns, then candidates)."""
    return rounds_over([x], [t])


def test_candidates_are_continuous_squares_then_every_product():
    pairs = candidate_pairs(["continuous", "binary", "continuous"])
    assert pairs == [(0, 0), (2, 2), (0, 1), (0, 2), (1, 2)]


def test_score_statistic_equals_the_brute_force_inverse_of_each_augmented_hessian():
    rng = np.random.default_rng(3)
    n, d = 3000, 4
    z = rng.uniform(size=(n, d))
    eta = -1 + 2 * z[:, 0] - z[:, 1] + 3 * z[:, 2] ** 2
    t = (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(float)
    x = _design(z, candidate_pairs(["continuous"] * d))
    active = np.zeros(x.shape[1] + 1, dtype=bool)
    active[: 1 + d] = True
    beta = np.zeros(active.size)
    for _ in range(30):  # the MLE over the active columns
        s = ps_contribution(z=x, t=t, beta=beta)
        A = np.flatnonzero(active)
        beta[A] += np.linalg.solve(s.H[np.ix_(A, A)], s.g[A])
    total = ps_contribution(z=x, t=t, beta=beta)
    got = score_statistics(total, active, ridge=0.0)
    assert np.all(np.isnan(got[active]))
    for c in np.flatnonzero(~active):
        idx = np.append(np.flatnonzero(active), c)
        inv = np.linalg.inv(total.H[np.ix_(idx, idx)])
        want = total.g[c] ** 2 * inv[-1, -1]  # g_A = 0 at the MLE: the efficient score's form
        assert got[c] == pytest.approx(want, rel=1e-8), c


def test_stepwise_enters_the_generating_square_first_and_stops():
    rng = np.random.default_rng(11)
    n, d = 20000, 3
    z = rng.uniform(size=(n, d))
    eta = -1.0 + z[:, 0] - z[:, 1] + 4.0 * (z[:, 2] - 0.5) ** 2
    t = (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(float)
    pairs = candidate_pairs(["continuous"] * d)
    stats_at = _rounds(_design(z, pairs), t)
    step = stepwise_basis(stats_at, n_base=d, n_candidates=len(pairs))
    assert step.chosen and pairs[step.chosen[0]] == (2, 2)
    assert step.statistics[0] > 100  # the true term is no borderline entry
    assert len(step.chosen) < len(pairs)  # the threshold stopped it
    none = stepwise_basis(stats_at, n_base=d, n_candidates=len(pairs), threshold=np.inf)
    assert none.chosen == () and none.beta.size == 1 + d


def test_hinges_bend_each_continuous_covariate_at_every_tenth_of_its_range():
    assert candidate_hinges(["continuous", "binary"]) == [(0, k / 10) for k in range(1, 10)]
    z = np.array([0.0, 0.3, 0.65, 1.0])
    assert hinge(z, 0.3).tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0])


def test_stepwise_follows_a_step_with_hinges_where_squares_leave_it():
    """Uptake steps up by 1.5 at 0.55 of one covariate's range: no square or product is a step,
    a linear spline with knots at tenths of the range comes close. The rule enters hinges of
    that covariate only, and the fitted log-odds along it are flat on both sides of the step
    and 1.5 apart; from squares alone it takes the square, which is no step."""
    rng = np.random.default_rng(5)
    n, d = 20000, 3
    z = rng.uniform(size=(n, d))
    eta = -1.5 + z[:, 0] - z[:, 1] + 1.5 * (z[:, 2] >= 0.55)
    t = (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(float)
    pairs, hinges = candidate_pairs(["continuous"] * d), candidate_hinges(["continuous"] * d)
    x = np.column_stack([_design(z, pairs)] + [hinge(z[:, i], k) for i, k in hinges])
    step = stepwise_basis(_rounds(x, t), n_base=d, n_candidates=len(pairs) + len(hinges))
    terms = [(pairs + hinges)[c] for c in sorted(step.chosen)]  # β holds them in candidate order
    assert terms and all(i == 2 and isinstance(k, float) for i, k in terms), terms
    grid = np.linspace(0, 1, 21)
    fitted = step.beta[3] * grid + sum(b * hinge(grid, k) for b, (_, k) in zip(step.beta[1 + d :], terms))
    below, above = fitted[grid <= 0.5], fitted[grid >= 0.6]
    assert np.ptp(below) < 0.4 and np.ptp(above) < 0.4  # flat on either side
    assert above.mean() - below.mean() == pytest.approx(1.5, abs=0.25)
    only_squares = stepwise_basis(
        _rounds(_design(z, pairs), t), n_base=d, n_candidates=len(pairs), max_terms=1
    )
    assert pairs[only_squares.chosen[0]] == (2, 2)  # without hinges a square stands in for it


def test_chosen_terms_declare_as_a_spec_and_expand_to_the_candidates_columns():
    """A chosen basis is written as ``[terms]`` (products as ``a*b``, a square as ``a*a``,
    hinges at their value in the covariate's units), so a study runs it through the nodes'
    own :func:`shared.terms.expand`: those columns equal the candidates' in candidate order."""
    from shared.features import FEATURES
    from shared.study import DEFAULT_OUTCOMES, StudySpec
    from shared.terms import expand

    kinds = [f.kind for f in FEATURES]
    candidates = candidate_pairs(kinds) + candidate_hinges(kinds)
    scaled = tuple(Covariate(name=f.name, lo=0.0, hi=1.0, kind=f.kind) for f in FEATURES)
    z = np.random.default_rng(4).uniform(size=(300, len(FEATURES)))
    want = np.column_stack(
        [hinge(z[:, i], j) if isinstance(j, float) else z[:, i] * z[:, j] for i, j in candidates]
    )
    got = expand(z, scaled, as_terms(candidates, scaled))[:, len(FEATURES) :]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    chosen = [(0, 0), (12, 11), (0, 0.5), (0, 0.6)]  # age², BMI·smoker, age bent at 54 and 61.2
    units = tuple(Covariate(name=f.name, lo=f.lo, hi=f.hi, kind=f.kind) for f in FEATURES)
    terms = as_terms(chosen, units)
    assert terms.interactions == ("age*age", "bmi*smoker") and terms.hinges == ("age>54", "age>61.2")
    spec = StudySpec.from_dict(
        {
            "study": {"name": "chosen"},
            "outcomes": [o.model_dump() for o in DEFAULT_OUTCOMES],
            "terms": terms.model_dump(),
        }
    )
    assert [c.name for c in spec.design_covariates][16:] == ["age^2", "bmi*smoker", "age>54", "age>61.2"]
    with pytest.raises(ValueError, match="declared twice"):  # squares = "continuous" has age² already
        DesignTerms(squares="continuous", interactions=("age*age",))
    with pytest.raises(SpecError, match="is binary"):
        StudySpec.from_dict({**spec.model_dump(), "terms": {"interactions": ["smoker*smoker"]}})


@pytest.mark.parametrize("estimator", ["stratified", "dr"])
@pytest.mark.parametrize("sites", [False, True], ids=["covariates", "site-effects"])
def test_a_selecting_study_chooses_over_the_nodes_what_the_rule_chooses_on_pooled_rows(estimator, sites):
    """``[terms] select = "stepwise"`` in the study driver: three nodes answer the score rounds
    over every candidate and the refits over the chosen ones; the rule applied to the pooled,
    fully expanded rows chooses the same terms, and the study on that basis declared outright
    gives the same estimate to 1e-9 (federated = pooled). With site effects the nodes put the
    chosen terms before their site indicators, the rule after them: the driver maps between."""
    from test_psm_federated import _numbers
    from test_psm_terms import BINARY, COVS, NAMES, _cohort

    from shared.psm.propensity import cov_moments, initial_beta
    from shared.psm.reference import estimate_att_federated, estimate_att_pooled
    from shared.study import DEFAULT_OUTCOMES
    from shared.terms import candidate_terms, candidates, expand

    parts = [
        _cohort(seed, 1500, "threshold_uptake", profile)
        for seed, profile in zip((21, 22, 23), ("insurer_mid_1", "insurer_large", "company_logistics"))
    ]
    # tol 1e-12: the study warm-starts its last fit from the rule's β, the pooled run starts
    # afresh; at the default 1e-10 the two stop ~1e-9 apart on the same optimum
    options = dict(outcomes=DEFAULT_OUTCOMES, estimator=estimator, tol=1e-12)
    fed = estimate_att_federated(
        nodes=[(z, t, y) for z, t, y, _ in parts],
        terms=DesignTerms(select="stepwise"),
        covariates=NAMES,
        binary=BINARY,
        site_effects=sites,
        **options,
    )
    z, t, y = (np.concatenate([p[i] for p in parts]) for i in range(3))
    site_names = ["site=site-1", "site=site-2"] if sites else []
    which = np.repeat(np.arange(3), [p[0].shape[0] for p in parts])
    base = np.column_stack([z] + [(which == k).astype(float) for k in (1, 2)][: len(site_names)])
    cands = candidates(COVS)
    full = np.hstack([base, expand(z, COVS, candidate_terms(COVS))[:, len(NAMES) :]])
    start = initial_beta(moments=cov_moments(z=base, t=t))
    step = stepwise_basis(
        _rounds(full, t), n_base=base.shape[1], n_candidates=len(cands), tol=1e-12, start=start
    )
    want = as_terms([cands[i] for i in sorted(step.chosen)], COVS)
    assert fed.chosen == want and len(step.chosen) >= 2
    assert "age>0.5" in want.hinges  # the knot at 54, below the process's threshold at 60
    pooled = estimate_att_pooled(
        z=base, t=t, y=y, terms=want, covariates=NAMES + site_names, binary=BINARY + site_names, **options
    )
    # the same columns, the sites last on the nodes and before the terms in the pooled design
    assert sorted(b.covariate for b in fed.estimate.balance) == sorted(
        b.covariate for b in pooled.estimate.balance
    )
    by_name = {b.covariate: b for b in pooled.estimate.balance}
    # atol: the strata edges follow β, which this basis (|β| up to ~65, collinear hinges)
    # determines to ~1e-11 relative; from the rule's warm start and from afresh the two fits
    # stop 7e-10 apart, and the edges ~1e-9. Outcomes and balance agree to 1e-9.
    pairs = [
        (fed.estimate.outcomes, pooled.estimate.outcomes, 1e-9),
        (fed.estimate.strata, pooled.estimate.strata, 1e-8),
        (fed.estimate.balance, tuple(by_name[b.covariate] for b in fed.estimate.balance), 1e-9),
    ]
    for a, b, atol in pairs:
        x, w = np.array(_numbers(a)), np.array(_numbers(b))
        assert x.shape == w.shape and np.isfinite(x).all() == np.isfinite(w).all()
        np.testing.assert_allclose(x[np.isfinite(x)], w[np.isfinite(w)], rtol=1e-9, atol=atol)
