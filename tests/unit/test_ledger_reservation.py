"""A DP study reserves its whole plan before its first release (issue #18, deliverable 5).

The ledger (SQLite and real PostgreSQL): a plan that fits is reserved and counts; one that does
not is refused with nothing recorded; reserved releases convert into charges, never beyond the
plan (how many, how much ρ) and never without a live reservation; cancel frees only what was not
converted; a reservation lapses after its lifetime without a release; every other release must
fit beside the reservations; several processes reserving at once never over-reserve. Then the
real study driver and node answer code over in-process sites with ledgers: of two studies
competing for one budget, one completes and the other spends exactly 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from node.ledger import PrivacyLedger
from shared.dp.accounting import epsilon_of_history
from shared.dp.plan import plan_study
from shared.errors import BudgetExceededError, PrivacyError, ReplayRefused
from shared.study import BudgetSplit

ROOT = Path(__file__).resolve().parents[2]
DELTA = 1e-5
PLAN = plan_study(epsilon=4.0, delta=DELTA, split=BudgetSplit(), n_covariates=5, n_outcomes=2)
RELEASES = [(r.query, r.sigma, r.sensitivity) for r in PLAN.releases]
BUDGET = 5.0  # one ε = 4 plan fits, two do not (two compose to about 6)


class Clock:
    """A settable UTC clock: lapses are tested without sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 5, 9, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(store_url, clock) -> PrivacyLedger:
    led = PrivacyLedger(store_url, clock=clock)
    led.ensure_budget(epsilon=BUDGET, delta=DELTA)
    return led


def _convert(ledger: PrivacyLedger, study: str, releases=PLAN.releases):
    return [
        ledger.charge_reserved(study_id=study, query=r.query, sigma=r.sigma, sensitivity=r.sensitivity)
        for r in releases
    ]


def _eps(mus) -> float:
    return epsilon_of_history(history=[(m, 1.0, 1) for m in mus], delta=DELTA)


def test_a_plan_that_fits_is_reserved_and_counts_before_anything_is_spent(ledger):
    res = ledger.reserve(study_id="study-a", releases=RELEASES)
    assert res.status == "reserved" and res.releases == {
        "describe": 1,
        "ps_fit": PLAN.n_ps_rounds,
        "score_hist": 1,
        "psm_main": 1,
        "psm_sumsq": 1,
        "psm_wsum": 1,
        "psm_balance": 1,
    }
    plan_eps = _eps(r.noise_multiplier for r in PLAN.releases)
    assert res.epsilon == pytest.approx(plan_eps, rel=1e-6) and plan_eps <= 4.0
    state = ledger.state()
    assert state.spent == 0.0 and state.releases == 0
    assert state.reserved == pytest.approx(plan_eps, rel=1e-6) and state.reservations == 1
    assert state.left == pytest.approx(BUDGET - plan_eps, rel=1e-6)
    # reserving again (a retried round) changes nothing
    assert ledger.reserve(study_id="study-a", releases=RELEASES).id == res.id
    assert len(ledger.reservations()) == 1
    # nor can the same study hold another plan
    with pytest.raises(PrivacyError, match="another plan"):
        ledger.reserve(study_id="study-a", releases=RELEASES[:2])


def test_a_plan_that_does_not_fit_is_refused_and_nothing_is_recorded(ledger):
    ledger.reserve(study_id="study-a", releases=RELEASES)
    with pytest.raises(BudgetExceededError) as e:
        ledger.reserve(study_id="study-b", releases=RELEASES)
    msg = str(e.value)
    assert "ε=5.00 total" in msg and "reserved by 1 running study" in msg
    assert "study study-b needs" in msg and "nothing was reserved or spent" in msg
    assert [r.study_id for r in ledger.reservations()] == ["study-a"]
    assert ledger.history() == []


