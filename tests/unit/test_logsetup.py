"""shared.logsetup: one line per event, text or JSON, and no caller-supplied text can break a
line (a forged log line is an attack on the audit trail)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from shared.logsetup import HANDLER_NAME, setup_logging

HOSTILE = "ok\n2026-01-01T00:00:00.000Z INFO rehealth.api.audit: api call key_id=k-admin\r\x1b[2J\u2028x"


@pytest.fixture
def restore_root():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])


def _emit(fmt: str, msg: str, fields: dict) -> str:
    buf = io.StringIO()
    setup_logging(fmt, "INFO", stream=buf)
    logging.getLogger("rehealth.test").info(msg, extra={"fields": fields})
    logging.getLogger("rehealth.test").debug("below the level")
    return buf.getvalue()


def test_text_line_has_time_level_logger_message_fields(restore_root):
    out = _emit("text", "api call", {"route": "/v1/score", "status": 200, "who": "a b"})
    assert out.count("\n") == 1
    ts, level, logger, rest = out.rstrip("\n").split(" ", 3)
    assert ts.endswith("Z") and "T" in ts and level == "INFO" and logger == "rehealth.test:"
    assert rest == 'api call route=/v1/score status=200 who="a b"'  # a space cannot fake a pair


def test_json_line_is_one_object_with_typed_fields(restore_root):
    out = _emit("json", "api call", {"status": 413, "duration_ms": 0.5, "route": "/v1/score", "level": "x"})
    (line,) = out.splitlines()
    rec = json.loads(line)
    assert rec["msg"] == "api call" and rec["status"] == 413 and rec["duration_ms"] == 0.5
    assert rec["level"] == "INFO"  # a field never overwrites the envelope
    assert rec["logger"] == "rehealth.test" and rec["ts"].endswith("Z")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_control_characters_cannot_forge_a_line(restore_root, fmt):
    out = _emit(fmt, HOSTILE, {"request_id": HOSTILE})
    assert out.count("\n") == 1 and "\r" not in out and "\x1b" not in out and "\u2028" not in out
    if fmt == "json":
        rec = json.loads(out)
        assert "\n" not in rec["msg"] and "\n" not in rec["request_id"]
    # without the escaping the message alone would have made a second line starting with a date
    assert not any(line.startswith("2026-01-01") for line in out.splitlines())


def test_a_second_setup_replaces_the_handler(restore_root):
    logging.basicConfig()  # what the commands used to do
    setup_logging("text")
    setup_logging("json")
    handlers = logging.getLogger().handlers
    assert len(handlers) == 1 and handlers[0].name == HANDLER_NAME


def test_unknown_format_or_level_is_refused_naming_the_choices(restore_root):
    with pytest.raises(ValueError, match="text, json"):
        setup_logging("xml")
    with pytest.raises(ValueError, match="DEBUG"):
        setup_logging("text", "LOUD")


def test_node_commands_take_the_option_else_node_toml_and_pass_it_on(restore_root, tmp_path, monkeypatch):
    from node.cli._logging import FORMAT_ENV, LEVEL_ENV, setup_node_logging
    from node.config import NodeConfig
    from shared.logsetup import JsonFormatter, TextFormatter

    for name in (FORMAT_ENV, LEVEL_ENV):  # set, then deleted: monkeypatch restores both at the end
        monkeypatch.setenv(name, "-")
        monkeypatch.delenv(name)
    cfg = NodeConfig.from_dict({"site_id": "s", "log": {"format": "json", "level": "WARNING"}}, base=tmp_path)
    assert setup_node_logging(cfg, None, None) == ("json", "WARNING")
    assert isinstance(logging.getLogger().handlers[0].formatter, JsonFormatter)
    import os

    assert os.environ[FORMAT_ENV] == "json"  # what node run's scoring API process inherits
    assert setup_node_logging(cfg, "text", "debug") == ("text", "DEBUG")
    assert isinstance(logging.getLogger().handlers[0].formatter, TextFormatter)
    assert setup_node_logging(None, None, None) == ("text", "INFO")


def test_coordinator_run_refuses_an_unknown_format(restore_root, tmp_path):
    from typer.testing import CliRunner

    from coordinator.cli.coordinator import app

    res = CliRunner().invoke(app, ["run", "--kit", str(tmp_path), "--log-format", "xml"])
    assert res.exit_code == 2 and "xml" in res.output and "--log-format" in res.output
