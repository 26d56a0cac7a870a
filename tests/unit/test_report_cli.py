"""`rehealth report` commands: keygen, render, verify (exit codes and messages)."""

from __future__ import annotations

import json

import pytest
from report_fixtures import make_result
from typer.testing import CliRunner

from coordinator.cli.report import app
from coordinator.files import write_result

# keys are written and opened encrypted, as in production
runner = CliRunner(env={"REHEALTH_KEY_PASSPHRASE": "cli-test-passphrase", "REHEALTH_KEY_PASSPHRASE_FILE": ""})


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    for name in ("keys", "other"):
        r = runner.invoke(app, ["keygen", "--out", str(d / name)])
        assert r.exit_code == 0, r.output
    write_result(make_result(privacy=True), d / "result.json")
    r = runner.invoke(
        app,
        ["render", str(d / "result.json"), "--key", str(d / "keys/coordinator.key"), "--out", str(d / "out")],
    )
    assert r.exit_code == 0, r.output
    for name in ("report.json", "report.html", "report.pdf"):
        assert str(d / "out" / name) in r.output
    return d


def _verify(path, pub, *extra):
    return runner.invoke(app, ["verify", str(path), "--key", str(pub), *extra])


def test_verify_intact_report_exits_0(rendered):
    r = _verify(rendered / "out/report.json", rendered / "keys/coordinator.pub")
    assert r.exit_code == 0 and r.output.startswith("OK:")
    # a valid signature is not a billable estimate: the fixture is not pre-registered
    assert "NOT FOR BILLING: failed gates pre_registration" in r.output
    r = _verify(rendered / "out/report.json", rendered / "keys/coordinator.pub", "--format", "json")
    out = json.loads(r.output)
    assert r.exit_code == 0 and out["valid"] is True
    assert out["billable"] is False and out["failed_gates"] == ["pre_registration"]


def test_verify_rejects_change_wrong_key_and_missing_signature(rendered, tmp_path):
    good = (rendered / "out/report.json").read_bytes()
    pub = rendered / "keys/coordinator.pub"
    altered = tmp_path / "altered.json"
    altered.write_bytes(good.replace(b'"att":-412.5', b'"att":-512.5', 1))
    r = _verify(altered, pub)
    assert r.exit_code == 1 and "report altered: signature does not match" in r.output
    r = _verify(rendered / "out/report.json", rendered / "other/coordinator.pub")
    assert r.exit_code == 1 and "signed by a different key" in r.output
    unsigned = tmp_path / "unsigned.json"
    unsigned.write_text(json.dumps({"report": json.loads(good)["report"]}))
    r = _verify(unsigned, pub, "--format", "json")
    assert r.exit_code == 1 and json.loads(r.output)["reason"] == "signature-missing"
    spaced = tmp_path / "spaced.json"
    spaced.write_bytes(good + b"\n")
    r = _verify(spaced, pub)
    assert r.exit_code == 1 and "bytes are not canonical" in r.output


def test_unreadable_key_is_a_usage_error(rendered, tmp_path):
    r = _verify(rendered / "out/report.json", tmp_path / "nope.pub")
    assert r.exit_code == 2 and "cannot read key" in r.output


def test_render_signed_report_verifies_first(rendered, tmp_path):
    signed = rendered / "out/report.json"
    r = runner.invoke(
        app,
        [
            "render",
            str(signed),
            "--pub",
            str(rendered / "other/coordinator.pub"),
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert r.exit_code == 1 and "different key" in r.output
    r = runner.invoke(
        app,
        [
            "render",
            str(signed),
            "--pub",
            str(rendered / "keys/coordinator.pub"),
            "--out",
            str(tmp_path / "y"),
            "--format",
            "json",
        ],
    )
    assert r.exit_code == 0 and set(json.loads(r.output)) == {"html", "pdf"}


def test_build_then_sign(rendered, tmp_path):
    doc = tmp_path / "doc.json"
    r = runner.invoke(app, ["build", str(rendered / "result.json"), "--out", str(doc)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        [
            "sign",
            str(doc),
            "--key",
            str(rendered / "keys/coordinator.key"),
            "--out",
            str(tmp_path / "signed"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert _verify(tmp_path / "signed/report.json", rendered / "keys/coordinator.pub").exit_code == 0


def test_keygen_refuses_to_overwrite(rendered):
    r = runner.invoke(app, ["keygen", "--out", str(rendered / "keys")])
    assert r.exit_code == 2 and "refusing to overwrite" in r.output