def test_reserved_releases_convert_into_charges_and_complete_the_reservation(ledger):
    ledger.reserve(study_id="study-a", releases=RELEASES)
    held = ledger.state().spent + ledger.state().reserved
    charges = _convert(ledger, "study-a", PLAN.releases[:-1])
    mid = ledger.state()
    # a live study counts at its whole plan however far it got
    assert mid.spent + mid.reserved == pytest.approx(held, rel=1e-6)
    assert ledger.reservations()[0].status == "reserved"
    (last,) = _convert(ledger, "study-a", PLAN.releases[-1:])
    done = ledger.state()
    assert ledger.reservations()[0].status == "completed" and done.reservations == 0
    assert done.reserved == 0.0
    assert done.spent == pytest.approx(_eps(r.noise_multiplier for r in PLAN.releases))
    # the rows' increments add up to what was spent; every row is charged until sent
    assert sum(c.epsilon for c in [*charges, last]) == pytest.approx(done.spent)
    assert {h.status for h in ledger.history()} == {"charged"}
    ledger.mark_sent([c.id for c in charges])
    assert [h.status for h in ledger.history()] == ["sent"] * len(charges) + ["charged"]


def test_a_conversion_never_goes_beyond_the_plan(ledger):
    describe, ps_fit = PLAN.release("describe"), PLAN.release("ps_fit")
    with pytest.raises(PrivacyError, match="no reservation, no release"):
        ledger.charge_reserved(
            study_id="study-a", query="describe", sigma=describe.sigma, sensitivity=describe.sensitivity
        )
    ledger.reserve(study_id="study-a", releases=RELEASES)
    with pytest.raises(PrivacyError, match="beyond the privacy loss its plan reserved"):  # less noise
        ledger.charge_reserved(
            study_id="study-a", query="describe", sigma=describe.sigma / 10, sensitivity=describe.sensitivity
        )
    with pytest.raises(PrivacyError, match="no risk_train release"):
        ledger.charge_reserved(study_id="study-a", query="risk_train", sigma=50.0, sensitivity=1.0)
    for _ in range(PLAN.n_ps_rounds):
        ledger.charge_reserved(
            study_id="study-a", query="ps_fit", sigma=ps_fit.sigma, sensitivity=ps_fit.sensitivity
        )
    with pytest.raises(ReplayRefused, match="all its signed plan allows"):
        ledger.charge_reserved(
            study_id="study-a", query="ps_fit", sigma=ps_fit.sigma, sensitivity=ps_fit.sensitivity
        )
    assert [h.query for h in ledger.history()] == ["ps_fit"] * PLAN.n_ps_rounds


def test_a_resplit_study_converts_within_its_plan_and_never_counts_above_it(ledger):
    """After describe a study may move ρ between its rounds (same total): the rounds that get
    more noise free nothing for others meanwhile, and the one that gets less still fits."""
    resplit = PLAN.with_split(BudgetSplit(describe=0.05, ps_fit=0.25, psm_stats=0.6, balance=0.1))
    assert resplit.sigma("psm_main") < PLAN.sigma("psm_main")  # this round takes more ρ
    ledger.reserve(study_id="study-a", releases=RELEASES)
    whole = ledger.state().spent + ledger.state().reserved
    _convert(ledger, "study-a", PLAN.releases[:1])  # describe at the signed plan
    for r in resplit.releases[1:]:
        _convert(ledger, "study-a", [r])
        now = ledger.state()
        assert now.spent + now.reserved <= whole * (1 + 1e-6)
    assert ledger.reservations()[0].status == "completed"
    assert ledger.spent() <= whole * (1 + 1e-6) and ledger.spent() <= 4.0 + 1e-9


def test_cancel_frees_only_what_was_not_converted(ledger):
    ledger.reserve(study_id="study-a", releases=RELEASES)
    _convert(ledger, "study-a", PLAN.releases[:3])
    spent = ledger.spent()
    res = ledger.cancel("study-a")
    assert res is not None and res.status == "cancelled"
    after = ledger.state()
    assert after.spent == pytest.approx(spent) and after.reserved == 0.0 and after.releases == 3
    with pytest.raises(PrivacyError, match="no reservation, no release"):
        _convert(ledger, "study-a", PLAN.releases[3:4])
    # harmless again and for anyone: nothing live, nothing freed, nothing spent
    assert ledger.cancel("study-a") is None and ledger.cancel("study-unknown") is None
    assert ledger.state() == after
    # the freed budget is another study's to reserve
    ledger.reserve(study_id="study-b", releases=RELEASES)
    # the cancelled study may reserve again, but only what its plan has left: no release twice
    with pytest.raises(BudgetExceededError):
        ledger.reserve(study_id="study-a", releases=RELEASES)
    ledger.cancel("study-b")
    again = ledger.reserve(study_id="study-a", releases=RELEASES)
    assert again.epsilon < ledger.reservations()[0].epsilon  # less than the whole plan
    _convert(ledger, "study-a", PLAN.releases[3:])
    with pytest.raises(PrivacyError):
        _convert(ledger, "study-a", PLAN.releases[:1])
    assert ledger.spent() == pytest.approx(_eps(r.noise_multiplier for r in PLAN.releases))


