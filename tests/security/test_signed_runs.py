"""Runs that the operator did not sign get nothing from real SuperNodes (issue #16, item 6).

Open-source Flower lets anyone who reaches the SuperLink submit a run (its run-submission API
has no authentication; the CA certificate is public). Before this change, ``flwr run`` of the
*shipped* ServerApp with the caller's own run config (their own spec: an exact study, caps of
1e7) wrote an exact result to a folder the caller chose. Now every node checks each query's
grant against the coordinator key pinned in its own config, so such a run ends in an error and
no result: unsigned, signed by another key, or a genuine grant replayed under another spec or
after its study ran.
"""

from __future__ import annotations

import json

import pytest

from coordinator.federation.launcher import LocalFederation
from coordinator.files import load_spec
from coordinator.report.signing import generate_keypair
from coordinator.study.runner import coordinator_keys, sign_study, site_nodes, submit_until_started
from coordinator.synth import write_federation
from coordinator.synth.io import study_document, to_toml
from shared.synth import generate_federation

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Two DP-only SuperNodes (the defaults) pinning the operator's key."""
    base = tmp_path_factory.mktemp("signed-runs")
    synth = generate_federation(seed=21, sites=2, scale=0.02)
    spec_path = write_federation(synth, base / "data")
    doc = study_document(synth, epsilon=1.0)
    doc["privacy"]["unresolved_fit"] = "warn"  # a few hundred rows: this is about who may ask
    # one Newton round: the genuine run still goes through every round kind (and the replay is
    # refused at its first release), with three ClientApp processes per node fewer
    doc["privacy"]["ps_rounds"] = 1
    spec_path.write_text(to_toml(doc))
    spec = load_spec(spec_path)
    key, pub = coordinator_keys(base / "operator")
    with LocalFederation(base / "fed", site_nodes(spec, base / "fed", pub)) as fed:
        yield fed, spec_path, spec, key, None, synth, base


def _attack(fed, out, run_config):
    """Submit a run of the shipped ServerApp and wait for it; ``(status, error.json or None)``.

    Submitted as the runner submits (:func:`submit_until_started`: a run whose ServerApp never
    started asked nobody anything and is submitted once more), so every assertion is about a
    run whose ServerApp did run.
    """
    _, status = submit_until_started(fed.client, run_config, out, timeout_s=300)
    assert (out / "progress.jsonl").exists(), "the ServerApp never started"
    error = json.loads((out / "error.json").read_text()) if (out / "error.json").exists() else None
    return status, error


def _exact_spec(synth, base, name):
    """The attacker's own spec over the same sites: exact answers, claims capped at 1e7."""
    doc = study_document(synth, epsilon=None)
    doc["outcomes"][0]["cap"] = 1e7
    path = base / "data" / f"{name}.toml"
    path.write_text(to_toml(doc))
    return path


def test_the_shipped_serverapp_with_an_own_unsigned_spec_gets_nothing(federation):
    fed, _, _, _, _, synth, base = federation
    out = base / "loot-unsigned"
    status, error = _attack(fed, out, {"spec-path": str(_exact_spec(synth, base, "own"))})
    assert status != "finished:completed" and error is not None
    assert "no signed grant" in error["message"]
    assert not (out / "result.json").exists()


def test_a_study_signed_by_another_key_is_refused_by_every_node(federation):
    fed, _, _, _, _, synth, base = federation
    other_key, _ = generate_keypair(base / "mallory")
    spec_path = _exact_spec(synth, base, "forged")
    out = base / "loot-forged"
    status, error = _attack(
        fed, out, {"spec-path": str(spec_path), "grant": sign_study(load_spec(spec_path), other_key)}
    )
    assert error is not None and "not authorised by the node's pinned coordinator key" in error["message"]
    assert not (out / "result.json").exists()


def test_a_genuine_grant_under_another_spec_or_replayed_gets_nothing(federation):
    fed, spec_path, spec, key, _, synth, base = federation
    genuine = sign_study(spec, key)
    # (a) the operator's genuine grant with the attacker's own spec: terms differ
    out = base / "loot-swapped"
    _, error = _attack(fed, out, {"spec-path": str(_exact_spec(synth, base, "swapped")), "grant": genuine})
    assert error is not None and "differ from its signed grant" in error["message"]
    assert not (out / "result.json").exists()
    # (b) the same genuine grant, its own spec, run once by its operator: the study runs...
    first = base / "replay-1"
    status, error = _attack(fed, first, {"spec-path": str(spec_path), "grant": genuine})
    assert error is None and status == "finished:completed", error
    result = json.loads((first / "result.json").read_text())
    assert result["privacy"]["enabled"] and {s["status"] for s in result["sites"]} == {"ok"}
    # ...and replayed by whoever read it from the run config: every release was had already
    out = base / "loot-replayed"
    _, error = _attack(fed, out, {"spec-path": str(spec_path), "grant": genuine})
    assert error is not None and "already had" in error["message"]
    assert not (out / "result.json").exists()
