"""Two concurrent DP studies on the same site ledgers (issue #18, deliverable 5), over real
Flower: two local federations (each its own SuperLink and SuperNode, as two operators'
``rehealth study run --local`` would start) over the same data file, so the same node ledger,
whose budget holds one study's plan but not two.

Before reservations both studies charged describe and then failed mid-study; now a study either
completes or spends nothing it did not release: one reserves its whole plan and completes, the
other is refused at its reservation, naming the site, having spent nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator.files import load_spec
from coordinator.study.runner import node_state_dir
from coordinator.synth import write_federation
from coordinator.synth.io import study_document, to_toml
from node.ledger import PrivacyLedger
from node.runtime import NodeRuntime
from shared.answer import study_releases
from shared.driver import noise_plan
from shared.errors import BudgetExceededError
from shared.synth import generate_federation

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EPSILON = 8.0  # each study's ε; the node's default budget is 10: one plan fits, two do not


_RUN = """
import json, sys
from pathlib import Path
from coordinator.study.runner import run_local
try:
    result = run_local(Path(sys.argv[1]), Path(sys.argv[2]), timeout_s=240)
    print(json.dumps({"spent": result.privacy.per_site}))
except Exception as e:
    print(json.dumps({"error": str(e), "round": getattr(e, "round_name", None)}))
"""


def test_two_concurrent_dp_studies_each_complete_or_spend_nothing(tmp_path):
    synth = generate_federation(seed=3, sites=1, scale=0.05)
    spec_path = write_federation(synth, tmp_path / "data").with_name("study-dp.toml")
    doc = study_document(synth, epsilon=EPSILON)
    doc["privacy"]["unresolved_fit"] = "warn"  # this test is about the budget, not the fit
    doc["privacy"]["ps_rounds"] = 1  # every round kind still runs; each round costs a process
    spec_path.write_text(to_toml(doc))
    spec = load_spec(spec_path)
    (site,) = spec.sites

    # the premise: at the node's budget one study's plan fits and two do not
    node = NodeRuntime(site=site.name, state_dir=tmp_path / "probe")
    probe = node.ledger()
    releases = study_releases(noise_plan(spec))
    probe.reserve(study_id="probe-first", releases=releases)
    with pytest.raises(BudgetExceededError):
        probe.reserve(study_id="probe-second", releases=releases)

    # two operators' runs, each its own process (a launcher owns its process group and signals)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    procs = {}
    for name in ("a", "b"):
        procs[name] = subprocess.Popen(
            [sys.executable, "-c", _RUN, str(spec_path), str(tmp_path / name)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
    outcomes = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        outcomes[name] = json.loads(out.strip().splitlines()[-1])
    took = time.monotonic() - started

    ledger = PrivacyLedger(f"sqlite:///{node_state_dir(site.data) / 'ledger.db'}")
    reservations = ledger.reservations()
    completed = {r.study_id for r in reservations if r.status == "completed"}
    done = [o for o in outcomes.values() if "spent" in o]
    failed = [o for o in outcomes.values() if "error" in o]
    assert len(done) + len(failed) == 2, outcomes
    assert len(done) <= 1 and len(completed) == len(done)
    # nothing was charged to a study that did not complete
    assert {h.study_id for h in ledger.history()} == completed
    assert {h.status for h in ledger.history()} <= {"sent"}
    for e in failed:
        msg = e["error"]
        assert e["round"] == "reserve", msg
        assert f"site {site.name} refused to reserve" in msg and "Nothing was spent" in msg, msg
    state = ledger.state()
    assert state.reserved == 0.0 and state.spent <= EPSILON + 1e-9
    for result in done:
        assert result["spent"][site.name] == pytest.approx(state.spent)
        (res,) = [r for r in reservations if r.status == "completed"]
        print(
            f"\nconcurrent DP studies in {took:.0f} s: {len(done)} completed, {len(failed)} refused "
            f"at reserve; the completed one reserved ε {res.epsilon:.3f} and spent ε {state.spent:.3f}"
        )
    if not done:  # both reserved at once and both were refused: allowed, nothing spent
        assert ledger.history() == [] and len(failed) == 2