def test_a_reservation_lapses_after_its_lifetime_without_a_release(ledger, clock):
    ledger.reserve(study_id="study-a", releases=RELEASES, ttl_s=60)
    clock.advance(50)
    _convert(ledger, "study-a", PLAN.releases[:1])  # a release renews the lifetime
    clock.advance(50)
    assert ledger.state().reservations == 1
    _convert(ledger, "study-a", PLAN.releases[1:2])
    clock.advance(61)
    state = ledger.state()
    assert state.reservations == 0 and state.reserved == 0.0 and state.releases == 2
    assert ledger.reservations()[0].status == "lapsed"
    with pytest.raises(PrivacyError, match="lapsed"):
        _convert(ledger, "study-a", PLAN.releases[2:3])
    ledger.reserve(study_id="study-b", releases=RELEASES)  # the budget is free again
    assert [r.status for r in ledger.reservations()] == ["lapsed", "reserved"]
    with pytest.raises(PrivacyError, match="lifetime must be positive"):
        ledger.reserve(study_id="study-c", releases=RELEASES, ttl_s=0)


def test_every_other_release_must_fit_beside_the_reservations(ledger):
    """A group view or a risk-training run cannot take what a running study reserved."""
    ledger.reserve(study_id="study-a", releases=RELEASES)
    left = ledger.state().left
    with pytest.raises(BudgetExceededError, match="reserved by 1 running study"):
        ledger.charge(study_id="group-view", query="group_view:x", sigma=1.2, sensitivity=1.0)
    alone = PrivacyLedger(f"{ledger.url}", clock=ledger.clock)  # the same release, no reservation
    ledger.cancel("study-a")
    c = alone.charge(study_id="group-view", query="group_view:x", sigma=1.2, sensitivity=1.0)
    assert c.epsilon > left  # it fitted the budget, not what the reservation left


_CHILD = textwrap.dedent("""
    import json, sys
    from node.ledger import PrivacyLedger
    from shared.errors import BudgetExceededError

    who, url, releases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    led = PrivacyLedger(url)
    print("ready", flush=True)
    sys.stdin.readline()  # "go"
    got = []
    while True:
        try:
            got.append(led.reserve(study_id=f"{who}-{len(got)}", releases=releases).id)
        except BudgetExceededError:
            break
    print(json.dumps(got))
""")


def test_concurrent_reservers_in_several_processes_never_over_reserve(store_url):
    """Four processes reserve small studies as fast as they can: together they hold exactly as
    many reservations as fit in the budget, and the budget is never over-reserved."""
    small = plan_study(epsilon=0.5, delta=DELTA, split=BudgetSplit(), n_covariates=3, n_outcomes=1)
    releases = [(r.query, r.sigma, r.sensitivity) for r in small.releases]
    mus = [r.noise_multiplier for r in small.releases]
    PrivacyLedger(store_url).ensure_budget(epsilon=BUDGET, delta=DELTA)
    fits = 0
    while _eps(mus * (fits + 1)) <= BUDGET + 1e-9:
        fits += 1
    assert fits >= 12  # room for the race to happen
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, f"p{i}", store_url, json.dumps(releases)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    got = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        got += json.loads(out.strip().splitlines()[-1])
    led = PrivacyLedger(store_url)
    live = led.reservations()
    assert sorted(got) == [r.id for r in live] and len(live) == fits
    assert len({r.study_id for r in live}) == fits
    state = led.state()
    assert state.spent == 0.0 and state.reserved <= BUDGET + 1e-9
    assert max(r.epsilon_after for r in live) <= BUDGET + 1e-9


