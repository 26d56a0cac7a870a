"""A selecting study (``[terms] select = "stepwise"``) lets the coordinator name, in each query,
the terms its rounds chose (``StudyQuery.chosen``, not signed: the data choose them). The
attacks: a coordinator that names terms the signed study could not have chosen — a hinge at a
value of its own picking (a column non-zero for a handful of people), a binary square, site
effects the grant did not sign, a whole square basis — or that sends chosen terms with a study
that selects nothing, or under DP. Each node derives the candidates itself from the signed
covariates (:func:`shared.terms.candidate_terms`) and refuses the rest, charging nothing.

Without :func:`shared.terms.basis_terms`' candidate check these queries are answered: the node
computes whatever terms a query names (``tests/unit/test_psm_terms.py`` shows the policy is the
gate for declared terms).
"""

from __future__ import annotations

import numpy as np
import pytest

from shared.protocol import CODE_REFUSED, PsFit
from shared.study import StudySpec
from shared.terms import DesignTerms, as_terms, candidates
from tests.security.node_kit import Federation, make_federation


@pytest.fixture(scope="module")
def synth():
    from shared.synth import generate_federation

    return generate_federation(seed=7, sites=2, scale=0.02)


@pytest.fixture
def exact(tmp_path, synth) -> Federation:
    return make_federation(tmp_path / "exact", synth=synth, extra={"allow-exact": True})


def selecting(spec: StudySpec, *, sites: bool = False) -> StudySpec:
    """``spec`` as an exact study that selects its basis (with site effects: ``sites``)."""
    names = tuple(s.name for s in spec.sites) if sites else ()
    return spec.model_copy(
        update={
            "privacy": spec.privacy.model_copy(update={"enabled": False}),
            "terms": DesignTerms(select="stepwise", sites=names),
        }
    )


def fit(spec: StudySpec, chosen: DesignTerms | None) -> PsFit:
    """A ps_fit at β = 0 over the covariates and ``chosen``'s products and hinges."""
    d = len(spec.covariates) + (len(chosen.interactions) + len(chosen.hinges) if chosen else 0)
    return PsFit(beta=(0.0,) * (d + 1))


def test_a_node_answers_chosen_candidates_and_refuses_any_other_term(exact):
    spec = selecting(exact.spec)
    covs, node = spec.covariates, exact.node(0)
    cands = candidates(covs)
    age = [c.name for c in covs].index("age")
    legit = as_terms([cands[0], cands[40], (age, 0.5)], covs)  # age², a product, age bent at 54
    assert legit.hinges == ("age>54",)
    reply = node.ask(exact.sign(exact.query((fit(spec, legit),), spec=spec, chosen=legit)))
    assert reply.ok, reply.text
    assert reply.answers["ps_fit"]["g"].shape == (len(covs) + 4,)
    none = node.ask(exact.sign(exact.query((fit(spec, None),), spec=spec)))
    assert none.ok and none.answers["ps_fit"]["g"].shape == (len(covs) + 1,)  # the first fit: no terms
    crafted = {
        "a hinge off the public knots": DesignTerms(hinges=("age>89.5",)),
        "a hinge outside the bounds": DesignTerms(hinges=("age>200",)),
        "a binary square": DesignTerms(interactions=("smoker*smoker",)),
        "a column the study lacks": DesignTerms(interactions=("age*person_id",)),
        "the product's names swapped": DesignTerms(interactions=(f"{covs[1].name}*{covs[0].name}",)),
        "every square": DesignTerms(squares="continuous"),
        "unsigned site effects": DesignTerms(sites=tuple(s.name for s in spec.sites)),
        "a selection of its own": DesignTerms(select="stepwise"),
    }
    for what, chosen in crafted.items():
        q = exact.sign(exact.query((fit(spec, chosen),), spec=spec, chosen=chosen))
        reply = node.ask(q)
        assert reply.code == CODE_REFUSED and "derived terms" in reply.reason, (what, reply.text)
        assert "chosen" in reply.reason, (what, reply.reason)


