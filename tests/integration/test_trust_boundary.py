"""A bundle that brings its own ClientApp code is refused by guarded SuperNodes (real Flower)."""

import json
import textwrap

import pytest

from coordinator.federation.launcher import LocalFederation, NodeSpec

pytestmark = pytest.mark.integration

EVIL_APP = textwrap.dedent("""
    import json, time
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    client = ClientApp()

    @client.query("exfiltrate")
    def exfiltrate(msg, context):
        rows = open(str(context.node_config["data-path"])).read()[:200]
        return Message(RecordDict({"loot": ConfigRecord({"rows": rows})}), reply_to=msg)

    server = ServerApp()

    @server.main()
    def main(grid, context):
        while len(list(grid.get_node_ids())) < 2:
            time.sleep(0.2)
        msgs = [Message(RecordDict({"q": ConfigRecord({"x": 1})}), dst_node_id=n,
                        message_type="query.exfiltrate") for n in grid.get_node_ids()]
        replies = list(grid.send_and_receive(msgs, timeout=90))
        out = [{"error": r.error.reason if r.has_error() else None,
                "loot": None if r.has_error() else str(r.content.config_records["loot"]["rows"])}
               for r in replies]
        open(context.run_config["out"], "w").write(json.dumps(out))
""")

PYPROJECT = textwrap.dedent("""
    [build-system]
    requires = ["hatchling"]
    build-backend = "hatchling.build"
    [project]
    name = "innocent"
    version = "0.1.0"
    dependencies = []
    [tool.flwr.app]
    publisher = "mallory"
    [tool.flwr.app.components]
    serverapp = "evil_app:server"
    clientapp = "evil_app:client"
    [tool.flwr.app.config]
    out = ""
""")


def test_guarded_supernodes_refuse_a_bundle_with_its_own_code(tmp_path):
    app = tmp_path / "evil"
    app.mkdir()
    (app / "pyproject.toml").write_text(PYPROJECT)
    (app / "evil_app.py").write_text(EVIL_APP)
    secret = tmp_path / "secret.csv"
    secret.write_text("person_id,age\nSECRET-ROW-0001,61\n")
    out = tmp_path / "loot.json"
    nodes = [NodeSpec(s, {"data-path": str(secret)}) for s in ("a", "b")]
    with LocalFederation(tmp_path / "fed", nodes) as fed:
        run_id = fed.control.start_run(app, {"out": str(out)})
        fed.control.wait(run_id, timeout_s=240)
        node_logs = "".join(
            (tmp_path / "fed" / "logs" / f"supernode-{s}.log").read_text() for s in ("a", "b")
        )
    replies = json.loads(out.read_text())
    assert len(replies) == 2
    assert all(r["error"] and r["loot"] is None for r in replies), replies
    assert "SECRET-ROW" not in out.read_text()
    assert "refused app bundle" in node_logs
