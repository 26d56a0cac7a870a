"""A real extract: German headers, semicolons, decimal commas, dd.mm.yyyy dates, m/w, mg/dL,
Windows-1252, loaded through a mapping file (issue 22, item 5).

Also: the misleading-delimiter error, dry run, the quarantine gate, undo/replace (the ledger
is never refunded), the quarantine viewer (attacked for values) and the missing-value policy.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import create_engine, func, inspect, select, text
from typer.testing import CliRunner

from node.cli import app
from node.ingest import ingest_file
from node.ingest.mapping import UNIT_FACTORS, apply_mapping, load_mapping
from node.ingest.pipeline import undo_file
from node.ingest.schema import spec_for
from node.ledger import PrivacyLedger
from node.pseudonym import Pseudonymizer
from node.store import open_store
from node.store.models import ingested_files, metadata, persons, quarantine
from node.store.schema import MIGRATIONS, migrate
from node.trajectory import derive_cohort
from shared.errors import DataError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "examples" / "mapping-de.toml"
SITE = "werk_nord"
N_GOOD = 480

HEADER = (
    "Personalnummer;Standort;Abteilung;Taetigkeit;Stichtag;Alter;Geschlecht;RR_sys;RR_dia;"
    "RR_Medikation;Gesamtcholesterin;HDL;LDL;Triglyceride;Glukose;Diabetes;Raucher;BMI;Taille;"
    "Familienanamnese;Aktivitaet;Name;Kostenstelle"
)

#: Deliberately bad rows: (person id, overrides, quarantined field, reason). Their bad values
#: are distinctive so the attack below can grep every output for them.
SECRET_LDL = "GEHEIM4711"
SECRET_SEX = "XSECRETX"
SECRET_ID = "PN-SECRET-0815"
BAD = [
    ("PN-B1", {"Stichtag": "31.02.2024"}, "index_date", "bad date"),
    ("PN-B2", {"Geschlecht": SECRET_SEX}, "sex", "wrong type"),
    ("PN-B3", {"LDL": SECRET_LDL}, "ldl", "wrong type"),
    ("PN-B4", {"BMI": "75,5"}, "bmi", "out of bounds"),
    ("", {}, "person_id", "missing field"),
    ("PN-B6", {"Stichtag": ""}, "index_date", "missing field"),
    (SECRET_ID, {}, "person_id", "duplicate id"),  # the second of two rows with this id
]


def _good(i: int) -> dict[str, str]:
    rng = np.random.default_rng(i)
    return {
        "Personalnummer": f"PN-{i:05d}",
        "Standort": "Hamburg",  # the file's own site label: never stored
        "Abteilung": ["Qualitätssicherung", "Logistik", "Verwaltung"][i % 3],
        "Taetigkeit": ["Büro", "Schicht"][i % 2],
        "Stichtag": f"{1 + i % 28:02d}.{1 + i % 12:02d}.2024",
        "Alter": str(20 + i % 45),
        "Geschlecht": "m" if i % 2 else "w",
        "RR_sys": str(int(rng.integers(110, 126))),
        "RR_dia": str(int(rng.integers(80, 91))),
        "RR_Medikation": str(i % 2),
        "Gesamtcholesterin": f"{rng.uniform(150, 260):.0f}",
        "HDL": f"{rng.uniform(35, 80):.0f}",
        "LDL": f"{rng.uniform(70, 190):.0f}",
        "Triglyceride": f"{rng.uniform(60, 300):.0f}",
        "Glukose": f"{rng.uniform(70, 130):.0f}",
        "Diabetes": "nein",
        "Raucher": "ja" if i % 5 == 0 else "nein",
        "BMI": f"{rng.uniform(19, 35):.1f}".replace(".", ","),
        "Taille": f"{rng.uniform(70, 110):.1f}".replace(".", ","),
        "Familienanamnese": "0",
        "Aktivitaet": f"{rng.uniform(0, 30):.1f}".replace(".", ","),
        "Name": f"Mitarbeiter {i}",
        "Kostenstelle": f"K{i % 7}",
    }


def _rows() -> list[dict[str, str]]:
    rows = [_good(i) for i in range(N_GOOD - 1)]
    rows.append({**_good(N_GOOD - 1), "Personalnummer": SECRET_ID})
    for pid, overrides, _f, _r in BAD:
        rows.append({**_good(len(rows) + 1000), "Personalnummer": pid, **overrides})
    return rows


def write_extract(path: Path, rows: list[dict[str, str]] | None = None, *, encoding: str = "cp1252") -> Path:
    rows = _rows() if rows is None else rows
    cols = HEADER.split(";")
    lines = [HEADER] + [";".join(r[c] for c in cols) for r in rows]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode(encoding))
    return path


def expected_quarantine(rows: list[dict[str, str]] | None = None) -> dict[int, tuple[str, str]]:
    rows = _rows() if rows is None else rows
    start = len(rows) - len(BAD) + 1
    return {start + k: (f, r) for k, (_p, _o, f, r) in enumerate(BAD)}


@pytest.fixture
def pseudo():
    return Pseudonymizer(key=bytes(range(32)), site_id=SITE)


@pytest.fixture
def mapping():
    return load_mapping(EXAMPLE)


def _quarantined(store, ingest_id=None) -> dict[int, tuple[str, str]]:
    q = store.quarantine_frame(ingest_id=ingest_id)
    return {int(r.row): (r.field, r.reason) for r in q.itertuples()}


def test_german_extract_loads_with_no_row_lost(store_url, tmp_path, pseudo, mapping):
    path = write_extract(tmp_path / "Mitarbeiter_Export.csv")
    store = open_store(store_url)
    s = ingest_file(
        store, path, kind="persons", pseudonymize=pseudo.many, site_id=SITE, extract=mapping, chunk_rows=100
    )
    rows = _rows()
    assert (s.rows, s.loaded, s.quarantined, s.already_present) == (len(rows), N_GOOD, len(BAD), 0)
    assert s.rows == s.loaded + s.quarantined  # 0 rows lost
    assert _quarantined(store) == expected_quarantine()
    assert s.unmapped_columns == ["Kostenstelle"]  # reported, not dropped silently ("Name" is ignored)
    assert s.notes == {"site column differs from the node's site id (the node's is stored)": N_GOOD}
    with store.engine.connect() as conn:
        got = {r.pseudonym: r for r in conn.execute(select(persons)).all()}
    first = got[pseudo("PN-00001")]
    src = _good(1)
    assert first.site == SITE  # the node's site id, not the file's "Hamburg"
    assert first.index_date == dt.date(2024, 2, 2)  # 02.02.2024
    assert first.sex == 1.0 and got[pseudo("PN-00000")].sex == 0.0  # m = 1, w = 0
    assert first.department == "Logistik" and got[pseudo("PN-00000")].department == "Qualitätssicherung"
    assert first.job_type == "Schicht"
    assert first.smoker == 0.0 and got[pseudo("PN-00000")].smoker == 1.0  # ja/nein
    assert first.bmi == pytest.approx(float(src["BMI"].replace(",", ".")))  # decimal comma
    # mg/dL -> mmol/L: cholesterol / 38.665, triglycerides / 88.57, glucose / 18.016
    assert first.ldl == pytest.approx(float(src["LDL"]) / 38.665, rel=1e-4)
    assert first.hdl == pytest.approx(float(src["HDL"]) / 38.665, rel=1e-4)
    assert first.total_chol == pytest.approx(float(src["Gesamtcholesterin"]) / 38.665, rel=1e-4)
    assert first.triglycerides == pytest.approx(float(src["Triglyceride"]) / 88.57, rel=1e-4)
    assert first.glucose == pytest.approx(float(src["Glukose"]) / 18.016, rel=1e-4)
    assert (first.sbp, first.dbp) == (float(src["RR_sys"]), float(src["RR_dia"]))


def test_unit_factors_are_the_clinical_ones():
    # 200 mg/dL cholesterol = 5.17 mmol/L; 150 mg/dL triglycerides = 1.69; 100 mg/dL glucose = 5.55
    assert 200 * UNIT_FACTORS[("ldl", "mg/dL")] == pytest.approx(5.17, abs=0.005)
    assert 150 * UNIT_FACTORS[("triglycerides", "mg/dL")] == pytest.approx(1.69, abs=0.005)
    assert 100 * UNIT_FACTORS[("glucose", "mg/dL")] == pytest.approx(5.55, abs=0.005)


def test_a_value_at_a_bound_stays_inside_it_after_conversion(mapping):
    """347.985 mg/dL LDL is 9.0 mmol/L, the upper bound: float noise must not push it out."""
    spec = spec_for("persons")
    frame = pd.DataFrame({"ldl": ["347,985", "19,3325", "", "abc"], "sex": ["M ", "w", "", "x"]})
    out = apply_mapping(frame, spec, mapping)
    assert out["ldl"].tolist()[:2] == [9.0, 0.5] and out["ldl"][2] == "" and out["ldl"][3] == "abc"
    assert out["sex"].tolist()[:2] == [1, 0] and out["sex"][3] == "x"  # an unknown code is not guessed


def test_a_semicolon_file_without_the_delimiter_says_so(tmp_path, pseudo):
    path = write_extract(tmp_path / "export.csv", encoding="utf-8")
    store = open_store(f"sqlite:///{tmp_path / 'node.db'}")
    with pytest.raises(DataError) as e:
        ingest_file(
            store, path, kind="persons", pseudonymize=pseudo.many, site_id=SITE, mapping={"Alter": "age"}
        )
    msg = str(e.value)
    assert "semicolon" in msg and "delimiter = ';'" in msg and "not in the file" not in msg


def test_a_wrong_encoding_names_the_byte_not_the_value(tmp_path, pseudo, mapping):
    path = tmp_path / "export.csv"
    write_extract(path)
    path.write_bytes(path.read_bytes().replace(b"Logistik", b"Logis\x81ik", 1))  # undefined in cp1252
    store = open_store(f"sqlite:///{tmp_path / 'node.db'}")
    with pytest.raises(DataError, match=r"byte \d+ is not valid cp1252") as e:
        ingest_file(store, path, kind="persons", pseudonymize=pseudo.many, site_id=SITE, extract=mapping)
    assert "Logis" not in str(e.value)


def _table_counts(store) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in metadata.sorted_tables
        }


def test_dry_run_writes_nothing_and_predicts_the_load(tmp_path, pseudo, mapping):
    path = write_extract(tmp_path / "export.csv")
    store = open_store(f"sqlite:///{tmp_path / 'node.db'}")
    before = _table_counts(store)
    dry = ingest_file(
        store,
        path,
        kind="persons",
        pseudonymize=pseudo.many,
        site_id=SITE,
        extract=mapping,
        dry_run=True,
        chunk_rows=50,
    )
    assert _table_counts(store) == before  # nothing written, not even the file's job
    assert dry.dry_run and dry.file_id is None
    expected = expected_quarantine()
    # the duplicate lands in another chunk than its first occurrence: found across chunks
    assert {int(r) for rows in dry.problem_rows.values() for r in rows} == set(expected)
    assert dry.problem_rows["ldl: wrong type"] == [
        k for k, v in expected.items() if v == ("ldl", "wrong type")
    ]
    real = ingest_file(store, path, kind="persons", pseudonymize=pseudo.many, site_id=SITE, extract=mapping)
    assert (dry.rows, dry.loaded, dry.quarantined, dry.by_reason) == (
        real.rows,
        real.loaded,
        real.quarantined,
        real.by_reason,
    )
    again = ingest_file(
        store, path, kind="persons", pseudonymize=pseudo.many, site_id=SITE, extract=mapping, dry_run=True
    )
    assert again.already_ingested and again.already_present == N_GOOD and again.loaded == 0


@pytest.fixture
def node_dir(tmp_path):
    res = CliRunner().invoke(app, ["init", "--dir", str(tmp_path / "node"), "--site-id", SITE])
    assert res.exit_code == 0, res.output
    return tmp_path / "node"


def _cli(node_dir, *args):
    return CliRunner().invoke(app, [*args, "--config", str(node_dir / "node.toml")])


def _persons_count(node_dir) -> int:
    store = open_store(f"sqlite:///{node_dir / 'node.db'}")
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(persons)).scalar_one()


def test_quarantine_gate_exit_codes_and_nothing_committed(node_dir, tmp_path):
    path = write_extract(tmp_path / "export.csv")
    ingest = ["ingest", str(path), "-k", "persons", "--mapping", str(EXAMPLE), "--format", "json"]
    # 7 of 487 rows (1.4 %) quarantined: over a 1 % limit
    res = _cli(node_dir, *ingest, "--dry-run", "--max-quarantine", "1%")
    assert res.exit_code == 3, res.output
    res = _cli(node_dir, *ingest, "--max-quarantine", "1%")
    assert res.exit_code == 3, res.output
    out = json.loads(res.output)
    assert out["rejected"].startswith("7 of 487 rows quarantined") and out["file_id"] is not None
    assert _persons_count(node_dir) == 0  # nothing of it stays loaded
    shown = json.loads(_cli(node_dir, "quarantine", "show", str(out["file_id"]), "--format", "json").output)
    assert shown["quarantined"] == len(BAD) and shown["status"] == "failed"  # kept for the viewer
    # under a 2 % limit it loads (a rejected file is not "already ingested")
    res = _cli(node_dir, *ingest, "--max-quarantine", "2%")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["loaded"] == N_GOOD and _persons_count(node_dir) == N_GOOD
    shown = json.loads(_cli(node_dir, "quarantine", "show", str(out["file_id"]), "--format", "json").output)
    assert shown["quarantined"] == len(BAD)  # not doubled by the re-run


def test_every_row_quarantined_exits_nonzero_and_a_fixed_mapping_then_loads(node_dir, tmp_path):
    path = write_extract(tmp_path / "export.csv")
    broken = tmp_path / "broken.toml"
    broken.write_text(EXAMPLE.read_text().replace("[codes.sex]\nm = 1\nw = 0\n", ""))
    assert "[codes.sex]" not in broken.read_text()
    res = _cli(node_dir, "ingest", str(path), "-k", "persons", "--mapping", str(broken), "--format", "json")
    assert res.exit_code == 3, res.output
    assert json.loads(res.output)["rejected"] == f"every row ({len(_rows())}) was quarantined"
    res = _cli(node_dir, "ingest", str(path), "-k", "persons", "--mapping", str(EXAMPLE), "--format", "json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["loaded"] == N_GOOD


def test_replace_undoes_a_wrong_mapping_and_never_refunds_the_ledger(tmp_path, pseudo, mapping):
    path = write_extract(tmp_path / "export.csv")
    swapped = tmp_path / "swapped.toml"
    swapped.write_text(
        EXAMPLE.read_text()
        .replace('RR_sys = "sbp"', 'RR_sys = "TMP"')
        .replace('RR_dia = "dbp"', 'RR_dia = "sbp"')
        .replace('RR_sys = "TMP"', 'RR_sys = "dbp"')
    )
    store = open_store(f"sqlite:///{tmp_path / 'node.db'}")
    kw = dict(kind="persons", pseudonymize=pseudo.many, site_id=SITE)
    wrong = ingest_file(store, path, extract=load_mapping(swapped), **kw)
    assert wrong.loaded == N_GOOD

    def bp_ok() -> bool:
        with store.engine.connect() as conn:
            return all(r.sbp > r.dbp for r in conn.execute(select(persons.c.sbp, persons.c.dbp)).all())

    assert not bp_ok()
    ledger = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.ensure_budget(epsilon=10.0, delta=1e-6)
    ledger.charge(study_id="s1", query="count", sigma=2.0, sensitivity=1.0)
    spent = ledger.spent()
    assert spent > 0

    same = ingest_file(store, path, extract=mapping, **kw)  # same bytes: nothing changes
    assert same.already_ingested and not bp_ok()
    fixed = ingest_file(store, path, extract=mapping, replace=True, **kw)
    assert fixed.replaced == [wrong.file_id] and fixed.loaded == N_GOOD and not fixed.already_ingested
    assert bp_ok()
    assert _quarantined(store) == expected_quarantine()  # the old file's quarantine went with it
    assert ledger.spent() == spent  # releases already made stay charged

    undone = undo_file(store, fixed.file_id)
    assert undone.rows_removed == N_GOOD and undone.quarantine_removed == len(BAD)
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(persons)).scalar_one() == 0
        assert (
            conn.execute(
                select(ingested_files.c.status).where(ingested_files.c.id == fixed.file_id)
            ).scalar_one()
            == "undone"
        )
    assert ledger.spent() == spent
    with pytest.raises(DataError, match="no ingested file with id 999"):
        undo_file(store, 999)


def test_viewer_and_errors_never_show_a_value(node_dir, tmp_path):
    """Attack: grep everything the CLI prints about a bad file for the bad values and ids."""
    path = write_extract(tmp_path / "export.csv")
    outputs = []
    for fmt in ("table", "json"):
        outputs.append(
            _cli(
                node_dir,
                "ingest",
                str(path),
                "-k",
                "persons",
                "--mapping",
                str(EXAMPLE),
                "--dry-run",
                "--format",
                fmt,
            )
        )
    outputs.append(
        _cli(node_dir, "ingest", str(path), "-k", "persons", "--mapping", str(EXAMPLE), "--format", "json")
    )
    file_id = json.loads(outputs[-1].output)["file_id"]
    for fmt in ("table", "json"):
        outputs.append(_cli(node_dir, "quarantine", "show", str(file_id), "--format", fmt))
        outputs.append(_cli(node_dir, "quarantine", "list", "--format", fmt))
    outputs.append(_cli(node_dir, "ingest", str(path), "-k", "persons", "--format", "json"))  # no encoding
    assert outputs[-1].exit_code == 1 and 'encoding = "cp1252"' in outputs[-1].output
    utf8 = write_extract(tmp_path / "utf8.csv", encoding="utf-8")
    outputs.append(_cli(node_dir, "ingest", str(utf8), "-k", "persons", "--format", "json"))  # no delimiter
    assert outputs[-1].exit_code == 1 and "semicolon" in outputs[-1].output
    text_out = "\n".join(r.output for r in outputs)
    assert all(r.exit_code in (0, 1) for r in outputs), text_out
    assert "ldl" in text_out and "wrong type" in text_out  # it does say what and where
    assert "index_date is not a date dd.mm.yyyy" in text_out  # in the file's own terms
    assert "sex is none of the mapping's codes (m, w)" in text_out
    for secret in (
        SECRET_LDL,
        SECRET_SEX,
        SECRET_ID,
        "31.02.2024",
        "75,5",
        "PN-B",
        "Hamburg",
        "Mitarbeiter 1",
    ):
        assert secret not in text_out, secret
    with open_store(f"sqlite:///{node_dir / 'node.db'}").engine.connect() as conn:
        stored = " ".join(str(v) for row in conn.execute(select(quarantine)).all() for v in row)
    assert SECRET_LDL not in stored and SECRET_SEX not in stored and SECRET_ID not in stored


def test_missing_policy_keeps_a_person_with_a_blank_lab(store_url, tmp_path, pseudo, mapping):
    rows = [_good(i) for i in range(20)]
    for i in (3, 7, 11):
        rows[i]["LDL"] = ""
    rows[5]["Glukose"] = ""
    path = write_extract(tmp_path / "export.csv", rows)
    store = open_store(store_url)
    kw = dict(kind="persons", pseudonymize=pseudo.many, site_id=SITE, extract=mapping)

    strict = ingest_file(store, path, dry_run=True, **kw)  # default policy: quarantine
    assert (strict.loaded, strict.by_reason) == (16, {"missing field": 4})

    s = ingest_file(store, path, missing_ok=frozenset({"ldl", "glucose"}), **kw)
    assert (s.loaded, s.quarantined) == (20, 0)
    assert s.notes["kept with ldl missing (missing-value policy: indicator)"] == 3
    assert s.notes["kept with glucose missing (missing-value policy: indicator)"] == 1
    with store.engine.connect() as conn:
        nulls = conn.execute(
            select(func.count()).select_from(persons).where(persons.c.ldl.is_(None))
        ).scalar_one()
        nan = conn.execute(text("SELECT count(*) FROM persons WHERE ldl <> ldl")).scalar_one()  # 'NaN' on PG
    assert (nulls, nan) == (3, 0)
    # studies leave them out explicitly, and only when they use the missing feature
    window = dict(
        intervention="smoking_cessation",
        index_start=dt.date(2024, 1, 1),
        index_end=dt.date(2024, 12, 31),
        followup_days=30,
    )
    assert derive_cohort(store, **window).attrs["attrition"]["missing_feature"] == 4
    no_labs = [f for f in ("age", "sex", "sbp", "smoker")]
    assert derive_cohort(store, covariates=no_labs, **window).attrs["attrition"]["missing_feature"] == 0
    # HR's profiles score people: those with a missing lab are left out, never scored on a NaN
    from node.api.groups import persons_frame

    profiled = persons_frame(store_url)
    assert len(profiled) == 16 and not profiled.isna().any().any()


def test_the_node_config_sets_the_missing_policy(node_dir, tmp_path):
    rows = [_good(i) for i in range(10)]
    rows[2]["LDL"] = ""
    path = write_extract(tmp_path / "export.csv", rows)
    cfg = node_dir / "node.toml"
    res = _cli(
        node_dir,
        "ingest",
        str(path),
        "-k",
        "persons",
        "--mapping",
        str(EXAMPLE),
        "--dry-run",
        "--format",
        "json",
    )
    assert json.loads(res.output)["by_reason"] == {"missing field": 1}
    cfg.write_text(cfg.read_text().replace('# ldl = "indicator"', 'ldl = "indicator"'))
    res = _cli(node_dir, "ingest", str(path), "-k", "persons", "--mapping", str(EXAMPLE), "--format", "json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["loaded"] == 10
    cfg.write_text(cfg.read_text().replace('ldl = "indicator"', 'age = "indicator"'))
    res = _cli(node_dir, "ingest", str(path), "-k", "persons", "--dry-run")
    assert res.exit_code == 1 and "ingest.missing" in res.output


def test_a_mapping_naming_an_unknown_field_or_unit_is_refused(tmp_path):
    bad = tmp_path / "m.toml"
    bad.write_text('[units]\nldl = "g/L"\n')
    with pytest.raises(Exception, match="no conversion of ldl"):
        load_mapping(bad)
    shutil.copy(EXAMPLE, bad)
    assert load_mapping(bad).date_format == "%d.%m.%Y"


def test_cli_undo_and_replace(node_dir, tmp_path):
    path = write_extract(tmp_path / "export.csv")
    ingest = ["ingest", str(path), "-k", "persons", "--mapping", str(EXAMPLE), "--format", "json"]
    first = json.loads(_cli(node_dir, *ingest).output)
    again = json.loads(_cli(node_dir, *ingest).output)
    assert again["already_ingested"] and _persons_count(node_dir) == N_GOOD
    replaced = _cli(node_dir, *ingest, "--replace")
    assert replaced.exit_code == 0, replaced.output
    out = json.loads(replaced.output)
    assert out["replaced"] == [first["file_id"]] and out["loaded"] == N_GOOD
    res = _cli(node_dir, "ingest-undo", str(out["file_id"]))
    assert res.exit_code == 0 and f"{N_GOOD:,} row(s)" in res.output and "ledger is unchanged" in res.output
    assert _persons_count(node_dir) == 0
    listed = json.loads(_cli(node_dir, "quarantine", "list", "--format", "json").output)["files"]
    assert [(f["id"], f["status"]) for f in listed] == [(out["file_id"], "undone")]
    res = _cli(node_dir, "quarantine", "show", "42")
    assert res.exit_code == 1 and "no ingested file with id 42" in res.output
    res = _cli(node_dir, *ingest, "--max-quarantine", "12")
    assert res.exit_code == 1 and "--max-quarantine" in res.output


def test_a_store_from_before_the_policy_is_migrated_to_keep_missing_values(
    store_url, tmp_path, pseudo, mapping
):
    """Schema revision 0002 makes persons' features (but age) nullable; a 0001 store gets it."""
    old = tmp_path / "migrations-0001"

    def after_0001(_dir: str, names: list[str]) -> set[str]:
        return {
            n for n in names if n == "__pycache__" or (n[:4].isdigit() and n[4:5] == "_" and n[:4] > "0001")
        }

    shutil.copytree(MIGRATIONS, old, ignore=after_0001)
    engine = create_engine(store_url)
    assert migrate(engine, "old store", script_location=old) == (None, "0001")

    def nullable() -> dict[str, bool]:
        return {c["name"]: c["nullable"] for c in inspect(engine).get_columns("persons")}

    assert not nullable()["ldl"]
    store = open_store(store_url)  # brings it to this code's head
    assert nullable()["ldl"] and not nullable()["age"]
    rows = [_good(i) for i in range(5)]
    rows[1]["LDL"] = ""
    s = ingest_file(
        store,
        write_extract(tmp_path / "export.csv", rows),
        kind="persons",
        pseudonymize=pseudo.many,
        site_id=SITE,
        extract=mapping,
        missing_ok=frozenset({"ldl"}),
    )
    assert (s.loaded, s.quarantined) == (5, 0)
    engine.dispose()
