"""A pooled 20-firm study over real Flower processes: a SuperLink and one SuperNode per firm
(separate processes on 127.0.0.1, each with its SuperExec and ClientApp zygote: 61 processes),
SecAgg+ on, and the evidence report that names the firms but carries no per-company figure.

Twenty firms is the top of the small-firm template's range (5–20 companies of < 500 staff). What
made twenty real SuperNodes fit on two cores is in the launcher, not here: the SuperLink's
ServerApp start window and SQLite busy timeout (:mod:`coordinator.federation.superlink_load`),
polls that slow down beyond eight nodes (:func:`coordinator.federation.launcher.pace_env`) and
zygotes that never import torch for a study.

Measured (2 cores, 24 GiB, other sessions' jobs keeping the load average at 15–30,
2026-12-07): 637 s and 829 s wall, peak 12.6 GiB RSS / 7.1 GiB PSS over its 84 processes; ~600 s
of CPU, two thirds of it the nodes' polling (about 5 minutes on an idle CI machine). It
replaces a five-firm test (59 s in CI) and the three-node SecAgg+ test of test_study_flower.py
(96 s here at load 15), whose ledger checks it now makes over twenty firms.
Figures and what they cost: docs/USAGE.md, "Cross-company studies for small firms".
"""

import json
import os
import time

import pytest

from coordinator.files import load_spec
from coordinator.report import build_report
from coordinator.study.requirements import requirements
from coordinator.study.runner import node_state_dir, run_local
from coordinator.synth import write_federation
from node.ledger import PrivacyLedger
from shared.canonical import canonical_bytes
from shared.synth import generate_federation

pytestmark = pytest.mark.integration

FIRMS = 20
#: `rehealth study plan` for this pool (851 treated, 4,209 controls) says the study needs
#: ε ≥ 0.71; at ε = 1 with one Newton round, 3 runs in 30 (in-process simulation, same sites) still
#: stopped after describe because describe's noisy counts predicted an unresolved fit; ε = 2
#: leaves that margin (the test asserts the plan's bound below, so a changed pool fails here).
EPSILON = 2.0


def _site_counts_in(obj, names: set[str]) -> list[str]:
    """Paths in the report JSON where an object naming a firm carries a count (people,
    treated or control)."""
    found: list[str] = []

    def walk(x, path: str) -> None:
        if isinstance(x, dict):
            if x.get("name") in names or x.get("site") in names:
                for k in ("n", "n_treated", "n_control"):
                    if x.get(k) is not None:
                        found.append(f"{path}.{k}")
            for k, v in x.items():
                walk(v, f"{path}.{k}")
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, f"{path}[{i}]")

    walk(obj, "$")
    return found


def _assert_each_ledger_charged_the_plan(spec, result) -> None:
    """SecAgg+ between real SuperNodes: each firm's ledger is charged the plan's (central) σ once
    per release, ps_fit once per Newton round, and the CI holds the estimate. (Formerly a
    three-node test of its own in test_study_flower.py; twenty real nodes check the same.)"""
    from shared.driver import noise_plan
    from shared.study import BudgetSplit

    planned = noise_plan(spec)
    if result.privacy.resplit:
        planned = planned.with_split(BudgetSplit(**result.privacy.resplit))
    # the plan's μ for every release; its σ too, but psm_wsum's follows the weights asked
    plan = {r.query: r.noise_multiplier for r in planned.releases}
    sigmas = {r.query: r.sigma for r in planned.releases if r.query != "psm_wsum"}
    for s in spec.sites:
        ledger = PrivacyLedger(f"sqlite:///{node_state_dir(s.data) / 'ledger.db'}")
        history = ledger.history()
        assert [h.query for h in history].count("ps_fit") == spec.privacy.ps_rounds
        assert {h.query: h.sigma / h.sensitivity for h in history} == pytest.approx(plan)
        assert {h.query: h.sigma for h in history if h.query != "psm_wsum"} == pytest.approx(sigmas)
        assert 0 < ledger.spent() <= spec.privacy.epsilon + 1e-9
        assert result.privacy.per_site[s.name] == pytest.approx(ledger.spent())
    for o in result.outcomes:
        assert o.se_privacy > 0 and o.ci[0] < o.att < o.ci[1]
    assert not spec.negative_controls and not result.negative_controls  # none declared, none estimated


def test_pooled_twenty_firm_study_over_real_supernodes(tmp_path):
    fed = generate_federation(seed=5, sites=FIRMS, profile_set="small-firms")
    assert len(fed.sites) == FIRMS and all(len(s.cohort) < 500 for s in fed.sites)
    spec_path = write_federation(fed, tmp_path / "data", epsilon=EPSILON, secure_aggregation=True)
    text = spec_path.read_text()
    assert "per_site = false" in text and "secure_aggregation = true" in text
    pooled = fed.truth["pooled"]
    plan = requirements(
        load_spec(spec_path),
        treated=pooled["n_treated"],
        controls=pooled["n"] - pooled["n_treated"],
        nodes=FIRMS,
    )
    assert plan.min_epsilon <= EPSILON / 2  # the plan's bound, with the margin chosen above
    # one Newton round from the discriminant start: the fewest a DP study runs (each SecAgg+
    # round is four exchanges with every firm)
    spec_path.write_text(text.replace("[privacy]\n", "[privacy]\nps_rounds = 1\n", 1))
    t0 = time.perf_counter()
    result = run_local(spec_path, tmp_path / "run", timeout_s=1800)
    wall = time.perf_counter() - t0
    print(
        f"\n{FIRMS}-firm pooled SecAgg+ study over real SuperNodes: {wall:.1f} s wall "
        f"(load average {os.getloadavg()[0]:.1f}; timings "
        + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items())
        + ")"
    )
    assert result.privacy.enabled and result.privacy.secure_nodes == FIRMS
    _assert_each_ledger_charged_the_plan(load_spec(spec_path), result)
    names = {s.name for s in fed.sites}
    assert {s.name for s in result.sites} == names

    doc = build_report(result, issued_at="2026-12-06T21:00:00+00:00")
    report = json.loads(canonical_bytes(doc.model_dump(mode="json")))
    # the firms are named, and no count attaches to any of them
    assert {s["name"] for s in report["sites"]} == names
    assert _site_counts_in(report, names) == []
    # the result the report is built from does carry them (describe's per-node counts), so the
    # check above could fail: the report, not the run, drops them
    assert _site_counts_in(result.model_dump(mode="json"), names)
    # size gates on the pool, and HR's pooled paragraphs
    gate = next(c for c in doc.checks if c.name == "size_treated")
    assert gate.passed and gate.value >= 100
    hr = doc.summaries.hr
    assert f"Pooled study of {FIRMS} companies" in hr and "Savings per employee" in hr and "ESG" in hr
    assert "absence days" in hr.lower()
