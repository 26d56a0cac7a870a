"""Budget escapes (issue #16, item 4): ways to obtain a fresh ε budget for the same people.

Before this change (main at 2107399) each of these worked:

a. the same DP study run again with another ``--out`` folder: a local node's state, and so its
   ledger, lived under the output folder — the second run found a fresh ε = 10;
b. HR group views charged ``node.db`` (dataset "scoring-book") while studies charged
   ``<state-dir>/ledger.db`` (dataset = site name): two budgets for one population;
c. ``dataset = "<anything new>"`` in the node config selected a fresh budget in the same ledger.

Now a ledger holds one population's budget (:mod:`node.ledger`), local nodes keep it beside
their data (:func:`coordinator.study.runner.site_nodes`), node.toml's ``ledger_url`` is the one
group views charge, and the node config's ``dataset`` key is refused. The studies run through
the real ServerApp workflow and ClientApp code on the in-process Grid.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from flower_inprocess import InProcessGrid
from typer.testing import CliRunner

from coordinator.files import load_spec
from coordinator.flower.federation import GridFederation
from coordinator.study.runner import coordinator_keys, sign_study
from coordinator.study.runner import site_nodes as _site_nodes
from coordinator.synth import write_federation
from node.flower.client_app import app as client_app
from node.ledger import PrivacyLedger
from node.runtime import NodeRuntime
from shared.dp.accounting import epsilon_of_history
from shared.driver import run_study
from shared.errors import BudgetExceededError, FederationError, PrivacyError, SpecError
from shared.grant import SignedGrant
from shared.protocol import Describe, Reserve, StudyQuery
from shared.study import StudySpec
from shared.synth import generate_cohort, generate_federation


@pytest.fixture
def spec(tmp_path) -> StudySpec:
    """A DP study (ε = 4) over 3 synthetic sites whose data lives in this test's folder."""
    path = write_federation(generate_federation(seed=5, sites=3, scale=0.15), tmp_path / "data")
    spec = load_spec(path)
    return spec.model_copy(
        update={"privacy": spec.privacy.model_copy(update={"enabled": True, "epsilon": 4.0})}
    )


def site_nodes(spec, workdir):
    """The runner's node configs, pinning the operator key kept beside ``workdir``'s parent."""
    return _site_nodes(spec, workdir, coordinator_keys(workdir.parent / "keys")[1])


def _grant(spec, workdir):
    return SignedGrant.model_validate_json(sign_study(spec, coordinator_keys(workdir.parent / "keys")[0]))


BUDGET = 6.0  # each node's operator policy (budget-epsilon): two ε = 4 studies fit, three do not


def _run_local(spec: StudySpec, out) -> None:
    """What ``rehealth study run --local --out OUT`` gives each node: the runner's node configs
    (:func:`site_nodes`), here on the in-process Grid instead of SuperNode processes."""
    nodes = site_nodes(spec, out / "federation")
    configs = {i + 1: {"site": n.site, **n.config, "budget-epsilon": BUDGET} for i, n in enumerate(nodes)}
    fed = GridFederation(InProcessGrid(client_app, configs), poll_s=0.0)
    fed.wait_for_nodes(len(nodes))
    run_study(spec, fed, grant=_grant(spec, out / "federation"))


def _ledgers(spec: StudySpec, out) -> dict[str, PrivacyLedger]:
    return {n.site: PrivacyLedger(n.config["ledger-url"]) for n in site_nodes(spec, out / "federation")}


