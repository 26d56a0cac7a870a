"""The study workflow through the real ServerApp/ClientApp code, on an in-process Grid."""

import numpy as np
import pandas as pd
import pytest
from flower_inprocess import InProcessGrid, signed_grid

from coordinator.files import load_spec
from coordinator.flower.federation import GridFederation
from coordinator.study.assemble import assemble_result
from coordinator.synth import write_federation
from node.flower.client_app import app as client_app
from shared.driver import run_study
from shared.errors import FederationError
from shared.psm.reference import estimate_att_cells_withheld, estimate_att_pooled
from shared.synth import generate_federation


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    out = tmp_path_factory.mktemp("fed")
    fed = generate_federation(seed=11, sites=4, scale=0.08)
    spec_path = write_federation(fed, out, epsilon=None)  # exact: the sites are one owner's
    return load_spec(spec_path), fed


def _grid(spec, tmp_path, fail=None):
    return signed_grid(spec, tmp_path, fail=fail)


def _run(spec, fed, grid_and_grant):
    return run_study(spec, fed, grant=grid_and_grant[1])


def _scaled(spec, cohort):
    feats = [c.as_feature() for c in spec.covariates]
    lo = np.array([f.lo for f in feats])
    hi = np.array([f.hi for f in feats])
    z = (cohort[[f.name for f in feats]].to_numpy(float) - lo) / (hi - lo)
    return (
        z,
        cohort[spec.treatment.column].to_numpy(float),
        cohort[[o.name for o in spec.outcomes]].to_numpy(float),
    )


def _pooled_without_small_cells(spec, fed, beta, edges, k=11):
    """The pooled estimator over the rows in cells of at least ``k`` at their site."""
    return estimate_att_cells_withheld(
        sites=[_scaled(spec, s.cohort) for s in fed.sites],
        beta=beta,
        edges=edges,
        outcomes=spec.outcomes,
        covariates=[c.name for c in spec.covariates],
        min_cell=k,
    )


def _pooled(spec, fed):
    cohort = pd.concat([s.cohort for s in fed.sites], ignore_index=True)
    feats = [c.as_feature() for c in spec.covariates]
    lo = np.array([f.lo for f in feats])
    hi = np.array([f.hi for f in feats])
    z = (cohort[[f.name for f in feats]].to_numpy(float) - lo) / (hi - lo)
    return estimate_att_pooled(
        z=z,
        t=cohort[spec.treatment.column].to_numpy(float),
        y=cohort[[o.name for o in spec.outcomes]].to_numpy(float),
        outcomes=spec.outcomes,
        covariates=[c.name for c in spec.covariates],
        tol=spec.federation.tol,
        ridge=spec.federation.ridge,
        caliper_sd=spec.strata.caliper_sd,
    )


def test_federated_equals_pooled(federation, tmp_path):
    spec, fed = federation
    gg = _grid(spec, tmp_path)
    grid_fed = GridFederation(gg[0], poll_s=0.0)
    grid_fed.wait_for_nodes(len(spec.sites))
    run = _run(spec, grid_fed, gg)
    pooled = _pooled(spec, fed)
    np.testing.assert_allclose(run.fitter.beta, pooled.fitter.beta, rtol=1e-9, atol=1e-12)
    # exact nodes never release a cell of fewer than 11 people: the federated estimate is the
    # pooled estimator over the rows in cells of at least 11 at their site, to 1e-9
    reference = _pooled_without_small_cells(spec, fed, run.fitter.beta, run.table.edges)
    suppressed = 0
    for o in spec.outcomes:
        a, b = run.estimate.outcome(o.name), reference.outcome(o.name)
        assert a.att == pytest.approx(b.att, rel=1e-9, abs=1e-12)
        assert a.se == pytest.approx(b.se, rel=1e-9)
        assert a.n_treated == b.n_treated and a.n_treated_dropped == b.n_treated_dropped
        full = pooled.estimate.outcome(o.name)
        suppressed = full.n_treated + full.n_treated_dropped - a.n_treated - a.n_treated_dropped
        assert abs(a.att - full.att) < 3 * full.se  # what the suppression costs is small
    assert suppressed >= 0
    result = assemble_result(run, dropped={}, started_at="t0", finished_at="t1", total_s=1.0)
    assert {s.name for s in result.sites} == {s.name for s in spec.sites}
    # each site's size as released: an arm of fewer than 11 people is withheld (released as 0)
    arms = [np.bincount(s.cohort[spec.treatment.column].to_numpy(int), minlength=2) for s in fed.sites]
    assert sum(s.n for s in result.sites) == sum(int(a[a >= 11].sum()) for a in arms)
    # fewer round trips than a cold Newton start would need: describe + few fits (psm rides along)
    assert len(run.rounds) <= 6, [r.name for r in run.rounds]


