"""Site effects (``[terms] sites = "all"``): each node appends its own site's indicator columns.

Federated with site effects equals the pooled fit on rows that carry the site dummies as
covariates; the spec names the sites in order and is exact-only; a node refuses them under DP
(their pooled sums would be each site's per-stratum counts, which secure aggregation hides)
and cannot compute them for a site the list does not name. The bias they remove is measured in
bench/bench_site_effects.py (docs/STATISTICS.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from shared.errors import DataError, PolicyRefused, SpecError
from shared.features import FEATURE_NAMES, FEATURES, scale
from shared.protocol import Describe, StudyQuery
from shared.psm.reference import estimate_att_federated
from shared.study import DEFAULT_OUTCOMES, Covariate, StudySpec
from shared.synth import generate_cohort
from shared.terms import DesignTerms, derived_covariates, expand

NAMES = list(FEATURE_NAMES)
COVS = tuple(Covariate(name=f.name, lo=0.0, hi=1.0, kind=f.kind) for f in FEATURES)
PROFILES = ("insurer_large", "insurer_mid_1", "insurer_mid_2")


def _spec(**extra) -> StudySpec:
    return StudySpec.from_dict(
        {
            "study": {"name": "sites"},
            "outcomes": [o.model_dump() for o in DEFAULT_OUTCOMES],
            "sites": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
            **extra,
        }
    )


@pytest.fixture(scope="module")
def three_insurers():
    nodes = []
    for i, profile in enumerate(PROFILES):
        cohort, _ = generate_cohort(n=1500, seed=40 + i, profile=profile)
        z = scale(cohort[NAMES].to_numpy(dtype=float), FEATURES)
        y = cohort[[o.name for o in DEFAULT_OUTCOMES]].to_numpy(dtype=float)
        nodes.append((z, cohort["treated"].to_numpy(dtype=float), y))
    return nodes


@pytest.mark.parametrize("estimator", ["stratified", "dr"])
def test_site_effects_equal_the_pooled_fit_with_the_site_dummies_as_covariates(three_insurers, estimator):
    with_sites = estimate_att_federated(
        nodes=three_insurers,
        outcomes=DEFAULT_OUTCOMES,
        covariates=NAMES,
        estimator=estimator,
        site_effects=True,
    )
    k = len(three_insurers)
    dummies = [
        (np.c_[z, np.tile(np.eye(k)[i, 1:], (z.shape[0], 1))], t, y)
        for i, (z, t, y) in enumerate(three_insurers)
    ]
    by_hand = estimate_att_federated(
        nodes=dummies, outcomes=DEFAULT_OUTCOMES, covariates=NAMES + ["s1", "s2"], estimator=estimator
    )
    np.testing.assert_allclose(with_sites.fitter.beta, by_hand.fitter.beta, rtol=0, atol=1e-9)
    for a, b in zip(with_sites.estimate.outcomes, by_hand.estimate.outcomes):
        assert a.att == pytest.approx(b.att, abs=1e-9) and a.se == pytest.approx(b.se, abs=1e-9)
    assert [r.covariate for r in with_sites.estimate.balance][-2:] == ["site=site-1", "site=site-2"]
    # the site effects move the fit: the intercepts differ between these insurers
    plain = estimate_att_federated(nodes=three_insurers, outcomes=DEFAULT_OUTCOMES, covariates=NAMES)
    assert np.abs(with_sites.fitter.beta[-2:]).max() > 0.1
    assert with_sites.estimate.outcomes[0].att != plain.estimate.outcomes[0].att


def test_sites_all_names_the_spec_sites_in_order_and_only_an_exact_study_takes_them():
    exact = {"privacy": {"enabled": False}}
    spec = _spec(terms={"sites": "all"}, **exact)
    assert spec.terms.sites == ("a", "b", "c")
    assert [c.name for c in spec.design_covariates][-2:] == ["site=b", "site=c"]
    assert spec.spec_hash() != _spec(**exact).spec_hash()
    assert StudyQuery.study_grant(spec, "g" * 16).terms["design_terms"]["sites"] == ["a", "b", "c"]
    with pytest.raises(SpecError, match="in their order"):
        _spec(terms={"sites": ["b", "a", "c"]}, **exact)
    with pytest.raises(SpecError, match="exact studies"):
        _spec(terms={"sites": "all"})  # DP by default


def test_a_node_refuses_site_effects_under_dp_and_computes_them_only_for_a_listed_site():
    from node.policy import NodePolicy

    exact = StudyQuery.for_spec(_spec(terms={"sites": "all"}, privacy={"enabled": False}), (Describe(),))
    NodePolicy(allow_exact=True).check(exact, None)
    # a DP query carrying them (the spec refuses to make one; a coordinator could still send it)
    dp = StudyQuery.for_spec(_spec(), (Describe(),))
    assert dp.privacy is not None
    forged = dp.model_copy(update={"design_terms": DesignTerms(sites=("a", "b", "c"))})
    with pytest.raises(PolicyRefused, match="site effects"):
        NodePolicy().check(forged, None)
    z = np.random.default_rng(0).uniform(size=(4, len(COVS)))
    terms = DesignTerms(sites=("a", "b", "c"))
    np.testing.assert_array_equal(expand(z, COVS, terms, site="c")[:, -2:], [[0.0, 1.0]] * 4)
    np.testing.assert_array_equal(expand(z, COVS, terms, site="a")[:, -2:], [[0.0, 0.0]] * 4)
    assert len(derived_covariates(COVS, terms)) == 2
    for site in ("d", None):
        with pytest.raises(DataError, match="not among the study's sites"):
            expand(z, COVS, terms, site=site)


def test_site_effects_travel_on_the_wire():
    from protos.codec import query_from_proto, query_to_proto

    query = StudyQuery.for_spec(_spec(terms={"sites": "all"}, privacy={"enabled": False}), (Describe(),))
    msg = query_to_proto(query)
    assert list(msg.design_terms.sites) == ["a", "b", "c"]
    assert query_from_proto(msg) == query
