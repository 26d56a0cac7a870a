"""Negative controls end to end, in process: the synthetic generator's controls, the spec that
declares them, the nodes that read and release them with the outcomes, the report's EASE gate
and calibrated estimates (issue 21, item 2)."""

from __future__ import annotations

import pandas as pd
import pytest
import tomli_w
from flower_inprocess import signed_federation
from report_fixtures import make_registration

from coordinator.report.build import build_report
from coordinator.report.html import render_html
from coordinator.report.pdf import render_pdf
from coordinator.report.view import report_view
from coordinator.study.assemble import assemble_result
from coordinator.synth.io import study_document
from node.policy import NodePolicy
from node.runtime import NodeRuntime
from node.study_service import prepare_arrays
from shared.dp.sensitivity import psm_main_sensitivity, psm_sumsq_sensitivity
from shared.driver import noise_plan, run_study
from shared.errors import PolicyRefused
from shared.inprocess_sites import InProcessSites
from shared.protocol import Describe, StudyQuery
from shared.study import DEFAULT_OUTCOMES, StudySpec
from shared.synth import generate_federation
from shared.synth.negative_controls import NEGATIVE_CONTROL_NAMES, NEGATIVE_CONTROLS

ISSUED_AT = "2026-12-01T12:00:00+00:00"


def _spec(fed, **kw) -> StudySpec:
    return StudySpec.from_dict(study_document(fed, negative_controls=True, **kw))


def _run(fed, spec: StudySpec, *, pooled: bool = False):
    """The study in process: every site's arrays prepared by the node's own code from its
    cohort table, answered by the node's answer code, estimated by the coordinator's driver."""
    cohorts = {s.name: s.cohort for s in fed.sites}
    if pooled:
        cohorts = {"pooled": pd.concat(list(cohorts.values()), ignore_index=True)}
        spec = spec.model_copy(update={"sites": (spec.sites[0].model_copy(update={"name": "pooled"}),)})
    query = StudyQuery.for_spec(spec, (Describe(),))
    sites = InProcessSites({k: prepare_arrays(c, query) for k, c in cohorts.items()})
    return run_study(spec, sites)


def _report(fed, spec, run):
    result = assemble_result(run, dropped={}, started_at="2026-12-01T10:00:00Z", finished_at="b", total_s=1.0)
    result = result.model_copy(update={"truth": fed.truth["pooled"]["att_capped"]})
    return build_report(result, issued_at=ISSUED_AT, registration=make_registration(result))


def test_the_generator_writes_24_negative_controls_confounded_like_the_outcomes():
    fed = generate_federation(seed=3, sites=2, scale=0.2)
    assert len(NEGATIVE_CONTROLS) >= 20 and len(set(NEGATIVE_CONTROL_NAMES)) == len(NEGATIVE_CONTROLS)
    cohort = fed.sites[0].cohort
    for o in NEGATIVE_CONTROLS:  # written per row, within the public caps
        col = cohort[o.name].to_numpy()
        assert col.min() >= o.lo and col.max() <= o.cap, o.name
        assert col.std() > 0, o.name
    truth = fed.truth["pooled"]["negative_controls"]
    assert set(truth["att"].values()) == {0.0}
    # confounded: the naive difference is not zero for most (treated are older, heavier, ...)
    naive = {k: v for k, v in truth["naive_difference"].items()}
    rel = [abs(naive[o.name]) / cohort[o.name].mean() for o in NEGATIVE_CONTROLS]
    assert sum(r > 0.05 for r in rel) >= 12


def test_a_spec_without_negative_controls_hashes_as_before_and_names_stay_apart():
    doc = study_document(generate_federation(seed=1, sites=1, scale=0.01), epsilon=None)
    plain = StudySpec.from_dict(doc)
    assert "negative_controls" not in plain.model_dump(mode="json")
    with_nc = StudySpec.from_dict({**doc, "negative_controls": [{"name": "nc_x", "cap": 10.0}]})
    assert with_nc.spec_hash() != plain.spec_hash()
    assert [o.name for o in with_nc.analysed_outcomes] == [*(o.name for o in plain.outcomes), "nc_x"]
    with pytest.raises(Exception, match="duplicate outcome or negative control name 'cv_event'"):
        StudySpec.from_dict(
            {**doc, "negative_controls": [{"name": "cv_event", "cap": 1.0, "kind": "binary"}]}
        )