def test_node_failure_names_node_and_round(federation, tmp_path):
    spec, _ = federation
    victim = spec.sites[1].name
    gg = _grid(spec, tmp_path, fail=lambda nid, msg: nid == 2 and msg.metadata.group_id == "ps-fit-2")
    fed = GridFederation(gg[0], poll_s=0.0, timeout_s=0.5)
    fed.wait_for_nodes(len(spec.sites))
    with pytest.raises(FederationError) as e:
        _run(spec, fed, gg)
    assert e.value.node == victim and e.value.round_name == "ps-fit-2"
    assert victim in str(e.value) and "ps-fit-2" in str(e.value)


def test_min_nodes_goes_on_without_failed_node_and_says_so(federation, tmp_path):
    spec, fed = federation
    spec = spec.model_copy(update={"federation": spec.federation.model_copy(update={"min_nodes": 3})})
    victim = spec.sites[1].name
    gg = _grid(spec, tmp_path, fail=lambda nid, msg: nid == 2 and msg.metadata.group_id == "ps-fit-2")
    gf = GridFederation(gg[0], poll_s=0.0, timeout_s=0.5, min_nodes=3)
    gf.wait_for_nodes(len(spec.sites))
    run = _run(spec, gf, gg)
    result = assemble_result(run, dropped=gf.dropped, started_at="t0", finished_at="t1", total_s=1.0)
    failed = [s for s in result.sites if s.status == "failed"]
    assert [s.name for s in failed] == [victim] and "ps-fit-2" in failed[0].error
    assert any(victim in w for w in result.warnings)
    # the estimate is the pooled one over the remaining sites
    rest = type(fed)(sites=tuple(s for s in fed.sites if s.name != victim), truth=fed.truth)
    pooled = _pooled_without_small_cells(spec, rest, run.fitter.beta, run.table.edges)
    for o in spec.outcomes:
        assert run.estimate.outcome(o.name).att == pytest.approx(pooled.outcome(o.name).att, rel=1e-9)


def test_node_refuses_unknown_query(federation, tmp_path):
    from flwr.app import ConfigRecord, Message, RecordDict

    spec, _ = federation
    grid, _ = _grid(spec, tmp_path)
    msg = Message(
        RecordDict({"request": ConfigRecord({"json": '{"op": "dump_rows"}'})}),
        dst_node_id=1,
        message_type="query.study",
    )
    reply = list(grid.send_and_receive([msg]))[0]
    assert reply.has_error() and reply.error.code == 4001
    assert spec.sites[0].name in reply.error.reason


def test_nodes_answer_from_their_ingested_store_as_from_the_file(federation, tmp_path):
    """A node configured with its store (ingested, pseudonymised cohort) gives the same study."""
    from node.ingest import ingest_file
    from node.pseudonym import Pseudonymizer
    from node.store import open_store

    spec, fed = federation
    urls = {}
    for s in spec.sites:
        url = f"sqlite:///{tmp_path / (s.name + '.db')}"
        summary = ingest_file(
            open_store(url),
            s.data,
            kind="cohort",
            site_id=s.name,
            pseudonymize=Pseudonymizer(key=b"k" * 32, site_id=s.name).many,
        )
        assert summary.quarantined == 0
        urls[s.name] = url
    files, grant = _grid(spec, tmp_path)
    configs = {
        nid: {**{k: v for k, v in cfg.items() if k != "data-path"}, "store-url": urls[cfg["site"]]}
        for nid, cfg in files.node_configs.items()
    }
    gf = GridFederation(InProcessGrid(client_app, configs), poll_s=0.0)
    gf.wait_for_nodes(len(spec.sites))
    from_store = run_study(spec, gf, grant=grant)
    files_fed = GridFederation(files, poll_s=0.0)
    files_fed.wait_for_nodes(len(spec.sites))
    from_files = run_study(spec, files_fed, grant=grant)
    for o in spec.outcomes:
        assert from_store.estimate.outcome(o.name).att == pytest.approx(
            from_files.estimate.outcome(o.name).att, rel=1e-9
        )
