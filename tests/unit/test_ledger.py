"""The node's privacy ledger on SQLite and real PostgreSQL: charges, refusals, composition across
studies, one budget per population (no name opens another), a process killed between charge and
send, concurrent chargers, and a released view kept with its charge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from node.ledger import POPULATION, PrivacyLedger
from node.privacy import charged_release
from shared.dp.accounting import epsilon_spent
from shared.dp.plan import plan_study
from shared.errors import BudgetExceededError, PrivacyError
from shared.study import BudgetSplit

ROOT = Path(__file__).resolve().parents[2]
DATASET = POPULATION  # the only key a ledger has


@pytest.fixture
def ledger(store_url) -> PrivacyLedger:
    led = PrivacyLedger(store_url)
    led.ensure_budget(epsilon=1.0, delta=1e-6)
    return led


def test_charge_is_recorded_and_spent_is_the_accountant_over_history(ledger):
    c1 = ledger.charge(study_id="study-a", query="describe", sigma=40.0, sensitivity=1.0)
    c2 = ledger.charge(study_id="study-a", query="psm_main", sigma=60.0, sensitivity=2.0)
    hist = ledger.history()
    assert [(h.study_id, h.query, h.sigma, h.sensitivity) for h in hist] == [
        ("study-a", "describe", 40.0, 1.0),
        ("study-a", "psm_main", 60.0, 2.0),
    ]
    assert hist[1].noise_multiplier == 30.0
    expected = epsilon_spent(noise_multipliers=[40.0, 30.0], delta=1e-6)
    assert ledger.spent() == pytest.approx(expected)
    assert c2.epsilon_after == pytest.approx(expected)
    assert c1.epsilon + c2.epsilon == pytest.approx(expected)  # increments add up to the total
    assert c2.epsilon_left == pytest.approx(1.0 - expected)
    assert all(h.status == "charged" for h in hist)
    ledger.mark_sent(c1.id)
    assert ledger.history()[0].status == "sent"


def test_over_budget_query_is_refused_with_a_clear_error_and_not_recorded(ledger):
    ledger.charge(study_id="study-a", query="psm_main", sigma=8.0, sensitivity=1.0)
    spent = ledger.spent()
    with pytest.raises(BudgetExceededError) as e:
        ledger.charge(study_id="study-b", query="psm_main", sigma=4.0, sensitivity=1.0)
    msg = str(e.value)
    need = epsilon_spent(noise_multipliers=[8.0, 4.0], delta=1e-6) - spent
    assert "privacy budget of this node's population: ε=1.00 total" in msg
    assert f"{1.0 - spent:.2f} left" in msg
    assert f"needs {need:.2f}" in msg
    assert len(ledger.history()) == 1 and ledger.spent() == pytest.approx(spent)


def test_budget_composes_across_studies_and_a_whole_plan_fits_exactly(ledger):
    """Charging one study's planned releases spends at most ε; a second study on the same
    dataset is refused at its first release."""
    plan = plan_study(epsilon=1.0, delta=1e-6, split=BudgetSplit(), n_covariates=16, n_outcomes=3)
    for r in plan.releases:
        ledger.charge(study_id="study-1", query=r.query, sigma=r.sigma, sensitivity=r.sensitivity)
    assert ledger.spent() == pytest.approx(plan.epsilon_planned) and ledger.spent() <= 1.0
    first = plan.releases[0]
    with pytest.raises(BudgetExceededError):
        ledger.charge(study_id="study-2", query=first.query, sigma=first.sigma, sensitivity=first.sensitivity)
    # no name opens another budget: the population has one
    with pytest.raises(PrivacyError, match="one budget"):
        ledger.ensure_budget(dataset="other", epsilon=1.0, delta=1e-6)
    with pytest.raises(PrivacyError, match="one budget"):
        ledger.charge(
            dataset="other",
            study_id="study-2",
            query=first.query,
            sigma=first.sigma,
            sensitivity=first.sensitivity,
        )
    assert set(ledger.state_dict()["datasets"]) == {POPULATION}


def test_no_budget_or_bad_noise_is_refused(ledger, tmp_path):
    with pytest.raises(PrivacyError, match="no privacy budget"):
        PrivacyLedger(f"sqlite:///{tmp_path / 'empty.db'}").charge(
            study_id="s", query="describe", sigma=1.0, sensitivity=1.0
        )
    with pytest.raises(PrivacyError, match="positive"):
        ledger.charge(study_id="s", query="describe", sigma=0.0, sensitivity=1.0)


def test_charged_release_charges_first_and_withholds_unnamed_arrays(ledger):
    arrays = {"count": np.array([500.0, 100.0]), "sum_z": np.ones((2, 3)), "sum_zz": np.ones((2, 3, 3))}
    out, charge = charged_release(
        ledger=ledger,
        study_id="s",
        query="describe",
        arrays=arrays,
        sigma=30.0,
        sensitivity=1.0,
        rng=np.random.default_rng(0),
    )
    assert set(out) == {"count"}  # the covariate moments never leave under DP
    assert not np.allclose(out["count"], arrays["count"])
    assert ledger.history()[-1].id == charge.id
    # refused: nothing is released and nothing recorded
    with pytest.raises(BudgetExceededError):
        charged_release(
            ledger=ledger,
            study_id="s",
            query="describe",
            arrays=arrays,
            sigma=0.5,
            sensitivity=1.0,
            rng=np.random.default_rng(0),
        )
    assert len(ledger.history()) == 1


_CHILD = textwrap.dedent("""
    import json, os, signal, sys, time
    import numpy as np
    from node.ledger import POPULATION, PrivacyLedger
    from node.privacy import charged_release
    from shared.errors import BudgetExceededError

    mode, url, dataset = sys.argv[1], sys.argv[2], sys.argv[3]
    led = PrivacyLedger(url)
    if mode == "crash":
        class DiesBeforeSend:  # the node dies while noising/sending, after the charge committed
            def normal(self, *a, **k):
                os.kill(os.getpid(), signal.SIGKILL)
        charged_release(ledger=led, dataset=dataset, study_id="crash-study", query="psm_main",
                        arrays={"count": np.ones((2, 2)), "sum_y": np.ones((2, 2, 1)),
                                "sumsq_y": np.ones((2, 2, 1))},
                        sigma=12.0, sensitivity=3 ** 0.5, rng=DiesBeforeSend())
        print("released")  # never reached
    else:
        print("ready", flush=True)
        sys.stdin.readline()  # "go"
        ids = []
        while True:
            try:
                ids.append(led.charge(dataset=dataset, study_id=mode, query="psm_main",
                                      sigma=20.0, sensitivity=1.0).id)
            except BudgetExceededError:
                break
        print(json.dumps(ids))
