"""Derived covariate terms (shared/terms.py): computed on the node, federated = pooled, old specs
unchanged, the node's policy in charge, and the bias they exist for removed."""

from __future__ import annotations

import numpy as np
import pytest
from test_psm_federated import _numbers

from shared.errors import PolicyRefused, SpecError
from shared.features import FEATURE_NAMES, FEATURES, scale
from shared.protocol import Describe, StudyQuery
from shared.psm.reference import estimate_att_federated, estimate_att_pooled
from shared.study import DEFAULT_OUTCOMES, Covariate, StudySpec
from shared.synth import generate_cohort
from shared.terms import DesignTerms, derived_covariates, expand, hinge_term

SQUARES = DesignTerms(squares="continuous", interactions=("bmi*smoker",))
COVS = tuple(Covariate(name=f.name, lo=0.0, hi=1.0, kind=f.kind) for f in FEATURES)
NAMES = list(FEATURE_NAMES)
BINARY = [f.name for f in FEATURES if f.kind == "binary"]


def _spec(**extra) -> StudySpec:
    return StudySpec.from_dict(
        {
            "study": {"name": "terms"},
            "outcomes": [o.model_dump() for o in DEFAULT_OUTCOMES],
            "sites": [{"name": "a"}, {"name": "b"}],
            **extra,
        }
    )


def _cohort(seed: int, n: int, dgp: str, profile: str = "insurer_mid_1"):
    cohort, truth = generate_cohort(n=n, seed=seed, profile=profile, dgp=dgp)
    z = scale(cohort[NAMES].to_numpy(dtype=float), FEATURES)
    y = cohort[[o.name for o in DEFAULT_OUTCOMES]].to_numpy(dtype=float)
    return z, cohort["treated"].to_numpy(dtype=float), y, truth["att_capped"]


def test_terms_are_products_of_the_scaled_columns_and_stay_in_the_unit_box():
    z = np.random.default_rng(1).uniform(size=(50, len(COVS)))
    out = expand(z, COVS, SQUARES)
    names = [c.name for c in derived_covariates(COVS, SQUARES)]
    cont = [i for i, c in enumerate(COVS) if c.kind == "continuous"]
    assert names == [f"{COVS[i].name}^2" for i in cont] + ["bmi*smoker"]
    assert out.shape == (50, len(COVS) + len(cont) + 1)
    np.testing.assert_array_equal(out[:, : len(COVS)], z)
    np.testing.assert_array_equal(out[:, len(COVS)], z[:, cont[0]] ** 2)
    np.testing.assert_array_equal(out[:, -1], z[:, NAMES.index("bmi")] * z[:, NAMES.index("smoker")])
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert expand(z, COVS, DesignTerms()) is z  # no terms: the very same matrix


def test_a_spec_without_terms_hashes_as_before_and_one_with_terms_does_not():
    plain = _spec()
    assert "terms" not in plain.model_dump() and plain.design_covariates == plain.covariates
    assert _spec(terms={}).spec_hash() == plain.spec_hash()
    with_terms = _spec(terms={"squares": "continuous"})
    assert with_terms.spec_hash() != plain.spec_hash()
    assert len(with_terms.design_covariates) == 16 + 11
    # the report's method section names them; a spec without them reads as before
    from coordinator.report.method import _terms

    assert "squares of the 11 continuous" in _terms(with_terms.model_dump(mode="json"))
    assert _terms(plain.model_dump(mode="json")) == ""
    # the grant signs the terms only when there are some: old grants keep their bytes
    assert "design_terms" not in StudyQuery.study_grant(plain, "g" * 16).terms
    assert StudyQuery.study_grant(with_terms, "g" * 16).terms["design_terms"]["squares"] == "continuous"
    with pytest.raises(SpecError, match="interactions\\[0\\] names 'bogus'"):
        _spec(terms={"interactions": ["bmi*bogus"]})
    with pytest.raises(SpecError, match="declared twice"):
        _spec(terms={"interactions": ["bmi*smoker", "smoker * bmi"]})


def test_the_node_policy_decides_whether_it_computes_terms():
    from node.policy import NodePolicy

    query = StudyQuery.for_spec(
        _spec(terms={"squares": "continuous"}, privacy={"enabled": False}), (Describe(),)
    )
    NodePolicy(allow_exact=True).check(query, None)
    with pytest.raises(PolicyRefused, match="derived covariate terms"):
        NodePolicy(allow_exact=True, allow_design_terms=False).check(query, None)
    # an interaction naming a column the query does not carry is refused, not computed
    bad = query.model_copy(update={"design_terms": DesignTerms(interactions=("bmi*person_id",))})
    with pytest.raises(PolicyRefused, match="person_id"):
        NodePolicy(allow_exact=True).check(bad, None)