def test_a_another_out_folder_is_not_a_fresh_budget(spec, tmp_path):
    _run_local(spec, tmp_path / "out-1")
    first = {
        site: (led.spent(), len(led.history())) for site, led in _ledgers(spec, tmp_path / "out-1").items()
    }
    assert all(0 < eps <= 4.0 + 1e-9 for eps, _ in first.values())

    _run_local(spec, tmp_path / "out-2")
    ledgers = _ledgers(spec, tmp_path / "out-2")
    assert {led.url for led in ledgers.values()} == {
        led.url for led in _ledgers(spec, tmp_path / "out-1").values()
    }  # one ledger per site
    for site, led in ledgers.items():
        history = led.history()
        eps1, n1 = first[site]
        assert len(history) == 2 * n1  # the second run's releases follow the first's
        assert history[n1].epsilon_after > eps1  # its running total continues from there
        assert led.spent() == pytest.approx(
            epsilon_of_history(
                history=[(h.noise_multiplier, h.sample_rate, h.steps) for h in history],
                delta=led.state().delta,
            )
        )
        assert eps1 < led.spent() <= BUDGET

    # a third run does not fit what is left (ε = 4 composed over three runs is about 6.8)
    with pytest.raises(FederationError, match="privacy budget of this node's population"):
        _run_local(spec, tmp_path / "out-3")
    assert all(led.spent() <= BUDGET + 1e-9 for led in ledgers.values())
    # replaying the study's planned releases at a node is refused by its ledger
    node = site_nodes(spec, tmp_path / "out-4")[0]
    runtime = NodeRuntime.from_node_config({"site": node.site, **node.config, "budget-epsilon": BUDGET})
    query = StudyQuery.for_spec(spec, (Describe(),))
    led = runtime.ledger()
    with pytest.raises(BudgetExceededError, match="left, this release"):
        for r in runtime._plan(query).releases:
            led.charge(study_id=query.study_id, query=r.query, sigma=r.sigma, sensitivity=r.sensitivity)
    assert led.spent() <= BUDGET + 1e-9


def _book_app(node_dir, ledger: PrivacyLedger, sigma: float):
    from node.api.app import create_app
    from node.api.groups import GroupPolicy
    from node.risk.model_store import ModelStore, TrainingRecord

    model = ModelStore(node_dir / "models").save(
        arrays=[np.full((1, 16), 0.2), np.array([-3.0])], record=TrainingRecord(rounds=1)
    )
    book, _ = generate_cohort(n=2000, seed=5)
    app = create_app(
        keys={"hr-key": "hr"},
        model=model,
        book=book,
        ledger=ledger,
        group_policy=GroupPolicy(sigma=sigma, delta=ledger.state().delta),
    )
    return TestClient(app, headers={"X-API-Key": "hr-key"})


