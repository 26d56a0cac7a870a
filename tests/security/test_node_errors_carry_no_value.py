"""No value in any node error (issue #18, deliverable 3): a node-side ``ValueError`` once carried
a raw cell value (``'D-000007'``) to the coordinator.

The attack: a site whose data holds a canary value where the study needs a number. The node's
store holds a cohort row the ingest would have refused (an older or hand-edited store), so
reading the study's columns raises numpy's ``ValueError: could not convert string to float:
'<canary>'``. The real ClientApp behind the in-process Grid answers; the test greps everything a
coordinator gets back (the study's error, every reply) and everything the node and coordinator
logged for the canary. Then a bug whose message quotes the data (fault injected into the node's
read path) must leave as code 5000 with its fixed text, and reach the log as its type only.
"""

from __future__ import annotations

import logging

import pytest
from flower_inprocess import signed_grid
from sqlalchemy import select, update

from coordinator.files import load_spec
from coordinator.flower.federation import GridFederation
from coordinator.synth import write_federation
from node.ingest.pipeline import ingest_file
from node.ledger import PrivacyLedger
from node.pseudonym import Pseudonymizer
from node.store import models, open_store
from shared.driver import run_study
from shared.errors import FederationError
from shared.protocol import CODE_DATA, CODE_INTERNAL, ERROR_TEXT
from shared.synth import generate_federation

CANARY = "D-000007"


@pytest.fixture
def store_site(tmp_path):
    """A one-site DP study whose node answers from its store; one stored cohort row holds the
    canary in an outcome the study asks for."""
    data = write_federation(generate_federation(seed=5, sites=1, scale=0.03), tmp_path / "data")
    spec = load_spec(data)
    spec = spec.model_copy(
        update={"privacy": spec.privacy.model_copy(update={"enabled": True, "epsilon": 2.0})}
    )
    (site,) = spec.sites
    url = f"sqlite:///{tmp_path / 'node.db'}"
    store = open_store(url)
    summary = ingest_file(
        store,
        site.data,
        kind="cohort",
        pseudonymize=Pseudonymizer(key=bytes(range(32)), site_id=site.name).many,
        site_id=site.name,
    )
    assert summary.quarantined == 0
    outcome = spec.outcomes[0].name
    with store.engine.begin() as conn:  # what an older or hand-edited store may hold
        pseudonym, extras = conn.execute(select(models.cohort.c.pseudonym, models.cohort.c.extras)).first()
        conn.execute(
            update(models.cohort)
            .where(models.cohort.c.pseudonym == pseudonym)
            .values(extras={**extras, outcome: CANARY})
        )
    return spec, url


def _everything_logged(caplog) -> str:
    return "\n".join([caplog.text, *(r.getMessage() for r in caplog.records)])


def _federation(spec, url, workdir):
    """The node on the in-process Grid, and every reply it sends (what a coordinator reads)."""
    grid, grant = signed_grid(spec, workdir, extra={"store-url": url, "budget-epsilon": 10.0})
    replies: list = []
    node = grid.client_app

    def answering(msg, context):
        replies.append(node(msg, context))
        return replies[-1]

    grid.client_app = answering
    fed = GridFederation(grid, poll_s=0.0)
    fed.wait_for_nodes(1)
    return grid, fed, grant, replies


def test_a_canary_cell_that_breaks_the_read_leaves_no_trace_on_the_wire_or_in_the_logs(
    store_site, tmp_path, caplog
):
    spec, url = store_site
    caplog.set_level(logging.DEBUG)
    grid, fed, grant, replies = _federation(spec, url, tmp_path / "fed")
    with pytest.raises(FederationError) as e:
        run_study(spec, fed, grant=grant)
    error = str(e.value)
    assert ERROR_TEXT[CODE_DATA] in error and e.value.round_name == "describe"
    assert CANARY not in error
    assert len(replies) == 3  # reserve, describe (refused), cancel
    assert replies and all(CANARY not in str(m.error.reason if m.has_error() else m.content) for m in replies)
    assert any(m.has_error() and m.error.code == CODE_DATA for m in replies)
    logged = _everything_logged(caplog)
    assert "cannot read its study data: ValueError" in logged  # the node says what failed
    assert CANARY not in logged
    # paid before the data were read; the rest of the reservation freed by the driver's cancel
    (cfg,) = grid.node_configs.values()
    ledger = PrivacyLedger(f"sqlite:///{cfg['state-dir']}/ledger.db")
    assert [h.query for h in ledger.history()] == ["describe"]
    assert [r.status for r in ledger.reservations()] == ["cancelled"]


def test_a_bug_whose_message_quotes_a_cell_leaves_as_code_5000_and_its_type(
    store_site, tmp_path, caplog, monkeypatch
):
    """Fault injection: the node's read path raises an exception the node does not expect
    (not one of its own), with a cell of the site's data in its message."""
    from node.runtime import NodeRuntime

    spec, url = store_site

    def buggy_read(self, query):
        cell = open_store(self.store_url).cohort_columns  # noqa: F841 - a read happened
        value = CANARY  # as a library would quote the cell it choked on
        raise KeyError(f"no column for {value!r}")

    monkeypatch.setattr(NodeRuntime, "_site_arrays", buggy_read)
    caplog.set_level(logging.DEBUG)
    grid, fed, grant, replies = _federation(spec, url, tmp_path / "fed")
    with pytest.raises(FederationError) as e:
        run_study(spec, fed, grant=grant)
    assert ERROR_TEXT[CODE_INTERNAL] in str(e.value) and CANARY not in str(e.value)
    errors = [m.error for m in replies if m.has_error()]
    assert [x.code for x in errors] == [CODE_INTERNAL]
    assert errors[0].reason == f"site {spec.sites[0].name}: {ERROR_TEXT[CODE_INTERNAL]}"
    logged = _everything_logged(caplog)
    assert "unexpected KeyError" in logged and "buggy_read" in logged  # type and frames, locally
    assert CANARY not in logged