def test_exact_federated_negative_control_estimates_equal_pooled():
    fed = generate_federation(seed=4, sites=3, scale=0.08)
    spec = _spec(fed, epsilon=None)
    federated, pooled = _run(fed, spec), _run(fed, spec, pooled=True)
    assert [o.name for o in federated.negative_controls] == list(NEGATIVE_CONTROL_NAMES)
    assert [o.name for o in federated.estimate.outcomes] == [o.name for o in DEFAULT_OUTCOMES]
    for a, b in zip(
        federated.negative_controls + federated.estimate.outcomes,
        pooled.negative_controls + pooled.estimate.outcomes,
    ):
        assert a.name == b.name
        for x, y in ((a.att, b.att), (a.se, b.se), (a.control_mean, b.control_mean)):
            assert x == pytest.approx(y, rel=1e-9, abs=1e-9), a.name


def test_an_unmeasured_confounder_fails_ease_and_the_report_is_not_billable():
    """Same seed, same people: without the latent confounder EASE is small and the report
    billable; with it the negative controls show the bias, EASE fails, the report is not for
    billing, and the calibrated CI holds the truth the plain CI misses."""
    docs = {}
    for dgp in ("baseline", "unmeasured_confounding"):
        fed = generate_federation(seed=1, sites=3, scale=0.1, dgp=dgp)
        spec = _spec(fed, epsilon=None)
        docs[dgp] = (_report(fed, spec, _run(fed, spec)), fed)
    base, _ = docs["baseline"]
    ease = base.check("ease")
    assert ease.kind == "gate" and ease.passed and ease.value < 0.1 and ease.threshold == 0.25
    assert base.billable, base.failed_gates
    bad, fed = docs["unmeasured_confounding"]
    assert bad.check("ease").passed is False and bad.check("ease").value > 0.25
    assert "ease" in bad.failed_gates and not bad.billable and not bad.value.saving_claimed
    nc = bad.negative_controls
    assert nc is not None and nc.n == nc.n_used == 24 and nc.null_mean > 0.2
    truth = fed.truth["pooled"]["att_capped"]["claims_cost"]
    cal = {c.outcome: c for c in nc.calibrated}["claims_cost"]
    assert not cal.ci[0] <= truth <= cal.ci[1]  # the plain CI misses the truth ...
    assert cal.calibrated_ci[0] <= truth <= cal.calibrated_ci[1]  # ... the calibrated one holds it
    assert cal.calibrated_p is not None and cal.p is not None
    assert "EASE 0.3" in bad.summaries.regulator and "above the 0.25 threshold" in bad.summaries.regulator
    assert "within the 0.25 threshold" in base.summaries.regulator
    # the report shows it: banner, calibrated table, negative-control table and figure, PDF
    view = report_view(bad)
    assert view.billing_banner.startswith("NOT FOR BILLING")
    assert view.calibrated is not None and len(view.calibrated.rows) == 3
    assert view.negative_controls is not None and len(view.negative_controls.rows) == 24
    assert "negative_controls" in view.figures
    assert render_pdf(view, created=ISSUED_AT).startswith(b"%PDF")
    html = render_html(view)
    assert "Empirically calibrated p-values" in html and "nc_cataract_claims" in html


@pytest.mark.parametrize("dgp,fails", [("baseline", 0), ("unmeasured_confounding", 5)])
def test_ease_over_seeds(dgp, fails):
    """Five seeds each: EASE passes every time without the confounder, fails every time with it."""
    got = []
    for seed in range(10, 15):
        fed = generate_federation(seed=seed, sites=3, scale=0.08, dgp=dgp)
        spec = _spec(fed, epsilon=None)
        got.append(_report(fed, spec, _run(fed, spec)).check("ease").value)
    assert sum(v > 0.25 for v in got) == fails, got


def test_mdrr_is_information_for_every_outcome():
    fed = generate_federation(seed=2, sites=2, scale=0.08)
    spec = StudySpec.from_dict(study_document(fed, epsilon=None))  # no negative controls
    doc = _report(fed, spec, _run(fed, spec))
    assert doc.negative_controls is None and "ease" not in {c.name for c in doc.checks}
    for o in doc.outcomes:
        c = doc.check(f"mdrr_{o.estimate.name}")
        assert c.kind == "info" and c.passed is None and c.value > 1
        assert "minimum detectable difference" in c.detail


def test_a_node_answers_negative_controls_only_when_its_policy_lists_them():
    fed = generate_federation(seed=2, sites=1, scale=0.01)
    query = StudyQuery.for_spec(_spec(fed), (Describe(),))
    with pytest.raises(PolicyRefused, match="nc_dental_claims"):
        NodePolicy().check(query, None)
    NodePolicy(outcomes=query.outcomes).check(query, None)


def test_a_bad_negative_control_value_is_excluded_counted_and_named_in_the_node_log(caplog):
    fed = generate_federation(seed=2, sites=1, scale=0.01)
    query = StudyQuery.for_spec(_spec(fed, epsilon=None), (Describe(),))
    cohort = fed.sites[0].cohort.astype({"nc_warts": object})
    cohort.loc[3, "nc_warts"] = "yes"
    with caplog.at_level("WARNING", logger="rehealth.node.study"):
        arrays = prepare_arrays(cohort, query)
    assert arrays.n_excluded[0] == 1 and arrays.y.shape == (len(cohort) - 1, 27)
    assert "row 4: nc_warts" in caplog.text and "yes" not in caplog.text