def test_chosen_terms_are_refused_in_a_study_that_selects_nothing_and_under_dp(exact, tmp_path, synth):
    off = exact.spec.privacy.model_copy(update={"enabled": False})
    plain = exact.spec.model_copy(update={"privacy": off})
    chosen = as_terms(candidates(plain.covariates)[:1], plain.covariates)
    reply = exact.node(0).ask(exact.sign(exact.query((fit(plain, chosen),), spec=plain, chosen=chosen)))
    assert reply.code == CODE_REFUSED and "select none" in reply.reason, reply.text

    dp = make_federation(tmp_path / "dp", synth=synth)  # nodes at their defaults
    node = dp.node(0)
    # a DP study's query naming chosen terms, signed without a selection …
    reply = node.ask(dp.sign(dp.query((fit(dp.spec, chosen),), chosen=chosen)))
    assert reply.code == CODE_REFUSED and "select none" in reply.reason, reply.text
    # … and one whose signed terms select (no spec allows it; the operator's key signs anything)
    q = dp.query((fit(dp.spec, chosen),), chosen=chosen, design_terms=DesignTerms(select="stepwise"))
    reply = node.ask(dp.sign(q))
    assert reply.code == CODE_REFUSED and "only in exact studies" in reply.reason, reply.text
    assert node.releases() == [] and node.spent() == 0.0  # refused before any charge


def test_a_selecting_study_runs_through_the_nodes_and_its_result_names_the_chosen_terms(tmp_path, synth):
    """The coordinator's driver over the real ClientApp code (in-process Grid, signed grant):
    the rounds choose the terms, every query names them, and the result and the report's
    method state them in order of entry with the rule's statistics. With site effects, which
    the nodes append after the chosen terms."""
    from flower_inprocess import signed_federation

    from coordinator.files import load_spec
    from coordinator.report.method import _selection, released_rounds
    from coordinator.study.assemble import assemble_result
    from coordinator.synth import write_federation
    from shared.driver import run_study

    spec = selecting(load_spec(write_federation(synth, tmp_path / "data")), sites=True)
    fed, grant = signed_federation(spec, tmp_path / "run", extra={"allow-exact": True})
    run = run_study(spec, fed, grant=grant)
    assert run.selection is not None and run.chosen is not None
    result = assemble_result(run, dropped={}, started_at="t0", finished_at="t1", total_s=1.0)
    sel = result.propensity.selection
    assert sel is not None and sel.candidates == len(candidates(spec.covariates))
    assert len(sel.terms) == len(sel.statistics) == len(run.chosen.interactions) + len(run.chosen.hinges)
    assert all(s > sel.threshold for s in sel.statistics)
    names = [b.covariate for b in result.balance]
    assert names[: len(spec.covariates)] == [c.name for c in spec.covariates]
    site = f"site={spec.sites[1].name}"
    assert names[-1] == site  # the nodes' order: covariates, chosen terms, site indicators
    assert sorted(names[len(spec.covariates) : -1]) == sorted(sel.terms)  # a balance row per term
    assert len(result.propensity.beta) == len(names) + 1
    rounds = [r.name for r in result.rounds]
    assert sum(r.startswith("select-") for r in rounds) == sel.rounds
    assert rounds.count("describe") == 2  # the chosen basis is described again (the caliper's SD)
    text = _selection(sel)
    assert f"of {sel.candidates} public candidates" in text and all(t in text for t in sel.terms)
    # what left the sites, exactly: the selection's rounds and the second describe are named
    released = released_rounds(result)
    fits = sum(r.startswith("select-fit") for r in rounds)
    assert f"over the terms chosen so far ({fits} rounds)" in released
    assert f"over every candidate term ({sel.rounds - fits} rounds)" in released
    assert "(describe; 2 rounds, the second over the chosen basis)" in released
    assert np.isfinite([o.att for o in result.outcomes]).all()
