"""`rehealth node ingest` and `rehealth node intervention add`: output formats and errors."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from node.cli import app
from node.cli.ingest import parse_mapping
from shared.errors import DataError


@pytest.fixture
def node_dir(tmp_path):
    res = CliRunner().invoke(app, ["init", "--dir", str(tmp_path), "--site-id", "employer_x"])
    assert res.exit_code == 0, res.output
    return tmp_path


def test_ingest_json_summary_adds_up(node_dir, valid_person):
    rows = [valid_person(f"E-{i}") for i in range(5)] + [valid_person("E-9", bmi="70")]
    df = pd.DataFrame(rows).rename(columns={"person_id": "staff_no", "bmi": "BMI"})
    path = node_dir / "staff.parquet"
    df.to_parquet(path, index=False)
    res = CliRunner().invoke(
        app,
        [
            "ingest",
            str(path),
            "--kind",
            "persons",
            "--config",
            str(node_dir / "node.toml"),
            "--map",
            "staff_no=person_id",
            "--map",
            "BMI=bmi",
            "--format",
            "json",
        ],
    )
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    assert (s["rows"], s["loaded"], s["quarantined"], s["by_reason"]) == (6, 5, 1, {"out of bounds": 1})
    assert s["rows"] == s["loaded"] + s["quarantined"] + s["already_present"]


def test_ingest_errors_are_one_line_and_exit_1(node_dir, tmp_path):
    runner = CliRunner()
    cfg = str(node_dir / "node.toml")
    res = runner.invoke(app, ["ingest", str(tmp_path / "none.csv"), "-k", "persons", "-c", cfg])
    assert res.exit_code == 1 and "not found" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["ingest", "x.csv", "-k", "persons", "-c", str(tmp_path / "no.toml")])
    assert res.exit_code == 1 and "rehealth node init" in res.output
    res = runner.invoke(app, ["ingest", "x.csv", "-k", "persons", "-c", cfg, "--format", "xml"])
    assert res.exit_code == 2


def test_parse_mapping():
    assert parse_mapping(["a=b", "Alter=age"]) == {"a": "b", "Alter": "age"}
    for bad in ("a", "=b", "a="):
        with pytest.raises(DataError, match="site_column=our_column"):
            parse_mapping([bad])


def test_intervention_add_json(node_dir):
    res = CliRunner().invoke(
        app,
        [
            "intervention",
            "add",
            "-c",
            str(node_dir / "node.toml"),
            "--person-id",
            "E-1",
            "--code",
            "digital_prevention",
            "--start",
            "2024-01-10",
            "--end",
            "2024-03-10",
            "--channel",
            "app",
            "--format",
            "json",
        ],
    )
    assert res.exit_code == 0, res.output
    rec = json.loads(res.output)
    assert rec["code"] == "digital_prevention" and rec["end"] == "2024-03-10"
    assert "E-1" not in res.output


def test_ingest_defaults_to_the_configured_data_path(node_dir, valid_person):
    (node_dir / "in").mkdir()
    pd.DataFrame([valid_person("E-1")]).to_csv(node_dir / "in" / "p.csv", index=False)
    cfg = node_dir / "node.toml"
    cfg.write_text(cfg.read_text().replace('# persons = "data/persons.csv"', 'persons = "in/p.csv"'))
    runner = CliRunner()
    res = runner.invoke(app, ["ingest", "-k", "persons", "-c", str(cfg), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["loaded"] == 1
    res = runner.invoke(app, ["ingest", "-k", "outcomes", "-c", str(cfg)])
    assert res.exit_code == 1 and "no FILE given" in res.output