def test_dp_negative_controls_are_released_apart_within_the_studys_epsilon(tmp_path):
    """Under DP the controls travel in releases of their own (``nc_*``) at a signed share of
    psm_stats' budget: each node's ledger charges every release of the plan once before
    answering, and what the study cost a node is the plan's ε to 1e-9, the same as the study
    without controls; a node whose policy lists them answers through the real node code."""
    from coordinator.files import load_spec
    from coordinator.synth import write_federation
    from shared.dp.accounting import epsilon_spent
    from shared.dp.plan import NC_RELEASES
    from shared.dp.sensitivity import nc_main_sensitivity

    fed = generate_federation(seed=5, sites=3, scale=0.15)
    spec = load_spec(write_federation(fed, tmp_path / "fed", epsilon=4.0, negative_controls=True))
    plain = spec.model_copy(update={"negative_controls": ()})
    assert len(spec.analysed_outcomes) == 27
    # the outcomes' releases count the 3 outcomes only, the controls' their 24
    plan = noise_plan(spec)
    sens = {p.query: p.sensitivity for p in plan.releases}
    assert sens["psm_main"] == pytest.approx(psm_main_sensitivity(n_outcomes=3))
    assert sens["psm_sumsq"] == pytest.approx(psm_sumsq_sensitivity(n_outcomes=3))
    assert sens["nc_main"] == pytest.approx(nc_main_sensitivity(n_controls=24))
    assert plan.epsilon == noise_plan(plain).epsilon == 4.0
    assert plan.epsilon_planned == pytest.approx(noise_plan(plain).epsilon_planned, rel=1e-9)
    policy = tmp_path / "policy.toml"
    policy.write_text(
        tomli_w.dumps({"outcomes": [o.model_dump(mode="json") for o in spec.analysed_outcomes]})
    )
    federation, grant = signed_federation(
        spec, tmp_path / "dp", extra={"budget-epsilon": 10.0, "policy-path": str(policy)}
    )
    run = run_study(spec, federation, grant=grant)
    assert run.plan == plan and len(run.negative_controls) == 24
    assert all(o.se_privacy > 0 for o in run.negative_controls)
    for s in spec.sites:
        rt = NodeRuntime.from_node_config(
            {"site": s.name, "state-dir": str(tmp_path / "dp" / "nodes" / s.name)}
        )
        ledger = rt.ledger()
        queries = [h.query for h in ledger.history(rt.dataset)]
        assert sorted(queries) == sorted(r.query for r in plan.releases)  # each release once
        assert all(queries.count(q) == 1 for q in NC_RELEASES)
        at_ledger = epsilon_spent(
            noise_multipliers=[r.noise_multiplier for r in plan.releases],
            delta=rt.budget_delta,
            accountant=ledger.accountant,
        )
        assert ledger.spent(rt.dataset) == pytest.approx(at_ledger, rel=1e-9)
        assert at_ledger <= 4.0
    doc = _report(fed, spec, run)
    assert doc.negative_controls is not None and doc.check("ease").kind == "gate"
    assert "share of 36.6%" in doc.method.negative_controls and "same ε" in doc.method.negative_controls


def test_a_node_ingests_negative_controls_and_quarantines_a_bad_one_with_row_and_field(tmp_path):
    """In a cohort file the controls are outcome columns like the others: a non-numeric value
    quarantines its row naming the field, every other row is stored, and a study reads them."""
    from node.ingest import ingest_file
    from node.pseudonym import Pseudonymizer
    from node.store import open_store

    fed = generate_federation(seed=2, sites=1, scale=0.002)
    cohort = fed.sites[0].cohort.astype({"nc_warts": object})
    cohort.loc[3, "nc_warts"] = "yes"
    path = tmp_path / "cohort.csv"
    cohort.to_csv(path, index=False)
    store = open_store(f"sqlite:///{tmp_path / 'node.db'}")
    pseudo = Pseudonymizer(key=bytes(range(32)), site_id="site_a")
    summary = ingest_file(store, path, kind="cohort", pseudonymize=pseudo.many, site_id="site_a")
    q = store.quarantine_frame()
    assert [(int(r.row), r.field) for r in q.itertuples()] == [(4, "nc_warts")]
    assert summary.loaded == len(cohort) - 1
    frame = store.cohort_frame(_spec(fed, epsilon=None))
    assert len(frame) == len(cohort) - 1 and set(NEGATIVE_CONTROL_NAMES) <= set(frame.columns)