@pytest.mark.parametrize("estimator", ["stratified", "dr"])
@pytest.mark.parametrize(
    ("terms", "dgp"),
    [
        (SQUARES, "misspecified"),
        # hinges on the scaled [0, 1] bounds the reference works in: age 54 and 61.2, BMI 30.1
        (DesignTerms(hinges=("age>0.5", "age>0.6", "bmi>0.35")), "threshold_uptake"),
    ],
    ids=["squares", "hinges"],
)
def test_federated_with_terms_equals_the_pooled_estimator_on_the_expanded_rows(estimator, terms, dgp):
    """Three nodes each expand their own rows; the pooled reference gets the expanded matrix
    as plain covariates: the same estimate to 1e-9 (the terms are per-row, the sums additive)."""
    parts = [_cohort(seed, 1000, dgp) for seed in (11, 12, 13)]
    fed = estimate_att_federated(
        nodes=[(z, t, y) for z, t, y, _ in parts],
        outcomes=DEFAULT_OUTCOMES,
        covariates=NAMES,
        terms=terms,
        binary=BINARY,
        estimator=estimator,
    )
    z, t, y = (np.concatenate([p[i] for p in parts]) for i in range(3))
    names = NAMES + [c.name for c in derived_covariates(COVS, terms)]
    pooled = estimate_att_pooled(
        z=expand(z, COVS, terms), t=t, y=y, outcomes=DEFAULT_OUTCOMES, covariates=names, estimator=estimator
    )
    assert fed.fitter.beta.shape == (len(names) + 1,)
    assert [b.covariate for b in fed.estimate.balance] == names
    assert [s.used for s in fed.estimate.strata] == [s.used for s in pooled.estimate.strata]
    x, y = np.array(_numbers(fed.estimate)), np.array(_numbers(pooled.estimate))
    assert x.shape == y.shape and x.size > 50 and np.isfinite(x).all() == np.isfinite(y).all()
    # atol 1e-9: caliper edges are lo + k·width from a public score range of ±10³ (27 collinear
    # columns), so edges near 0 carry ~3e-10 of absolute rounding (β agrees to 6e-11)
    np.testing.assert_allclose(x[np.isfinite(x)], y[np.isfinite(y)], rtol=1e-9, atol=1e-9)


def test_squares_remove_most_of_the_retirement_bias_of_the_misspecified_process():
    """Coverage smoke test on the misspecified process (docs/benchmarks/misspec.md): the linear
    score leaves old (retired, zero-absence) people over-represented among the treated of each
    stratum, so the absence-days ATT is ~1.2 days low and its CI misses; with the squares basis
    the same rows give an estimate ~0.9 days higher whose CI covers the truth."""
    z, t, y, truth = _cohort(3, 20_000, "misspecified", profile="insurer_large")
    est = {}
    for label, terms in (("linear", None), ("squares", DesignTerms(squares="continuous"))):
        fit = estimate_att_pooled(
            z=z, t=t, y=y, outcomes=DEFAULT_OUTCOMES, covariates=NAMES, terms=terms, binary=BINARY
        )
        est[label] = fit.estimate.outcomes[2]
    true = truth["absence_days"]
    assert not est["linear"].ci[0] <= true <= est["linear"].ci[1]
    assert est["squares"].ci[0] <= true <= est["squares"].ci[1]
    assert est["squares"].att - est["linear"].att > 0.5  # same rows: a paired shift, not noise


def test_the_terms_travel_on_the_wire_and_are_absent_when_there_are_none():
    from protos.codec import query_from_proto, query_to_proto

    for terms in ({"squares": "continuous", "interactions": ["bmi*smoker"]}, {"hinges": ["age>60"]}, {}):
        query = StudyQuery.for_spec(_spec(terms=terms, privacy={"enabled": False}), (Describe(),))
        msg = query_to_proto(query)
        assert msg.HasField("design_terms") == bool(terms)
        assert query_from_proto(msg) == query


def test_a_dp_study_with_terms_runs_through_the_nodes_and_charges_the_wider_plan(tmp_path):
    """The real ServerApp/ClientApp code (in-process Grid): each node reads its cohort, appends
    the squares, derives its noise plan for 16 + 11 columns and charges its ledger; the result's
    balance table has a row per term."""
    from flower_inprocess import signed_federation

    from coordinator.files import load_spec
    from coordinator.synth import write_federation
    from shared.driver import noise_plan, run_study
    from shared.synth import generate_federation

    spec = load_spec(write_federation(generate_federation(seed=5, sites=2, scale=0.05), tmp_path / "fed"))
    spec = spec.model_copy(
        update={
            "terms": DesignTerms(squares="continuous"),
            "privacy": spec.privacy.model_copy(update={"enabled": True, "epsilon": 4.0}),
        }
    )
    fed, grant = signed_federation(spec, tmp_path / "run", extra={"budget-epsilon": 10.0})
    run = run_study(spec, fed, grant=grant)
    assert run.estimate is not None
    assert [b.covariate for b in run.estimate.balance][16:19] == ["age^2", "sbp^2", "dbp^2"]
    plan = noise_plan(spec)
    wider = {r.query: r.sensitivity for r in plan.releases}
    narrow = {
        r.query: r.sensitivity for r in noise_plan(spec.model_copy(update={"terms": DesignTerms()})).releases
    }
    assert wider["ps_fit"] > narrow["ps_fit"] and wider["psm_balance"] > narrow["psm_balance"]


