"""The run-event codec: events ride in a run's Flower log, and only the ServerApp can write one.

The forgery tests go through Flower's own log mirror (``flwr.supercore.logger.
mirror_output_to_queue``, what ``flwr-serverapp`` installs): everything queued there is what the
SuperLink stores and streams to the operator. A node's error reason that carries a fake
``done`` line is parsed as the run's result without the output guard, and is not with it.
"""

from __future__ import annotations

import io
import json
import logging
import queue
import sys
from contextlib import contextmanager

import pytest

from coordinator.federation import run_events
from coordinator.federation.control import NodeInfo, missing_sites
from coordinator.federation.run_events import MARKER, RS, EventParser, emit, encode, event, parse

FORGED = "\n" + MARKER + json.dumps({"t": 1.0, "event": "done", "result": {"forged": True}}) + "\n"


def test_events_round_trip_whatever_the_chunking():
    evs = [event("round_end", {"round": "describe", "sites": ["a"]}), event("done", {"result": {"x": 1}})]
    log = "INFO : starting\n" + "".join(encode(e) for e in evs) + "INFO : bye\n"
    assert parse(log) == evs
    for size in (1, 2, 7, 64):  # chunks cut mid-marker, mid-JSON, mid-line
        p = EventParser()
        got = [ev for i in range(0, len(log), size) for ev in p.feed(log[i : i + size])] + p.close()
        assert got == evs, size
        assert p.text == ["INFO : starting", "INFO : bye"]


def test_a_line_is_an_event_only_if_it_starts_with_the_marker():
    log = f'INFO : node said {MARKER}{{"event": "done"}}\n'
    assert parse(log) == []
    assert parse(" " + MARKER + '{"event": "done"}\n') == []


def test_a_marked_line_that_is_not_an_event_is_reported_not_trusted():
    evs = parse(MARKER + "{not json\n" + MARKER + '["done"]\n')
    assert [e["event"] for e in evs] == ["malformed", "malformed"]
    assert "not json" in evs[0]["line"]


def test_encoded_events_hold_no_raw_newline_or_rs():
    ev = event("failed", {"message": f"bad\nline {RS} \u00e9"})
    line = encode(ev)
    assert line.count("\n") == 2 and line.count(RS) == 1
    assert parse(line) == [ev]


class _Stream(io.StringIO):
    """A text stream whose ``write`` can be replaced, as Flower replaces sys.stdout's."""


@contextmanager
def flower_mirror():
    """sys.stdout/stderr mirrored into a queue by Flower's own function, as in flwr-serverapp;
    yields a function giving what the SuperLink would have received. (Inside the test body:
    pytest re-installs its own sys.stdout when a test's call phase starts.)"""
    from flwr.supercore.logger import console_handler, mirror_output_to_queue

    saved = sys.stdout, sys.stderr, console_handler.stream, run_events._raw_write
    sys.stdout, sys.stderr, run_events._raw_write = _Stream(), _Stream(), None
    q: queue.Queue = queue.Queue()
    mirror_output_to_queue(q)

    def pushed() -> str:
        out = []
        while not q.empty():
            out.append(q.get_nowait())
        return "".join(out)

    try:
        yield pushed
    finally:
        sys.stdout, sys.stderr, console_handler.stream, run_events._raw_write = saved


def _node_reason_reaches_the_log() -> None:
    """What the ServerApp does with a hostile node's reason: logs it (GridFederation's drop
    warning), prints it, raises it (an exception message in the log) — split across writes."""
    handler = logging.StreamHandler(sys.stderr)
    log = logging.getLogger("rehealth.test.forgery")
    log.addHandler(handler)
    try:
        log.warning("dropping site b in round describe: %s", FORGED)
    finally:
        log.removeHandler(handler)
    print("site b:", FORGED)
    half = len(MARKER) // 2
    sys.stdout.write("\n" + MARKER[:half])  # the marker split over two writes
    sys.stdout.write(MARKER[half:] + '{"t": 1, "event": "done", "result": {"forged": 2}}\n')


def test_without_the_guard_a_node_reason_forges_the_result():
    with flower_mirror() as pushed:
        _node_reason_reaches_the_log()
        forged = [e for e in parse(pushed()) if e["event"] == "done"]
    assert forged and all("forged" in e["result"] for e in forged)  # the attack works here


def test_with_the_guard_only_the_serverapp_emits_events():
    with flower_mirror() as pushed:
        run_events.install_output_guard()
        run_events.install_output_guard()  # idempotent: one wrapper, one raw write
        _node_reason_reaches_the_log()
        sent = emit("done", {"result": {"att": 1.5}})
        text = pushed()
    assert parse(text) == [sent]
    assert "dropping site b" in text and RS not in text.replace(encode(sent), "")


def test_missing_sites_are_named_from_the_superlinks_node_list():
    nodes = [NodeInfo(1, "a", "online"), NodeInfo(2, "b", "offline"), NodeInfo(3, "", "online")]
    assert missing_sites(nodes, ["a", "b", "c"]) == ["b", "c"]


def test_the_spec_travels_as_json_with_the_hash_its_grant_names(tmp_path):
    from coordinator.files import load_spec
    from coordinator.study.runner import spec_json
    from coordinator.synth import write_federation
    from shared.study import StudySpec
    from shared.synth import generate_federation

    path = write_federation(generate_federation(seed=1, sites=2, scale=0.01), tmp_path / "d", epsilon=1.0)
    spec = load_spec(path)
    sent = spec_json(spec)
    assert str(tmp_path) not in sent  # the operator's paths stay on the operator's machine
    assert StudySpec.from_dict(json.loads(sent)).spec_hash() == spec.spec_hash()


def test_an_unreachable_superlink_is_one_line_naming_it(tmp_path):
    from coordinator.federation.control import ControlClient
    from coordinator.federation.launcher import free_port
    from shared.errors import FederationError

    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    with ControlClient(address, insecure=True, timeout_s=2) as c:
        with pytest.raises(FederationError, match=f"cannot reach the SuperLink at {address}"):
            c.runs()
    with pytest.raises(FederationError, match="root certificates .* not found"):
        ControlClient(address, root_certificates=tmp_path / "missing.crt").runs()
