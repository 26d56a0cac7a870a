"""Runs that the operator did not sign get nothing from real SuperNodes (issue #16, item 6).

Open-source Flower lets anyone who reaches the SuperLink submit a run (its run-submission API
has no authentication; the CA certificate is public). Before this change, ``flwr run`` of the
*shipped* ServerApp with the caller's own run config (their own spec: an exact study, caps of
1e7) returned an exact result to the caller. Now every node checks each query's
grant against the coordinator key pinned in its own config, so such a run ends in an error and
no result: unsigned, signed by another key, or a genuine grant replayed under another spec or
after its study ran.
"""

from __future__ import annotations

import pytest

from coordinator.federation.launcher import LocalFederation
from coordinator.files import load_spec
from coordinator.report.signing import generate_keypair
from coordinator.study.runner import coordinator_keys, sign_study, site_nodes, spec_json, start_and_follow
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


def _attack(fed, run_config):
    """Start a run of the shipped ServerApp and follow it; ``(status, failure event or None,
    result or None)``, as its caller gets them back through Flower.

    Started as the runner starts it (:func:`start_and_follow`: a run whose ServerApp never
    started asked nobody anything and is started once more), so every assertion is about a
    run whose ServerApp did run.
    """
    outcome = start_and_follow(fed.control, run_config, timeout_s=300)
    assert outcome.started, "the ServerApp never started"
    done = outcome.done
    return outcome.status, outcome.error, done["result"] if done else None


def _spec(path) -> str:
    return spec_json(load_spec(path))


def _exact_spec(synth, base, name):
    """The attacker's own spec over the same sites: exact answers, claims capped at 1e7."""
    doc = study_document(synth, epsilon=None)
    doc["outcomes"][0]["cap"] = 1e7
    path = base / "data" / f"{name}.toml"
    path.write_text(to_toml(doc))
    return path


def test_the_shipped_serverapp_with_an_own_unsigned_spec_gets_nothing(federation):
    fed, _, _, _, _, synth, base = federation
    status, error, result = _attack(fed, {"spec": _spec(_exact_spec(synth, base, "own"))})
    assert status != "finished:completed" and error is not None
    assert "no signed grant" in error["message"]
    assert result is None


def test_a_study_signed_by_another_key_is_refused_by_every_node(federation):
    fed, _, _, _, _, synth, base = federation
    other_key, _ = generate_keypair(base / "mallory", passphrase=None)
    spec_path = _exact_spec(synth, base, "forged")
    status, error, result = _attack(
        fed, {"spec": _spec(spec_path), "grant": sign_study(load_spec(spec_path), other_key)}
    )
    assert error is not None and "not authorised by the node's pinned coordinator key" in error["message"]
    assert result is None


def test_a_genuine_grant_under_another_spec_or_replayed_gets_nothing(federation):
    fed, spec_path, spec, key, _, synth, base = federation
    genuine = sign_study(spec, key)
    # (a) the operator's genuine grant with the attacker's own spec: terms differ
    _, error, result = _attack(fed, {"spec": _spec(_exact_spec(synth, base, "swapped")), "grant": genuine})
    assert error is not None and "differ from its signed grant" in error["message"]
    assert result is None
    # (b) the same genuine grant, its own spec, run once by its operator: the study runs...
    status, error, result = _attack(fed, {"spec": _spec(spec_path), "grant": genuine})
    assert error is None and status == "finished:completed", error
    assert result["privacy"]["enabled"] and {s["status"] for s in result["sites"]} == {"ok"}
    # ...and replayed by whoever read it from the run config: every release was had already
    _, error, result = _attack(fed, {"spec": _spec(spec_path), "grant": genuine})
    assert error is not None and "already had" in error["message"]
    assert result is None