def test_b_group_views_and_studies_draw_from_one_budget(spec, tmp_path):
    from node.cli import app as node_cli
    from node.config import NodeConfig

    node_dir = tmp_path / "node"
    node_dir.mkdir()
    site = spec.sites[0]
    (node_dir / "node.toml").write_text(f'site_id = "{site.name}"\n[budget]\nepsilon = 3.0\n')
    cfg = NodeConfig.from_toml(node_dir / "node.toml")
    assert cfg.ledger_url == f"sqlite:///{node_dir / 'ledger.db'}"
    # the SuperNode of this node names the same ledger (node config ledger-url)
    runtime = NodeRuntime.from_node_config(
        {
            "site": site.name,
            "data-path": site.data,
            "state-dir": str(node_dir / "state"),
            "ledger-url": cfg.ledger_url,
            "budget-epsilon": cfg.budget.epsilon,
            "budget-delta": cfg.budget.delta,
            "coordinator-key": str(coordinator_keys(tmp_path / "keys")[1]),
        }
    )
    ledger = runtime.ledger()

    # HR group view, served by the node API: charged to the population budget
    # a view releases counts and risk sums (sensitivity √2): σ = 2√2 is a noise multiplier of 2
    with _book_app(node_dir, PrivacyLedger(cfg.ledger_url), sigma=2.0 * np.sqrt(2.0)) as client:  # ε ≈ 2.25
        assert client.get("/v1/groups", params={"by": "department"}).status_code == 200
    after_view = ledger.spent()
    assert after_view > 0

    # a study on the same node: charged to the same budget, on top of the view
    small = spec.model_copy(update={"privacy": spec.privacy.model_copy(update={"epsilon": 0.5})})
    grant = _grant(small, tmp_path / "out")
    _nothing, reserved = runtime.answer(StudyQuery.for_spec(small, (Reserve(),), grant=grant))
    assert reserved["epsilon_spent"] == pytest.approx(after_view) and reserved["epsilon_reserved"] > 0
    small_query = StudyQuery.for_spec(small, (Describe(),), grant=grant)
    _answers, meta = runtime.answer(small_query)
    assert meta["epsilon_spent"] == pytest.approx(ledger.spent())
    assert ledger.spent() > after_view
    kinds = [h.kind for h in ledger.history()]
    assert kinds == ["group_view", "study"]

    # what is left is shared: a view that fit the whole budget alone is refused now
    # (exact accountant: ε ≈ 2.03 alone, ≈ 3.20 on top of the first view and the study's plan)
    with _book_app(node_dir, PrivacyLedger(cfg.ledger_url), sigma=2.2 * np.sqrt(2.0)) as client:
        refused = client.get("/v1/groups", params={"by": "age_band"})
    assert refused.status_code == 409 and "left" in refused.json()["error"]

    res = CliRunner().invoke(
        node_cli, ["budget", "--config", str(node_dir / "node.toml"), "--format", "json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["budget"]["spent"] == pytest.approx(ledger.spent())
    assert out["budget"]["epsilon"] == 3.0 and out["budget"]["releases"] == 2
    # the rest of the study's plan is reserved, shown apart from what was spent
    assert out["budget"]["reserved"] == pytest.approx(ledger.state().reserved) and ledger.state().reserved > 0
    assert [(r["study_id"], r["status"]) for r in out["reservations"]] == [(small_query.study_id, "reserved")]
    assert [g["id"] for g in out["by_kind"]["group_view"]] == ["department"]
    assert [(g["id"], g["queries"]) for g in out["by_kind"]["study"]] == [
        (small_query.study_id, {"describe": 1})
    ]


def test_c_a_dataset_name_cannot_select_a_fresh_budget(spec, tmp_path):
    (node,) = site_nodes(spec.model_copy(update={"sites": spec.sites[:1]}), tmp_path / "out")
    with pytest.raises(SpecError, match="'dataset'"):
        NodeRuntime.from_node_config({"site": node.site, **node.config, "dataset": "fresh"})

    # through the ClientApp: the node answers nothing (a fixed error text: its config is the
    # operator's business, named in the node's log) and charges nothing
    configs = {1: {"site": node.site, **node.config, "dataset": "fresh"}}
    fed = GridFederation(InProcessGrid(client_app, configs), poll_s=0.0)
    fed.wait_for_nodes(1)
    one = spec.model_copy(update={"sites": spec.sites[:1]})
    with pytest.raises(FederationError, match="internal error; see the node's log"):
        run_study(one, fed, grant=_grant(one, tmp_path / "out"))
    ledger = PrivacyLedger(node.config["ledger-url"])
    assert not ledger.has_budget() or ledger.history() == []

    # nor a name passed in code: the ledger has one budget and refuses any other key
    ledger.ensure_budget(epsilon=1.0, delta=1e-5)
    ledger.charge(study_id="s", query="describe", sigma=8.0, sensitivity=1.0)
    with pytest.raises(PrivacyError, match="one budget"):
        ledger.charge(dataset="fresh", study_id="s", query="describe", sigma=8.0, sensitivity=1.0)
    runtime = NodeRuntime(
        site=node.site, ledger_url=node.config["ledger-url"], dataset="fresh", budget_epsilon=1.0
    )
    with pytest.raises(PrivacyError, match="one budget"):
        runtime.ledger()
    assert len(ledger.history()) == 1
