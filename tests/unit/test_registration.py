"""Pre-registration (`rehealth study register`): a registration signed before the study names its
spec; the report says so, and says when the spec changed after it or the registration came late.

The attacks: an operator who edits the spec after registering (the check must fail, and the
regulator's summary must say it), one who registers after the study ran (back-filled), and a
registration forged under another key (refused outright, not stated in the report).
"""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from report_fixtures import ISSUED_AT, make_result, make_spec
from typer.testing import CliRunner

from coordinator.cli.report import app as report_app
from coordinator.cli.study import app as study_app
from coordinator.files import load_spec, write_result
from coordinator.report.build import build_report
from coordinator.report.registration import RegistrationError, dump, load_verified, register
from shared.study import StudySpec

# keys are written and opened encrypted, as in production
runner = CliRunner(env={"REHEALTH_KEY_PASSPHRASE": "cli-test-passphrase", "REHEALTH_KEY_PASSPHRASE_FILE": ""})
BEFORE = "2026-11-20T09:00:00Z"  # the fixture study started 2026-11-23T19:40:00+00:00
AFTER = "2026-11-24T09:00:00Z"


def _check(report, name="pre_registration"):
    return next(c for c in report.checks if c.name == name)


def test_registration_before_the_study_passes_and_is_stated():
    key = Ed25519PrivateKey.generate()
    result = make_result(privacy=True)
    record = load_verified(
        dump(register(study="cv", spec_hash=result.spec_hash, key=key, at=BEFORE)), key.public_key()
    )
    report = build_report(result, issued_at=ISSUED_AT, registration=record)
    check = _check(report)
    assert check.passed is True and BEFORE in check.detail
    assert report.registration is not None
    assert report.registration.spec_matches and report.registration.preceded_start
    assert "does not hold" not in report.summaries.regulator


def test_spec_changed_after_registration_fails_and_the_summary_says_so():
    key = Ed25519PrivateKey.generate()
    result = make_result(privacy=True)
    registered = make_spec(privacy=False).spec_hash()  # the spec as it was registered: no DP
    assert registered != result.spec_hash
    record = register(study="cv", spec_hash=registered, key=key, at=BEFORE)
    report = build_report(result, issued_at=ISSUED_AT, registration=record)
    check = _check(report)
    assert check.passed is False and "spec changed after registration" in check.detail
    assert "Pre-registration does not hold" in report.summaries.regulator


def test_registration_after_the_study_started_fails():
    key = Ed25519PrivateKey.generate()
    result = make_result(privacy=True)
    record = register(study="cv", spec_hash=result.spec_hash, key=key, at=AFTER)
    check = _check(build_report(result, issued_at=ISSUED_AT, registration=record))
    assert check.passed is False and "not before the study started" in check.detail


def test_registration_under_another_key_or_altered_is_refused():
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    result = make_result(privacy=True)
    data = dump(register(study="cv", spec_hash=result.spec_hash, key=other, at=BEFORE))
    with pytest.raises(RegistrationError, match="does not verify"):
        load_verified(data, key.public_key())
    genuine = dump(register(study="cv", spec_hash=result.spec_hash, key=key, at=AFTER))
    backdated = genuine.replace(AFTER.encode(), BEFORE.encode())
    with pytest.raises(RegistrationError, match="does not verify"):
        load_verified(backdated, key.public_key())
    with pytest.raises(RegistrationError, match="not a study registration"):
        load_verified(b'{"kind": 1}', key.public_key())


def _spec_toml(spec: StudySpec) -> str:
    """The fixture spec as TOML (the CLI registers a file)."""
    s = spec.public().model_dump(mode="json")
    lines = [
        "[study]",
        f'name = "{s["study"]["name"]}"',
        f"seed = {s['study']['seed']}",
        f'description = "{s["study"]["description"]}"',
        "[treatment]",
        'column = "treated"',
        'intervention = "LIFESTYLE_BP"',
        f"cost_per_person = {s['treatment']['cost_per_person']}",
        "[privacy]",
        f"enabled = {str(s['privacy']['enabled']).lower()}",
        f"epsilon = {s['privacy']['epsilon']}",
        f"delta = {s['privacy']['delta']}",
    ]
    for o in s["outcomes"]:
        lines += ["[[outcomes]]", f'name = "{o["name"]}"', f"cap = {o['cap']}", f'kind = "{o["kind"]}"']
    for site in s["sites"]:
        lines += ["[[sites]]", f'name = "{site["name"]}"', f'data = "{site["data"]}"']
    return "\n".join(lines) + "\n"


def test_cli_register_then_render_states_the_registration(tmp_path):
    r = runner.invoke(report_app, ["keygen", "--out", str(tmp_path / "keys")])
    assert r.exit_code == 0, r.output
    key = tmp_path / "keys/coordinator.key"
    spec_path = tmp_path / "study.toml"
    spec_path.write_text(_spec_toml(make_spec(privacy=True)))
    result = make_result(privacy=True)
    assert load_spec(spec_path).spec_hash() == result.spec_hash
    plan = tmp_path / "plan.md"
    plan.write_text("ATT on claims, events, absence; 20 strata; no interim looks.\n")
    reg = tmp_path / "registration.json"
    args = ["register", "--spec", str(spec_path), "--key", str(key), "--plan", str(plan), "--out", str(reg)]
    r = runner.invoke(study_app, args)
    assert r.exit_code == 0, r.output
    record = json.loads(reg.read_bytes())
    assert record["analysis_plan"]["file"] == "plan.md" and record["spec_hash"] == result.spec_hash
    again = runner.invoke(study_app, args)  # a registration is never overwritten
    assert again.exit_code == 1 and "never overwritten" in again.output
    assert json.loads(reg.read_bytes()) == record

    # The registration is "now", after the fixture study's start (2026-11-23): render must say so.
    write_result(result, tmp_path / "result.json")
    r = runner.invoke(
        report_app,
        [
            "render",
            str(tmp_path / "result.json"),
            "--key",
            str(key),
            "--registration",
            str(reg),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "out/report.json").read_bytes())["report"]
    check = next(c for c in report["checks"] if c["name"] == "pre_registration")
    assert check["passed"] is False and "not before the study started" in check["detail"]
    assert report["registration"]["record"] == record
