"""Pooled small-firm studies (issue 22 item 4): the synthetic federation of small companies,
the commented template, `study plan`'s requirements for the pool, and a report that names the
firms but shows no per-company figure, with HR's savings / absence / ESG paragraphs."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from report_fixtures import ISSUED_AT, SITE_NAMES, make_registration, make_result
from typer.testing import CliRunner

from coordinator.cli.study import app as study_app
from coordinator.files import load_spec
from coordinator.report import build_report
from coordinator.report.view import report_view
from coordinator.study.requirements import requirements, runs
from coordinator.synth.cli import app as synth_app
from shared import thresholds as th
from shared.errors import SpecError
from shared.synth import generate_federation
from shared.synth.sites import PROFILES, SMALL_FIRMS

# --- synth ---------------------------------------------------------------------------------


def test_small_firm_federation_has_20_companies_under_500_with_a_realistic_mix():
    fed = generate_federation(seed=4, sites=20, profile_set="small-firms")
    assert len(fed.sites) == 20 and len({s.name for s in fed.sites}) == 20
    sizes = [len(s.cohort) for s in fed.sites]
    assert max(sizes) < 500 and min(sizes) >= 50 and len(set(sizes)) == 20
    assert all(s.profile.kind == "company" for s in fed.sites)
    sectors = {s.name.split("_", 2)[2] for s in fed.sites}
    assert sectors == {"logistics", "software", "manufacturing", "retail", "clinic"}
    uptake = [t["uptake"] for t in fed.truth["sites"].values()]
    assert max(uptake) - min(uptake) > 0.08  # programmes reach firms unequally
    ids = [pid for s in fed.sites for pid in s.cohort["person_id"]]
    assert len(ids) == len(set(ids))  # raw ids never collide across firms
    assert fed.truth["profile_set"] == "small-firms"
    # the pool passes the size gates no single firm does
    assert fed.truth["pooled"]["n_treated"] >= th.MIN_TREATED
    assert all(t["n_treated"] < th.MIN_TREATED for t in fed.truth["sites"].values())


def test_small_firms_do_not_change_the_default_federation():
    a = generate_federation(seed=4, sites=4, scale=0.01)
    assert [s.name for s in a.sites] == [p.name for p in PROFILES[:4]] and "profile_set" not in a.truth
    # a firm built from the logistics template at the same size still draws its own people
    firm = generate_federation(seed=4, sites=1, profile_set="small-firms").sites[0]
    assert SMALL_FIRMS[0].size == PROFILES[3].size == len(firm.cohort)
    template = generate_federation(seed=4, sites=4).sites[3].cohort
    assert not firm.cohort["age"].equals(template["age"])


def test_unknown_profile_set_and_too_many_firms_are_refused():
    with pytest.raises(SpecError, match="unknown profile set"):
        generate_federation(seed=1, profile_set="tiny")
    with pytest.raises(SpecError, match="between 1 and 20"):
        generate_federation(seed=1, sites=21, profile_set="small-firms")


def test_synth_cli_writes_a_pooled_secure_study(tmp_path):
    res = CliRunner().invoke(
        synth_app, ["--profile", "small-firms", "--sites", "6", "--out", str(tmp_path), "--scale", "0.5"]
    )
    assert res.exit_code == 0, res.output
    spec = load_spec(tmp_path / "study.toml")
    assert len(spec.sites) == 6 and spec.privacy.secure_aggregation and not spec.report.per_site
    assert spec.federation.round_timeout_s == 300.0
    bad = CliRunner().invoke(synth_app, ["--profile", "small-firms", "--sites", "1", "--out", str(tmp_path)])
    assert bad.exit_code != 0


# --- template and plan -----------------------------------------------------------------------


def test_template_writes_a_commented_spec_that_loads(tmp_path):
    out = tmp_path / "study.toml"
    res = CliRunner().invoke(study_app, ["template", "small-firms", "--out", str(out), "--companies", "8"])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert text.count("\n#") >= 10  # commented for the firms' HR and IT
    spec = load_spec(out)
    assert len(spec.sites) == 8 and spec.privacy.secure_aggregation and spec.privacy.enabled
    assert not spec.report.per_site and spec.federation.min_nodes is None
    again = CliRunner().invoke(study_app, ["template", "small-firms", "--out", str(out)])
    assert again.exit_code == 1 and "exists" in again.output  # never overwrites silently
    few = CliRunner().invoke(study_app, ["template", "small-firms", "--out", str(out), "--companies", "3"])
    assert few.exit_code != 0


def _template(tmp_path, companies=10, epsilon=1.0):
    out = tmp_path / f"t{companies}-{epsilon}.toml"
    args = ["template", "small-firms", "--out", str(out), "--companies", str(companies)]
    assert CliRunner().invoke(study_app, [*args, "--epsilon", str(epsilon)]).exit_code == 0
    return out


def test_plan_tells_the_pool_its_epsilon_and_treated(tmp_path):
    spec_path = _template(tmp_path)
    args = ["plan", "--spec", str(spec_path), "--treated", "300"]
    res = CliRunner().invoke(study_app, [*args, "--format", "json"])
    assert res.exit_code == 0, res.output
    pooled = json.loads(res.output)["pooled"]
    spec = load_spec(spec_path)
    # the minimal ε is the edge: the study runs at it and not just below
    eps = pooled["min_epsilon"]
    assert eps > spec.privacy.epsilon  # 300 treated are too few at ε = 1 …
    assert runs(spec, treated=300, controls=1200, nodes=10, epsilon=eps)
    assert not runs(spec, treated=300, controls=1200, nodes=10, epsilon=eps * 0.97)
    # … and the fewest treated at ε = 1 is the edge too
    t = pooled["min_treated"]
    assert t > 300 and runs(spec, treated=t, controls=4 * t, nodes=10)
    assert not runs(spec, treated=t - 1, controls=4 * (t - 1), nodes=10)
    assert pooled["treated_per_firm"] == -(-t // 10) and pooled["size_gates_pass"]
    text = CliRunner().invoke(study_app, ["plan", "--spec", str(spec_path), "--treated", "300"]).output
    flat = re.sub(r"\s+", " ", text)
    assert "Pooled study over 10 companies" in flat and f"{t:,} treated" in flat


def test_plan_size_gate_is_on_the_pool(tmp_path):
    spec = load_spec(_template(tmp_path, companies=5, epsilon=40.0))
    low = requirements(spec, treated=60, controls=240, nodes=5)
    assert not low.size_gates_pass and low.min_treated is not None and low.min_treated >= th.MIN_TREATED
    assert low.min_controls >= th.MIN_CONTROL_RATIO * low.min_treated
    # at a huge ε the DP rules ask little: the pooled size gate (not per firm) is what binds
    assert low.min_treated_dp < th.MIN_TREATED and low.min_treated == th.MIN_TREATED
    assert low.treated_per_firm == th.MIN_TREATED // 5


# --- report ----------------------------------------------------------------------------------


def _pooled(result):
    """``result`` with ``[report] per_site = false`` in its spec (and the spec hash to match)."""
    spec = {**result.spec, "report": {"per_site": False}}
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    return result.model_copy(update={"spec": spec, "spec_hash": hashlib.sha256(blob).hexdigest()})


def test_pooled_report_names_the_firms_but_shows_no_per_site_count():
    plain = make_result(privacy=True)
    result = _pooled(plain)
    doc = build_report(result, issued_at=ISSUED_AT, registration=make_registration(result))
    sites = doc.model_dump(mode="json")["sites"]
    assert [s["name"] for s in sites] == list(SITE_NAMES)
    assert all(s["n"] is None and s["n_treated"] is None and s["n_control"] is None for s in sites)
    # the rendered table has names and status only
    table = report_view(doc).sites
    assert table.header == ("Site", "Status") and all(len(r) == 2 for r in table.rows)
    # no released site count appears anywhere in the report JSON
    blob = json.dumps(doc.model_dump(mode="json"))
    for s in plain.sites:
        assert f'"n_treated": {s.n_treated},' not in blob and f'"n": {s.n},' not in blob
    # the size gates still ran, on the pool: the same verdicts as with per-site figures shown
    shown = build_report(plain, issued_at=ISSUED_AT, registration=make_registration(plain))
    for name in ("size_treated", "size_control_pool"):
        a = next(c for c in doc.checks if c.name == name)
        b = next(c for c in shown.checks if c.name == name)
        assert (a.passed, a.value) == (b.passed, b.value)
    assert any(s["n"] is not None for s in shown.model_dump(mode="json")["sites"])  # default shows them


def test_pooled_hr_summary_claims_savings_absence_and_esg_when_the_ci_supports_it():
    result = _pooled(make_result(privacy=True))
    doc = build_report(result, issued_at=ISSUED_AT, registration=make_registration(result))
    assert doc.billable and doc.value.saving_claimed
    hr = doc.summaries.hr
    assert f"Pooled study of {len(SITE_NAMES)} companies" in hr
    assert "Savings per employee: 412 in claims cost per participating employee" in hr
    # 412.5 − 350 per person, whose CI includes zero: shown, but no net gain is claimed
    assert "after the programme's cost of 350 per person, 62.5" in hr
    assert "a net gain per employee is not established" in hr
    assert "Absence days averted per participating employee: 1.84" in hr
    assert "does not support a claim that absence fell" not in hr
    assert "ESG: across 5 companies, the workplace health programme averted" in hr
    # every figure is from the document: absence per participant = −ATT
    absence = next(o.estimate for o in doc.outcomes if o.estimate.name == "absence_days")
    assert absence.att == pytest.approx(-1.84)
    # the default (per-site) study keeps its HR summary as it was
    plain = make_result(privacy=True)
    assert "Pooled study" not in build_report(plain, issued_at=ISSUED_AT).summaries.hr


def test_pooled_hr_summary_makes_no_claim_when_the_evidence_does_not_support_one():
    result = _pooled(make_result(privacy=True))
    doc = build_report(result, issued_at=ISSUED_AT)  # unregistered: a gate fails, not billable
    assert not doc.billable
    hr = doc.summaries.hr
    assert "Savings per employee: the evidence does not support a savings claim (1 diagnostic" in hr
    assert "does not support a claim that absence fell" in hr
    assert "ESG: the evidence does not support a claim" in hr and "averted an estimated" not in hr
    assert "pre_registration" in hr


def test_pooled_report_renders_to_html_and_pdf_without_site_counts():
    from coordinator.report.html import render_html
    from coordinator.report.pdf import render_pdf

    plain = make_result(privacy=True)
    result = _pooled(plain)
    view = report_view(build_report(result, issued_at=ISSUED_AT))
    html = render_html(view)
    assert "Participating sites" in html and all(n in html for n in SITE_NAMES)
    assert "no site&#39;s own count" in html or "no site's own count" in html
    assert render_pdf(view).startswith(b"%PDF")