""")


def _child(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_process_killed_between_charge_and_send_never_under_counts(ledger, store_url):
    proc = _child("crash", store_url, DATASET)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err
    assert "released" not in out
    hist = PrivacyLedger(store_url).history()
    assert [(h.study_id, h.query, h.status) for h in hist] == [("crash-study", "psm_main", "charged")]
    assert PrivacyLedger(store_url).spent() == pytest.approx(
        epsilon_spent(noise_multipliers=[12.0 / 3**0.5], delta=1e-6)
    )


def test_two_concurrent_processes_cannot_overspend(ledger, store_url):
    """Two studies charge the same dataset as fast as they can, one from a child process and one
    from this process: together they get exactly as many releases as fit in the budget."""
    import threading

    proc = _child("study-x", store_url, DATASET)
    here: list[int] = []
    led = PrivacyLedger(store_url)

    def charge_until_refused() -> None:
        while True:
            try:
                here.append(led.charge(study_id="study-y", query="psm_main", sigma=20.0, sensitivity=1.0).id)
            except BudgetExceededError:
                return

    assert proc.stdout.readline().strip() == "ready"  # imports done: start both at once
    thread = threading.Thread(target=charge_until_refused)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    thread.start()
    out, err = proc.communicate(timeout=300)
    thread.join(timeout=300)
    assert proc.returncode == 0, err
    there = json.loads(out.strip().splitlines()[-1])
    fits = 0
    while epsilon_spent(noise_multipliers=[20.0] * (fits + 1), delta=1e-6) <= 1.0 + 1e-9:
        fits += 1
    assert fits >= 10  # the race had room to happen
    hist = PrivacyLedger(store_url).history()
    assert sorted(there + here) == [h.id for h in hist]
    assert len(hist) == fits
    assert PrivacyLedger(store_url).spent() <= 1.0
    assert max(h.epsilon_after for h in hist) <= 1.0 + 1e-9


def test_dp_sgd_runs_compose_with_gaussian_releases_by_the_accountant(ledger):
    from opacus.accountants import RDPAccountant

    from shared.dp.accounting import ORDERS

    ledger.ensure_budget(epsilon=50.0, delta=1e-5)  # the config raised the budget
    ledger.charge(study_id="s" * 12, query="describe", sigma=3.0, sensitivity=1.5)
    c = ledger.charge_sgd(
        study_id="j" * 12, query="risk_train", noise_multiplier=1.1, sample_rate=0.05, steps=40
    )
    acc = RDPAccountant()
    acc.history = [(2.0, 1.0, 1), (1.1, 0.05, 40)]
    expected = acc.get_epsilon(delta=1e-5, alphas=list(ORDERS))
    assert ledger.spent() == pytest.approx(expected, rel=1e-9)
    assert c.epsilon_after == pytest.approx(expected, rel=1e-9)
    rec = ledger.history()[-1]
    assert (rec.sample_rate, rec.steps, rec.query) == (0.05, 40, "risk_train")


@pytest.mark.parametrize("q,steps", [(0.0, 10), (1.5, 10), (0.1, 0)])
def test_dp_sgd_charge_rejects_impossible_runs(ledger, q, steps):
    from shared.errors import PrivacyError

    with pytest.raises(PrivacyError):
        ledger.charge_sgd(
            study_id="j" * 12, query="risk_train", noise_multiplier=1.0, sample_rate=q, steps=steps
        )


def test_a_ledger_of_named_budgets_is_folded_into_the_population(tmp_path):
    """A ledger written when budgets were per dataset name (site name for studies,
    "scoring-book" for group views) opens as one population budget: every release counts, at
    the smallest ε and δ it held."""
    from datetime import datetime, timezone

    from sqlalchemy import create_engine, insert

    from node.ledger import budgets, metadata, releases

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(budgets),
            [
                {"dataset": "insurer_a", "epsilon": 10.0, "delta": 1e-5},
                {"dataset": "scoring-book", "epsilon": 8.0, "delta": 1e-6},
            ],
        )
        for ds, mu in (("insurer_a", 5.0), ("scoring-book", 2.0), ("insurer_a", 7.0)):
            conn.execute(
                insert(releases).values(
                    dataset=ds,
                    study_id="old",
                    query="describe",
                    sigma=mu,
                    sensitivity=1.0,
                    noise_multiplier=mu,
                    sample_rate=1.0,
                    steps=1,
                    epsilon=0.0,
                    epsilon_after=0.0,
                    created_at=datetime.now(timezone.utc),
                    status="sent",
                )
            )
    engine.dispose()
    led = PrivacyLedger(url)
    assert led.datasets() == [POPULATION]
    state = led.state()
    assert (state.epsilon, state.delta, state.releases) == (8.0, 1e-6, 3)
    assert state.spent == pytest.approx(epsilon_spent(noise_multipliers=[5.0, 2.0, 7.0], delta=1e-6))
    assert PrivacyLedger(url).state() == state  # idempotent


def test_release_once_charges_once_and_serves_the_stored_answer_again(ledger):
    drawn = []

    def make() -> str:
        drawn.append(len(drawn))
        return json.dumps({"noisy": 41 + len(drawn)})

    body, charge = ledger.release_once(
        key="view-a", study_id="group-view", query="group_view:x", sigma=30.0, sensitivity=1.0, make=make
    )
    assert charge is not None and json.loads(body) == {"noisy": 42}
    again, none = PrivacyLedger(ledger.url).release_once(  # a restarted server
        key="view-a", study_id="group-view", query="group_view:x", sigma=30.0, sensitivity=1.0, make=make
    )
    assert (again, none, len(drawn)) == (body, None, 1)
    assert [h.id for h in ledger.history()] == [charge.id]
    # over budget: refused before anything is drawn, nothing stored
    with pytest.raises(BudgetExceededError):
        ledger.release_once(
            key="view-b", study_id="group-view", query="group_view:y", sigma=0.5, sensitivity=1.0, make=make
        )
    assert len(drawn) == 1 and len(ledger.history()) == 1
