"""No raw identifier reaches the store, the quarantine table, the logs or any CLI output."""

import logging
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from node.cli import app
from node.config import NodeConfig, default_config_text
from node.pseudonym import Pseudonymizer
from node.store import metadata, open_store

TOKEN = "ZQXRAW"  # distinctive: appears in no code, schema or message


def _raw(i: int) -> str:
    return f"{TOKEN}-{i:05d}"


def _node(tmp_path: Path, store_url: str) -> Path:
    cfg = tmp_path / "node.toml"
    cfg.write_text(
        default_config_text(site_id="insurer_a").replace(
            'store_url = "sqlite:///node.db"', f'store_url = "{store_url}"'
        )
    )
    return cfg


def _files(tmp_path: Path, valid_person) -> dict[str, Path]:
    persons = [valid_person(_raw(i)) for i in range(20)]
    persons += [
        valid_person(_raw(100), age="abc"),
        valid_person(_raw(3)),  # bad type, duplicate
        valid_person(_raw(101) + "X" * 130),
        valid_person(_raw(102), index_date="x"),
    ]
    events = [dict(person_id=_raw(i), code="bp_management", start="2024-03-01") for i in range(5)]
    events += [
        dict(person_id=_raw(200), code="reiki", start="2024-03-01"),
        dict(person_id=_raw(1), code="bp_management", start="2024-03-01"),
    ]
    out = {}
    for name, rows in (("persons", persons), ("interventions", events)):
        out[name] = tmp_path / f"{name}.csv"
        pd.DataFrame(rows).to_csv(out[name], index=False)
    pq = tmp_path / "persons_b.parquet"
    pd.DataFrame([valid_person(_raw(300 + i)) for i in range(3)]).to_parquet(pq, index=False)
    out["persons_b"] = pq
    return out


def _store_text(store_url: str, tmp_path: Path) -> bytes:
    """Every byte the store holds: the SQLite files, or every row of every PostgreSQL table."""
    if store_url.startswith("sqlite"):
        return b"".join(p.read_bytes() for p in tmp_path.glob("node.db*"))
    store = open_store(store_url)
    with store.engine.connect() as conn:
        dump = [repr(conn.execute(select(t)).all()) for t in metadata.sorted_tables]
    return "\n".join(dump).encode()


def test_raw_ids_never_appear_in_store_logs_or_output(store_url, tmp_path, valid_person, caplog):
    caplog.set_level(logging.DEBUG)
    cfg = _node(tmp_path, store_url)
    files = _files(tmp_path, valid_person)
    runner = CliRunner()
    outputs = []

    def run(*args, ok=True):
        res = runner.invoke(app, list(args), catch_exceptions=False)
        outputs.append(res.output + (res.stderr if res.stderr_bytes is not None else ""))
        assert (res.exit_code == 0) is ok, res.output
        return res

    for fmt in ("table", "json"):
        run("ingest", "--config", str(cfg), "--kind", "persons", str(files["persons"]), "--format", fmt)
    run("ingest", "-c", str(cfg), "-k", "persons", str(files["persons_b"]))
    run("ingest", "-c", str(cfg), "-k", "interventions", str(files["interventions"]))
    run(
        "intervention",
        "add",
        "-c",
        str(cfg),
        "--person-id",
        _raw(7),
        "--code",
        "lipid_management",
        "--start",
        "2024-04-01",
    )
    run(
        "intervention",
        "add",
        "-c",
        str(cfg),
        "--person-id",
        _raw(7),
        "--code",
        "lipid_management",
        "--start",
        "2024-04-01",
        ok=False,
    )  # duplicate
    run(
        "intervention",
        "add",
        "-c",
        str(cfg),
        "--person-id",
        _raw(8),
        "--code",
        "reiki",
        "--start",
        "2024-04-01",
        ok=False,
    )
    run(
        "intervention",
        "add",
        "-c",
        str(cfg),
        "--person-id",
        _raw(8) * 20,
        "--code",
        "bp_management",
        "--start",
        "2024-13-01",
        ok=False,
    )

    store = open_store(NodeConfig.from_toml(cfg).store_url)
    counts = store.counts()
    assert counts["persons"] == 20 + 3 and counts["interventions"] == 5 + 1
    q = store.quarantine_frame()
    assert len(q) == 4 + 2
    assert TOKEN not in q.to_csv()
    blob = _store_text(store_url, tmp_path)
    node = NodeConfig.from_toml(cfg)
    pseudo = Pseudonymizer.from_key_file(node.key_path, site_id=node.site_id)
    assert pseudo(_raw(0)).encode() in blob  # the dump really holds the stored rows
    assert TOKEN.encode() not in blob and TOKEN.lower().encode() not in blob.lower()
    assert caplog.records, "ingestion logs what it did"
    assert TOKEN not in caplog.text
    assert all(TOKEN not in o for o in outputs)
    assert "quarantined" in outputs[0]


def test_store_and_key_files_are_private(tmp_path):
    from node.pseudonym import load_or_create_key

    open_store(f"sqlite:///{tmp_path / 'node.db'}")
    load_or_create_key(tmp_path / "node.key")
    for name in ("node.db", "node.key"):
        assert (tmp_path / name).stat().st_mode & 0o077 == 0, name


@pytest.mark.parametrize("bad", ["RAW"])
def test_sanity_token_would_be_found(tmp_path, bad):
    """The grep above can fail: a raw id written on purpose is found in the SQLite bytes."""
    store = open_store(f"sqlite:///{tmp_path / 'node.db'}")
    with store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE leak (x TEXT)")
        conn.exec_driver_sql(f"INSERT INTO leak VALUES ('{TOKEN}-{bad}')")
    store.engine.dispose()
    assert TOKEN.encode() in b"".join(p.read_bytes() for p in tmp_path.glob("node.db*"))