HINGES = DesignTerms(squares="continuous", hinges=("age>60", "bmi>30"))


def test_a_hinge_bends_its_scaled_column_at_the_declared_value_and_stays_in_the_unit_box():
    z = np.random.default_rng(2).uniform(size=(200, len(COVS)))
    covs = tuple(Covariate(name=f.name, lo=f.lo, hi=f.hi, kind=f.kind) for f in FEATURES)
    out = expand(z, covs, HINGES)
    names = [c.name for c in derived_covariates(covs, HINGES)]
    assert names[-2:] == ["age>60", "bmi>30"] and out.shape[1] == len(covs) + 11 + 2
    age = z[:, NAMES.index("age")] * (90 - 18) + 18  # back to years
    want = np.maximum(age - 60, 0) / (90 - 60)  # the excess over 60, as a share of 60–90
    np.testing.assert_allclose(out[:, -2], want, rtol=0, atol=1e-12)
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert hinge_term(covs[NAMES.index("age")], 0.5) == "age>54"  # how a chosen knot is declared


def test_hinges_hash_only_when_declared_and_bad_ones_are_refused_by_spec_and_node():
    from node.policy import NodePolicy

    squares = _spec(terms={"squares": "continuous"})
    assert "hinges" not in squares.model_dump()["terms"]  # old specs with terms: same bytes, same grants
    hinged = _spec(terms={"squares": "continuous", "hinges": ["age>60", "bmi>30"]})
    assert hinged.spec_hash() != squares.spec_hash()
    assert [c.name for c in hinged.design_covariates][-2:] == ["age>60", "bmi>30"]
    assert StudyQuery.study_grant(hinged, "g" * 16).terms["design_terms"]["hinges"] == ["age>60", "bmi>30"]
    from coordinator.report.method import _terms

    assert "the hinges age>60, bmi>30" in _terms(hinged.model_dump(mode="json"))
    for bad, match in (
        (["age>90"], "not inside age's public bounds"),
        (["age>18"], "not inside age's public bounds"),
        (["smoker>0.5"], "binary"),
        (["bogus>1"], "names 'bogus'"),
        (["age>>1"], "not of the form"),
        (["age>nan"], "finite"),
        (["age>60", "age > 60.0"], "declared twice"),
    ):
        with pytest.raises(SpecError, match=match):
            _spec(terms={"hinges": bad})
    # a query that claims a hinge the spec could not declare is refused by the node, not computed
    query = StudyQuery.for_spec(hinged.model_copy(update={"privacy": squares.privacy}), (Describe(),))
    NodePolicy(allow_exact=True).check(query, None)
    for bad in ("age>200", "smoker>0.5", "person_id>1"):
        crafted = query.model_copy(update={"design_terms": DesignTerms(hinges=(bad,))})
        with pytest.raises(PolicyRefused, match="derived terms"):
            NodePolicy(allow_exact=True).check(crafted, None)


def test_a_selecting_spec_hashes_only_when_it_selects_and_is_refused_where_it_cannot_run():
    """``[terms] select = "stepwise"``: signed with the spec (so with its grant), absent from
    the bytes of every spec that does not select; refused beside declared squares, products or
    hinges (the candidates hold them all), under DP, and where the candidates would not fit in
    a query."""
    exact = {"privacy": {"enabled": False}}
    plain = _spec(terms={"sites": "all"}, **exact)
    assert "select" not in plain.model_dump()["terms"]
    chosen = _spec(terms={"sites": "all", "select": "stepwise"}, **exact)
    assert chosen.spec_hash() != plain.spec_hash()
    assert StudyQuery.study_grant(chosen, "g" * 16).terms["design_terms"]["select"] == "stepwise"
    assert chosen.design_covariates == plain.design_covariates  # the chosen terms come later
    for beside in ({"squares": "continuous"}, {"interactions": ["bmi*smoker"]}, {"hinges": ["age>60"]}):
        with pytest.raises(SpecError, match="declare none of them beside it"):
            _spec(terms={"select": "stepwise", **beside}, **exact)
    with pytest.raises(SpecError, match="for exact studies"):
        _spec(terms={"select": "stepwise"})  # DP by default
    many = [{"name": f"x{i}", "lo": 0, "hi": 1} for i in range(21)]  # 21 + C(21, 2) = 231 products
    with pytest.raises(SpecError, match="231 candidate products, above the 200"):
        _spec(terms={"select": "stepwise"}, covariates=many, **exact)