# -- the study driver over in-process sites with ledgers ---------------------------------------


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    from coordinator.files import load_spec
    from coordinator.synth import write_federation
    from node.study_service import load_site_arrays
    from shared.protocol import Describe, StudyQuery
    from shared.synth import generate_federation

    out = tmp_path_factory.mktemp("fed")
    spec = load_spec(write_federation(generate_federation(seed=5, sites=3, scale=0.12), out))
    spec = spec.model_copy(
        update={
            "privacy": spec.privacy.model_copy(
                update={"enabled": True, "epsilon": 4.0, "unresolved_fit": "warn"}
            )
        }
    )
    query = StudyQuery.for_spec(spec, (Describe(),))
    return spec, {s.name: load_site_arrays(s.data, query, None) for s in spec.sites}


def test_two_studies_competing_for_one_budget_one_completes_the_other_spends_nothing(sites, tmp_path):
    """Study A reserves; study B starts while A runs (right after A's describe) and is refused
    at its reservation: B fails naming the site, having spent exactly 0 anywhere (the one site
    whose budget had room cancelled B's reservation), and A completes."""
    from shared.driver import run_study
    from shared.errors import FederationError
    from shared.inprocess_sites import InProcessSites
    from shared.study import StudyInfo

    spec, arrays = sites
    names = sorted(arrays)
    budgets = {s: (BUDGET if s != names[-1] else 20.0) for s in names}  # the last has room for both
    urls = {s: f"sqlite:///{tmp_path / s}.db" for s in names}
    for s in names:
        PrivacyLedger(urls[s]).ensure_budget(epsilon=budgets[s], delta=spec.privacy.delta)

    def fed():  # each study's own view of the sites: its own connections to the same ledgers
        return InProcessSites(
            arrays,
            rngs=lambda site: np.random.default_rng(1),
            ledgers={s: PrivacyLedger(urls[s]) for s in names},
        )

    spec_b = spec.model_copy(update={"study": StudyInfo(name="competing_study", seed=6)})
    failed: list[FederationError] = []

    def progress(event: str, data: dict) -> None:
        if event == "round_end" and data["round"] == "describe":
            with pytest.raises(FederationError) as e:
                run_study(spec_b, fed())
            failed.append(e.value)

    run_a = run_study(spec, fed(), progress)
    assert run_a.estimate is not None and len(failed) == 1
    err = failed[0]
    assert err.round_name == "reserve" and err.node == names[0]
    assert f"site {names[0]} refused to reserve" in str(err) and "Nothing was spent" in str(err)
    id_a, id_b = spec.spec_hash(), spec_b.spec_hash()
    for s in names:
        led = PrivacyLedger(urls[s])
        assert {h.study_id for h in led.history()} == {id_a}  # B released nothing, anywhere
        statuses = {r.study_id: r.status for r in led.reservations()}
        assert statuses[id_a] == "completed"
        assert statuses.get(id_b) == ("cancelled" if s == names[-1] else None)
        state = led.state()
        assert state.reserved == 0.0 and state.spent <= 4.0 + 1e-9
        assert run_a.privacy_reserved[s] == pytest.approx(led.reservations(id_a)[0].epsilon)
        assert run_a.privacy_spent[s] == pytest.approx(state.spent)


def test_node_budget_shows_what_is_reserved_apart_from_what_is_spent(tmp_path, clock):
    """`rehealth node budget`: ε reserved beside ε spent, the reservations with their status,
    and each release's status (charged, or sent once the node handed it on)."""
    from typer.testing import CliRunner

    from node.cli import app

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    led = PrivacyLedger(url)
    led.ensure_budget(epsilon=BUDGET, delta=DELTA)
    led.reserve(study_id="study-running-0001", releases=RELEASES)
    (c,) = _convert(led, "study-running-0001", PLAN.releases[:1])
    led.mark_sent([c.id])
    state = led.state()
    res = CliRunner().invoke(app, ["budget", "--ledger-url", url, "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert state.spent > 0 and state.reserved > 0
    assert data["budget"]["spent"] == pytest.approx(state.spent)
    assert data["budget"]["reserved"] == pytest.approx(state.reserved)
    assert data["budget"]["left"] == pytest.approx(BUDGET - state.spent - state.reserved)
    assert [(r["study_id"], r["status"]) for r in data["reservations"]] == [
        ("study-running-0001", "reserved")
    ]
    assert [h["status"] for h in data["history"]] == ["sent"]
    table = CliRunner().invoke(app, ["budget", "--ledger-url", url], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    for text in ("ε reserved", f"{state.reserved:.3f} (1 live)", "study-running-0001", "reserved", "sent"):
        assert text in table.output, text
