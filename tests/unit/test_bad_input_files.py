"""The bad-input suite: every class of broken file an operator may hand the node, through the
real CLI in its own process (``rehealth node ingest``).

Each file is built at run time with canary ids and values (``CANARY-7f3a-…``, numbers whose
decimals are ``.373917``). For every case: the exit code, exactly one ``error:`` line on
stderr that names the file and the line, byte or row group, rows in = stored + quarantined
(+ refused whole file), no silent change to the store, and no canary anywhere — stdout,
stderr, the DEBUG log, the quarantine's details, the job's recorded error.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import re
import sqlite3
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from node.cli import app as node_app
from node.cli._dataplane import open_node
from node.ingest import ingest_file
from node.ingest.readers import _TextCheck
from shared.features import FEATURES

ROOT = Path(__file__).resolve().parents[2]
CANARY = re.compile(r"CANARY|7f3a|373917|M\u00fcller")
CHUNK = 500  # rows per chunk: every multi-chunk file commits chunks before it fails


# --- files ---------------------------------------------------------------------------------


def person(i: int, **over: str) -> dict[str, str]:
    """A valid persons row whose id, department and every continuous value are canaries."""
    row = {
        "person_id": f"CANARY-7f3a-{i:06d}",
        "department": f"DEPT-CANARY-7f3a-{i}",
        "job_type": "office",
        "index_date": "2024-01-15",
    }
    for f in FEATURES:
        mid = int((f.lo + f.hi) / 2)
        row[f.name] = str(i % 2) if f.kind == "binary" else f"{mid}.373917"
    row.update(over)
    return row


HEADER = list(person(0))


def csv_bytes(rows: list[dict[str, str]], header: list[str] = HEADER) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([r[h] for h in header] for r in rows)
    return buf.getvalue().encode("utf-8")


def people(n: int, start: int = 1) -> list[dict[str, str]]:
    return [person(i) for i in range(start, start + n)]


def parquet_file(
    path: Path, rows: list[dict[str, str]], *, names: list[str] | None = None, group: int = 300
) -> None:
    cols = list(rows[0])
    table = pa.table([pa.array([r[c] for r in rows]) for c in cols], names=names or cols)
    pq.write_table(table, path, row_group_size=group)


@dataclass
class Built:
    path: Path
    rows_in: int
    locator: str  # a regex the error line must match (besides the file name)
    job: str | None = "failed"  # the job's state after the run; None: refused before a job existed
    expect: dict = field(default_factory=dict)  # e.g. the exact byte offset


def malformed_line(d: Path) -> Built:
    rows = people(1200)
    data = csv_bytes(rows).splitlines(keepends=True)
    data[1001] = data[1001].rstrip(b"\n") + b",CANARY-7f3a-extra,x\n"  # line 1002 = data row 1001
    (p := d / "persons.csv").write_bytes(b"".join(data))
    return Built(p, 1200, r"line 1002 \(data row 1001\)")


def non_utf8_deep(d: Path) -> Built:
    rows = people(20_000)  # ~4.5 MB: the bad byte lies in the fifth 1 MiB block
    for r in rows:
        r["job_type"] = "B\u00fcro"  # valid two-byte UTF-8 on every line, across block edges
    data = bytearray(csv_bytes(rows))
    pos = data.index(b"CANARY-7f3a-019000")
    data[pos + 5] = 0xFF
    line = data[:pos].count(b"\n") + 1
    (p := d / "persons.csv").write_bytes(bytes(data))
    return Built(
        p, 20_000, rf"byte {pos + 5} \(line {line}\)", job=None, expect={"offset": pos + 5, "line": line}
    )


def latin1(d: Path) -> Built:
    rows = people(50)
    rows[30]["department"] = "M\u00fcller"
    data = csv_bytes(rows).decode("utf-8").encode("latin-1")
    pos = data.index(b"M\xfcller") + 1
    (p := d / "persons.csv").write_bytes(data)
    return Built(p, 50, rf"byte {pos} \(line 32\)", job=None)


def utf16(d: Path) -> Built:
    (p := d / "persons.csv").write_bytes(csv_bytes(people(20)).decode().encode("utf-16"))
    return Built(p, 20, r"UTF-16.*byte 0", job=None)


def utf16_without_bom(d: Path) -> Built:
    (p := d / "persons.csv").write_bytes(csv_bytes(people(20)).decode().encode("utf-16-le"))
    return Built(p, 20, r"NUL byte.*byte 1 \(line 1\)", job=None)


def empty(d: Path) -> Built:
    (p := d / "persons.csv").write_bytes(b"")
    return Built(p, 0, r"empty", job=None)


def gzip_named_csv(d: Path) -> Built:
    (p := d / "persons.csv").write_bytes(gzip.compress(csv_bytes(people(30))))
    return Built(p, 30, r"gzip archive", job=None)


def truncated_csv_gz(d: Path) -> Built:
    data = gzip.compress(csv_bytes(people(3000)))
    (p := d / "persons.csv.gz").write_bytes(data[: len(data) * 3 // 5])
    return Built(p, 3000, r"gzip stream .*cut off", job=None)


def xlsx_named_csv(d: Path) -> Built:
    """A minimal, real .xlsx workbook (the parts Excel needs), saved under a .csv name."""
    cells = "".join(
        f'<row r="{i + 1}"><c r="A{i + 1}" t="inlineStr"><is><t>{v}</t></is></c></row>'
        for i, v in enumerate(["person_id", "CANARY-7f3a-000001"])
    )
    ns = "http://schemas.openxmlformats.org"
    rel = f"{ns}/officeDocument/2006/relationships"
    ct = "application/vnd.openxmlformats-officedocument.spreadsheetml"
    parts = {
        "[Content_Types].xml": f'<?xml version="1.0"?><Types xmlns="{ns}/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        f'<Override PartName="/xl/workbook.xml" ContentType="{ct}.sheet.main+xml"/>'
        f'<Override PartName="/xl/worksheets/sheet1.xml" ContentType="{ct}.worksheet+xml"/></Types>',
        "_rels/.rels": f'<?xml version="1.0"?><Relationships xmlns="{ns}/package/2006/relationships">'
        f'<Relationship Id="rId1" Type="{rel}/officeDocument" Target="xl/workbook.xml"/></Relationships>',
        "xl/workbook.xml": f'<?xml version="1.0"?><workbook xmlns="{ns}/spreadsheetml/2006/main" '
        f'xmlns:r="{rel}"><sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>',
        "xl/_rels/workbook.xml.rels": f'<?xml version="1.0"?><Relationships xmlns="{ns}/package/2006/'
        f'relationships"><Relationship Id="rId1" Type="{rel}/worksheet" Target="worksheets/sheet1.xml"/>'
        "</Relationships>",
        "xl/worksheets/sheet1.xml": f'<?xml version="1.0"?><worksheet xmlns="{ns}/spreadsheetml/2006/main">'
        f"<sheetData>{cells}</sheetData></worksheet>",
    }
    p = d / "persons.csv"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        for name, body in parts.items():
            z.writestr(name, body)
    return Built(p, 1, r"Excel workbook \(\.xlsx\)", job=None)


def truncated_parquet(d: Path) -> Built:
    parquet_file(p := d / "persons.parquet", people(1200))
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return Built(p, 1200, r"truncated", job=None)


def corrupt_parquet_row_group(d: Path) -> Built:
    """Four row groups of 300 rows; the page header of row group 2's first column is garbage.
    Rows 1..500 are read and stored first; the batch reaching into row group 2 fails."""
    parquet_file(p := d / "persons.parquet", people(1200))
    col = pq.ParquetFile(p).metadata.row_group(2).column(0)
    off = col.dictionary_page_offset or col.data_page_offset
    data = bytearray(p.read_bytes())
    data[off : off + 40] = b"\xff" * 40
    p.write_bytes(bytes(data))
    return Built(p, 1200, r"row group 2 .*data rows 601\.\.900")


def duplicate_column_csv(d: Path) -> Built:
    rows = people(10)
    header = [*HEADER, "age"]
    body = io.StringIO()
    w = csv.writer(body, lineterminator="\n")
    w.writerow(header)
    w.writerows([*(r[h] for h in HEADER), "33.373917"] for r in rows)
    (p := d / "persons.csv").write_bytes(body.getvalue().encode())
    return Built(p, 10, r"column 'age' appears twice, as columns 5 and 21", job=None)


def duplicate_column_parquet(d: Path) -> Built:
    """Two columns named ``age`` (Arrow allows it); a cohort would once store the second as
    an unchecked extra ``age.1``."""
    rows = [dict(r, treated="1", age2="33.373917") for r in people(10)]
    names = [n if n != "age2" else "age" for n in rows[0]]
    parquet_file(p := d / "cohort.parquet", rows, names=names)
    return Built(p, 10, r"column 'age' appears twice, as columns 5 and 22", job=None)


def ambiguous_column_csv(d: Path) -> Built:
    rows = [dict(r, **{"Age ": "33.373917"}) for r in people(10)]
    (p := d / "persons.csv").write_bytes(csv_bytes(rows, header=list(rows[0])))
    return Built(
        p, 10, r"column 'Age' appears twice \(ignoring case and spaces\), as columns 5 and 21", job=None
    )


def binary_id_parquet(d: Path) -> Built:
    """Ids as Parquet BINARY (bytes, some not UTF-8) instead of strings."""
    rows = people(20)
    cols = list(rows[0])
    arrays = [
        pa.array([r[c].encode() + b"\xff" for r in rows], pa.binary())
        if c == "person_id"
        else pa.array([r[c] for r in rows])
        for c in cols
    ]
    pq.write_table(pa.table(arrays, names=cols), p := d / "persons.parquet")
    return Built(p, 20, r"column 'person_id' holds binary data, not text", job=None)


def nul_byte_csv(d: Path) -> Built:
    data = bytearray(csv_bytes(people(100)))
    pos = data.index(b"DEPT-CANARY-7f3a-70,") + 3
    data[pos] = 0
    (p := d / "persons.csv").write_bytes(bytes(data))
    return Built(p, 100, rf"NUL byte \(0x00\) at byte {pos} \(line 71\)", job=None)


CASES: dict[str, Callable[[Path], Built]] = {
    f.__name__: f
    for f in (
        malformed_line,
        non_utf8_deep,
        latin1,
        utf16,
        utf16_without_bom,
        empty,
        gzip_named_csv,
        truncated_csv_gz,
        xlsx_named_csv,
        truncated_parquet,
        corrupt_parquet_row_group,
        duplicate_column_csv,
        duplicate_column_parquet,
        ambiguous_column_csv,
        nul_byte_csv,
        binary_id_parquet,
    )
}


# --- running the CLI -----------------------------------------------------------------------

#: The child: every log record at DEBUG into a file (grepped too), then the real entry point.
_CHILD = """
import logging, sys
logging.basicConfig(filename=sys.argv.pop(1), level=logging.DEBUG, force=True)
exec(sys.argv.pop(1))
from coordinator.cli.root import main
sys.argv = ['rehealth', *sys.argv[1:]]
main()
"""


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    log: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def rehealth(node: Path, *args: str, prelude: str = "") -> Run:
    log = node / "cli.log"
    log.unlink(missing_ok=True)
    cp = subprocess.run(
        [sys.executable, "-c", _CHILD, str(log), prelude, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    return Run(cp.returncode, cp.stdout, cp.stderr, log.read_text() if log.exists() else "")


def new_node(d: Path) -> Path:
    res = CliRunner().invoke(node_app, ["init", "--dir", str(d), "--site-id", "site_a"])
    assert res.exit_code == 0, res.output
    return d


@pytest.fixture
def node(tmp_path) -> Path:
    return new_node(tmp_path / "node")


def use_store(node: Path, url: str) -> None:
    cfg = node / "node.toml"
    cfg.write_text(cfg.read_text().replace('store_url = "sqlite:///node.db"', f'store_url = "{url}"'))


def url_of(node: Path) -> str:
    m = re.search(r'^store_url = "(.*)"', (node / "node.toml").read_text(), re.M)
    assert m
    url = m.group(1)
    return f"sqlite:///{node / 'node.db'}" if url == "sqlite:///node.db" else url


def ingest_args(node: Path, path: Path, kind: str = "persons") -> list[str]:
    cfg = str(node / "node.toml")
    return [
        "node",
        "ingest",
        str(path),
        "-k",
        kind,
        "-c",
        cfg,
        "--chunk-rows",
        str(CHUNK),
        "--format",
        "json",
    ]


def ingest(node: Path, path: Path, kind: str = "persons", *, prelude: str = "") -> Run:
    return rehealth(node, *ingest_args(node, path, kind), prelude=prelude)


#: One child for many commands (the CLI's imports cost ~1 s per process): each command's
#: stdout/stderr go to its own files at the file-descriptor level, its log to its own file,
#: and its exit code is recorded; an exception that escapes the CLI is recorded as "crash".
_BATCH_CHILD = """
import json, logging, os, sys, traceback
from coordinator.cli.root import main
codes = []
for cmd in json.load(open(sys.argv[1])):
    handler = logging.FileHandler(cmd["log"])
    logging.basicConfig(level=logging.DEBUG, handlers=[handler], force=True)
    sys.stdout.flush(); sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(cmd["out"], "w") as out, open(cmd["err"], "w") as err:
        os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
        try:
            sys.argv = ["rehealth", *cmd["argv"]]
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        except BaseException:
            traceback.print_exc()
            code = "crash"
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)
            os.close(saved[0]); os.close(saved[1])
            handler.close()
    codes.append(code)
print(json.dumps(codes))
"""


def rehealth_many(work: Path, commands: list[list[str]]) -> list[Run]:
    """Run ``rehealth`` once per argv in one child process (see ``_BATCH_CHILD``)."""
    spec = [
        {"argv": argv, **{k: str(work / f"cmd{i}.{k}") for k in ("out", "err", "log")}}
        for i, argv in enumerate(commands)
    ]
    (work / "commands.json").write_text(json.dumps(spec))
    cp = subprocess.run(
        [sys.executable, "-c", _BATCH_CHILD, str(work / "commands.json")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert cp.returncode == 0, cp.stdout + cp.stderr
    codes = json.loads(cp.stdout.strip().splitlines()[-1])
    return [
        Run(
            code,
            *(Path(str(c[k])).read_text() if Path(str(c[k])).exists() else "" for k in ("out", "err", "log")),
        )
        for code, c in zip(codes, spec)
    ]


@dataclass
class StoreState:
    persons: list[tuple]
    cohort: int
    quarantine: list[tuple]  # (file, row, field, reason, detail)
    jobs: list[tuple]  # (name, status, rows_done, loaded, already_present, quarantined, error)


def state(node: Path) -> StoreState:
    engine = create_engine(url_of(node))
    try:
        with engine.connect() as c:
            return StoreState(
                persons=sorted(tuple(r) for r in c.execute(text("SELECT * FROM persons")).all()),
                cohort=c.execute(text("SELECT count(*) FROM cohort")).scalar_one(),
                quarantine=[
                    tuple(r)
                    for r in c.execute(
                        text('SELECT file, "row", field, reason, detail FROM quarantine ORDER BY id')
                    )
                ],
                jobs=[
                    tuple(r)
                    for r in c.execute(
                        text(
                            "SELECT name, status, rows_done, loaded, already_present, quarantined, error "
                            "FROM ingested_files ORDER BY id"
                        )
                    )
                ],
            )
    finally:
        engine.dispose()


def assert_no_canary(run: Run, st: StoreState) -> None:
    for where, blob in (
        ("stdout", run.stdout),
        ("stderr", run.stderr),
        ("log", run.log),
        ("quarantine", repr([q[2:] for q in st.quarantine])),
        ("job error", repr([j[6] for j in st.jobs])),
    ):
        m = CANARY.search(blob)
        assert m is None, f"a canary reached the {where}: …{blob[max(m.start() - 80, 0) : m.end() + 20]}…"


def assert_refused(run: Run, built: Built, before: StoreState, after: StoreState) -> dict:
    """Exit 1, one error line naming file and place, nothing of the file stored, summary right."""
    assert run.rc == 1, run.stdout + run.stderr
    assert len(run.errors) == 1, run.stderr
    line = run.errors[0]
    assert line.startswith("error: ") and built.path.name in line, line
    assert re.search(built.locator, line), line
    assert "Traceback" not in run.stderr
    summary = json.loads(run.stdout)
    assert summary["status"] == "failed" and summary["refused_whole_file"] and summary["loaded"] == 0
    # rows in = stored 0 + quarantined 0 + refused (the whole file)
    assert after.persons == before.persons and after.cohort == before.cohort
    assert after.quarantine == before.quarantine
    jobs = [j for j in after.jobs if j[0] == built.path.name]
    if built.job is None:
        assert jobs == [], "refused before a job was opened"
        assert summary["rows_read"] == 0
    else:
        assert [j[1:6] for j in jobs] == [("failed", 0, 0, 0, 0)]
        assert jobs[0][6] and built.path.name in jobs[0][6]
        assert 0 < summary["rows_read"] < built.rows_in and summary["rolled_back"] > 0
    assert_no_canary(run, after)
    return summary


# --- the table ------------------------------------------------------------------------------


def seed_store(node: Path, path: Path) -> None:
    """An earlier, good file (other people): a refused file must leave them as they are."""
    path.write_bytes(csv_bytes(people(5, start=900_001)))
    cfg, store, pseudo = open_node(node / "node.toml")
    ingest_file(store, path, kind="persons", pseudonymize=pseudo.many, site_id=cfg.site_id)
    store.engine.dispose()


@pytest.fixture(scope="module")
def table_runs(tmp_path_factory) -> dict[str, tuple[Built, Run, StoreState, StoreState]]:
    """Every case of the table in a node of its own, run through one child process."""
    work = tmp_path_factory.mktemp("bad_input")
    prepared = {}
    for name, build in CASES.items():
        (d := work / name).mkdir()
        built = build(d)
        node = new_node(d / "node")
        seed_store(node, d / "earlier.csv")
        kind = "cohort" if built.path.name.startswith("cohort") else "persons"
        prepared[name] = (built, node, kind, state(node))
    runs = rehealth_many(work, [ingest_args(node, b.path, kind) for b, node, kind, _ in prepared.values()])
    return {
        name: (built, run, before, state(node))
        for (name, (built, node, _, before)), run in zip(prepared.items(), runs)
    }


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_file_is_refused_whole_with_one_clear_line(table_runs, case):
    built, run, before, after = table_runs[case]
    assert_refused(run, built, before, after)
    if "offset" in built.expect:  # the exact byte, counted independently of the checker
        assert f"byte {built.expect['offset']} (line {built.expect['line']})" in run.errors[0]


def test_a_fixed_file_loads_after_a_refused_one(node, tmp_path):
    """The refused file's job is ``failed``; the same bytes again start afresh (and fail the
    same way, leaving nothing); the fixed file loads whole."""
    built = malformed_line(tmp_path)
    seed_store(node, tmp_path / "earlier.csv")
    fixed = tmp_path / "fixed" / "persons.csv"
    fixed.parent.mkdir()
    fixed.write_bytes(csv_bytes(people(1200)))
    args = ingest_args(node, built.path)
    first, again, good = rehealth_many(tmp_path, [args, args, ingest_args(node, fixed)])
    for run in (first, again):
        assert run.rc == 1 and len(run.errors) == 1 and re.search(built.locator, run.errors[0])
        assert json.loads(run.stdout)["rolled_back"] == 1000
    assert good.rc == 0, good.stderr
    s = json.loads(good.stdout)
    assert (s["rows"], s["loaded"], s["quarantined"], s["already_present"]) == (1200, 1200, 0, 0)
    after = state(node)
    assert len(after.persons) == 1205 and after.quarantine == []
    assert [j[:2] for j in after.jobs] == [
        ("earlier.csv", "done"),
        ("persons.csv", "failed"),
        ("persons.csv", "done"),
    ]
    for run in (first, again, good):
        assert_no_canary(run, after)


@pytest.mark.parametrize(
    "store_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_corrections_to_stored_people_are_refused_and_counted(node, tmp_path, store_url):
    use_store(node, store_url)
    first = tmp_path / "a.csv"
    first.write_bytes(csv_bytes(people(600)))
    cfg, store, pseudo = open_node(node / "node.toml")
    ingest_file(store, first, kind="persons", pseudonymize=pseudo.many, site_id=cfg.site_id)
    store.engine.dispose()
    before = state(node)
    # people 1..600 stored; the second file: 595..600 unchanged, 501..594 with another sbp in one
    # of two rows, 601..700 new
    rows = people(200, start=501)
    for r in rows[:94:2]:
        r["sbp"] = "151.373917"
    second = tmp_path / "b.csv"
    second.write_bytes(csv_bytes(rows))
    run = ingest(node, second)
    after = state(node)
    assert run.rc == 0, run.stderr
    s = json.loads(run.stdout)
    assert (s["rows"], s["loaded"], s["already_present"], s["quarantined"]) == (200, 100, 53, 47)
    assert s["by_reason"] == {"conflicts with stored": 47}
    assert s["rows"] == s["loaded"] + s["already_present"] + s["quarantined"]
    conflicts = [q for q in after.quarantine if q[0] == "b.csv"]
    assert {q[2] for q in conflicts} == {"sbp"} and [q[1] for q in conflicts] == list(range(1, 95, 2))
    assert conflicts[0][4].startswith("differs from the stored row (from a.csv row 501) in 1 field(s)")
    # 0 silent changes: every stored row is as it was; only the 100 new ones were added
    assert set(before.persons) <= set(after.persons) and len(after.persons) == 700
    assert_no_canary(run, after)


def test_a_full_disk_rolls_the_file_back(node, tmp_path):
    """A real SQLITE_FULL: the store may grow by 40 pages (~650 KB), enough for the first
    chunks of 4,000 rows but not for all of them."""
    with sqlite3.connect(node / "node.db") as c:
        pages = c.execute("PRAGMA page_count").fetchone()[0]
    cap = (
        "from sqlalchemy import event; from sqlalchemy.engine import Engine\n"
        "@event.listens_for(Engine, 'connect')\n"
        f"def _cap(dbapi, _rec): dbapi.execute('PRAGMA max_page_count={pages + 40}')\n"
    )
    path = tmp_path / "persons.csv"
    path.write_bytes(csv_bytes(people(4000)))
    built = Built(path, 4000, r"the store refused data rows \d+\.\.\d+ \(SQLite: database or disk is full\)")
    before = state(node)
    summary = assert_refused(ingest(node, path, prelude=cap), built, before, state(node))
    assert "free space" in json.dumps(summary)
    run = ingest(node, path)  # space freed (no cap): the same file loads whole
    assert run.rc == 0 and json.loads(run.stdout)["loaded"] == 4000


@pytest.mark.parametrize("store_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_postgres_a_nul_byte_in_a_text_field_refuses_the_file(node, tmp_path, store_url):
    """PostgreSQL cannot store a NUL character; SQLite could. The node refuses the file on
    both, naming row and column, and rolls back the chunks already stored on the server."""
    use_store(node, store_url)
    seed_store(node, tmp_path / "earlier.csv")
    rows = people(1200)
    rows[899]["department"] = "DEPT\x00CANARY-7f3a"
    parquet_file(path := tmp_path / "persons.parquet", rows)
    built = Built(path, 1200, r"data row 900, column department: the text holds a NUL character")
    before = state(node)
    assert_refused(ingest(node, path), built, before, state(node))
    # Without the node's own check, the server refuses the chunk: rolled back all the same.
    unchecked = "import node.ingest.pipeline as p\np._check_text = lambda *a: None\n"
    built.locator = r"the store refused data rows 501\.\.1000 \(PostgreSQL: a character not valid"
    assert_refused(ingest(node, path, prelude=unchecked), built, before, state(node))


def test_a_bug_shows_a_traceback_without_locals_and_rolls_back(node, tmp_path):
    """Not a user's mistake: the traceback is shown (a bug must be reported), but Rich prints
    no local variable (the chunk, the raw ids); the file is still rolled back."""
    bug = (
        "import node.ingest.pipeline as p\n"
        "_real = p.validate_chunk\n"
        "def _buggy(chunk, spec, *, first_row, **kw):\n"
        "    raw_ids = list(chunk['person_id'])\n"
        "    if first_row > 500:\n"
        "        raise RuntimeError('a bug in validation')\n"
        "    return _real(chunk, spec, first_row=first_row, **kw)\n"
        "p.validate_chunk = _buggy\n"
    )
    path = tmp_path / "persons.csv"
    path.write_bytes(csv_bytes(people(1200)))
    run = ingest(node, path, prelude=bug)
    assert run.rc == 1
    assert "RuntimeError" in run.stderr and "a bug in validation" in run.stderr
    assert "Traceback" in run.stderr
    after = state(node)
    assert after.persons == [] and [j[1] for j in after.jobs] == ["failed"]
    assert_no_canary(run, after)


def test_interrupted_ingest_still_resumes(node, tmp_path):
    """kill -9 is not a file-level error: the job stays running and a re-run resumes."""
    crash = (
        "import os, node.ingest.pipeline as p\n"
        "_real = p._commit_chunk\n"
        "def _dies(conn, spec, job, batch, name):\n"
        "    if batch.first_row > 1000:\n"
        "        os._exit(9)\n"
        "    return _real(conn, spec, job, batch, name)\n"
        "p._commit_chunk = _dies\n"
    )
    path = tmp_path / "persons.csv"
    path.write_bytes(csv_bytes(people(1600)))
    assert ingest(node, path, prelude=crash).rc == 9
    mid = state(node)
    assert len(mid.persons) == 1000 and [j[1:3] for j in mid.jobs] == [("running", 1000)]
    run = ingest(node, path)
    s = json.loads(run.stdout)
    assert (s["rows"], s["loaded"], s["already_present"], s["quarantined"]) == (1600, 1600, 0, 0)
    assert len(state(node).persons) == 1600


# --- the checker's offsets -------------------------------------------------------------------


@pytest.mark.parametrize("split", range(1, 8))
def test_text_check_offsets_are_exact_across_block_edges(split):
    """A multi-byte character cut by a block edge is valid; a bad byte after it is reported at
    its exact offset, whatever the block size."""
    data = "ab\u00fc\u20ac\U0001f600x".encode() + b"\xffz"
    bad = data.index(b"\xff")
    check, found = _TextCheck(), None
    for i in range(0, len(data), split):
        found = found or check.feed(data[i : i + split])
    assert found == (bad, "a byte sequence that is not UTF-8")
    truncated = _TextCheck()
    assert truncated.feed("ab\u20ac".encode()[:-1]) is None
    assert truncated.feed(b"", final=True) == (2, "a byte sequence that is not UTF-8")
    assert codecs.BOM_UTF8 + b"a" and _TextCheck().feed(codecs.BOM_UTF8 + b"a,b\n", final=True) is None


# --- corrections of every kind (in process: the comparison itself) --------------------------

_EVENT = dict(
    person_id="CANARY-7f3a-1", code="bp_management", start="2024-03-01", end="2024-06-01", channel="app"
)
_OUTCOME = dict(
    person_id="CANARY-7f3a-1",
    period_start="2024-01-01",
    period_end="2024-12-31",
    claims_cost="1234.373917",
    cv_event="0",
    absence_days="3",
)


@pytest.mark.parametrize(
    "kind, first, second, expected",
    [
        (
            "interventions",
            [_EVENT, dict(_EVENT, code="lipid_management", end="")],
            [_EVENT, dict(_EVENT, code="lipid_management", end="2024-05-01"), dict(_EVENT, channel="phone")],
            {2: "end"},  # row 3 has the same key as row 1 of this file: a duplicate record
        ),
        (
            "outcomes",
            [_OUTCOME, dict(_OUTCOME, person_id="CANARY-7f3a-2")],
            [dict(_OUTCOME, period_end="2024-12-30"), dict(_OUTCOME, person_id="CANARY-7f3a-2")],
            {1: "period_end"},
        ),
        (
            "cohort",
            [
                dict(person(1), treated="1", claims_cost="10.373917"),
                dict(person(2), treated="0", claims_cost="5"),
            ],
            [
                dict(person(1), treated="1", claims_cost="11.373917"),
                dict(person(2), treated="1", claims_cost="6"),
            ],
            {1: "claims_cost", 2: "treated"},
        ),
    ],
)
def test_corrections_of_every_kind_name_the_first_differing_field(
    store_url, tmp_path, kind, first, second, expected
):
    from node.pseudonym import Pseudonymizer
    from node.store import open_store

    store = open_store(store_url)
    pseudo = Pseudonymizer(key=bytes(range(32)), site_id="site_a")
    for name, rows in (("first.csv", first), ("second.csv", second)):
        (tmp_path / name).write_bytes(csv_bytes(rows, header=list(rows[0])))
    ingest_file(store, tmp_path / "first.csv", kind=kind, pseudonymize=pseudo.many, site_id="site_a")
    before = store.counts()
    s = ingest_file(store, tmp_path / "second.csv", kind=kind, pseudonymize=pseudo.many, site_id="site_a")
    q = store.quarantine_frame(ingest_id=2)
    conflicts = q[q.reason == "conflicts with stored"]
    assert dict(zip(conflicts.row, conflicts.field)) == expected
    assert s.rows == s.loaded + s.already_present + s.quarantined
    assert s.already_present == len(second) - len(q) - s.loaded
    assert store.counts()[kind] == before[kind] + s.loaded
    assert CANARY.search(repr(q.to_dict("records"))) is None


# --- errors_to_exit: every expected error class, one line, no value --------------------------


def _expected_errors() -> list[BaseException]:
    import errno
    import sqlite3 as sq

    from sqlalchemy.exc import OperationalError

    from shared.errors import DataError, SpecError

    raw = b"CANARY-7f3a-000001\xff"
    return [
        DataError("persons.csv: line 3 (data row 2) has 4 fields where the header line has 3"),
        SpecError("store_url is not a database URL"),
        OperationalError(
            "INSERT INTO persons VALUES (?)",
            ("CANARY-7f3a-000001",),
            sq.OperationalError("database or disk is full"),
        ),
        pa.ArrowInvalid("Could not convert 'CANARY-7f3a-000001' with type str: tried to convert to double"),
        OSError("Couldn't deserialize thrift: CANARY-7f3a-000001"),
        UnicodeDecodeError("utf-8", raw, 18, 19, "invalid start byte"),
        EOFError("Compressed file ended before the end-of-stream marker was reached CANARY-7f3a"),
        gzip.BadGzipFile("Not a gzipped file (b'CANARY-7f3a')"),
        zipfile.BadZipFile("File is not a zip file CANARY-7f3a"),
        FileNotFoundError(errno.ENOENT, "No such file or directory", "/srv/rehealth/node.db"),
    ]


@pytest.mark.parametrize("error", _expected_errors(), ids=lambda e: type(e).__name__)
def test_errors_to_exit_prints_one_line_without_values(error, capsys):
    from click.exceptions import Exit

    from node.cli._dataplane import errors_to_exit

    with pytest.raises(Exit) as e:
        with errors_to_exit():
            raise error
    assert e.value.exit_code == 1
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and out.out == "", out
    assert CANARY.search(out.err) is None, out.err


def test_a_bug_is_not_swallowed_by_errors_to_exit():
    from node.cli._dataplane import errors_to_exit

    with pytest.raises(KeyError):
        with errors_to_exit():
            raise KeyError("a bug keeps its traceback")


def test_when_the_roll_back_fails_too_the_file_stays_resumable(tmp_path, monkeypatch):
    """A store that refuses a write may refuse the roll-back's DELETE as well (a disk that is
    really full): then the job stays ``running``, the error says so, and the same command
    resumes once the cause is fixed — nothing lost, nothing twice."""
    import sqlite3 as sq

    from node.ingest import pipeline
    from node.ingest.pipeline import FileRefused
    from node.pseudonym import Pseudonymizer
    from node.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'n.db'}")
    pseudo = Pseudonymizer(key=bytes(range(32)), site_id="site_a")
    path = tmp_path / "persons.csv"
    path.write_bytes(csv_bytes(people(1200)))
    real_insert, real_delete = pipeline.insert_ignore, pipeline.delete

    def full(conn, table, cols, rows):
        if conn.execute(text("SELECT count(*) FROM persons")).scalar_one() >= 1000:
            raise sq.OperationalError("database or disk is full")
        return real_insert(conn, table, cols, rows)

    def no_delete(*a):
        raise sq.OperationalError("disk I/O error")

    monkeypatch.setattr(pipeline, "insert_ignore", full)
    monkeypatch.setattr(pipeline, "delete", no_delete)
    with pytest.raises(FileRefused) as e:
        ingest_file(store, path, kind="persons", pseudonymize=pseudo.many, site_id="site_a", chunk_rows=CHUNK)
    assert e.value.status == "running" and "resumes after data row 1000" in str(e.value)
    assert "database or disk is full" in str(e.value) and "disk I/O error" in str(e.value)
    monkeypatch.setattr(pipeline, "insert_ignore", real_insert)
    monkeypatch.setattr(pipeline, "delete", real_delete)
    s = ingest_file(store, path, kind="persons", pseudonymize=pseudo.many, site_id="site_a", chunk_rows=CHUNK)
    assert (s.rows, s.loaded, s.already_present, s.quarantined) == (1200, 1200, 0, 0)
    assert store.counts()["persons"] == 1200


# --- good files the checks must not refuse ---------------------------------------------------


def test_good_files_in_every_accepted_shape_still_load(tmp_path):
    """The checks refuse what is broken, not what is merely unusual: a UTF-8 BOM and
    non-ASCII text, a multi-member .csv.gz, a trailing delimiter on every line (pandas would
    take the first column as an index and shift every other one by one, silently)."""
    from node.pseudonym import Pseudonymizer
    from node.store import open_store
    from node.store.models import persons

    store = open_store(f"sqlite:///{tmp_path / 'n.db'}")
    pseudo = Pseudonymizer(key=bytes(range(32)), site_id="site_a")
    rows = people(30)
    for r in rows:
        r["department"] = "Büro-Ärzte-€"
    body = csv_bytes(rows)
    files = {
        "bom.csv": codecs.BOM_UTF8 + body,
        "multi.csv.gz": gzip.compress(body[:4000]) + gzip.compress(body[4000:]),
        "trailing.csv": b"\n".join(  # data lines only: the header has one field fewer
            [body.split(b"\n")[0]] + [line + b"," for line in body.rstrip(b"\n").split(b"\n")[1:]]
        )
        + b"\n",
    }
    for i, (name, data) in enumerate(files.items()):
        (tmp_path / name).write_bytes(data)
        s = ingest_file(store, tmp_path / name, kind="persons", pseudonymize=pseudo.many, site_id="site_a")
        assert (s.rows, s.quarantined) == (30, 0), name
        assert (s.loaded, s.already_present) == ((30, 0) if i == 0 else (0, 30)), (
            name
        )  # same people, same values
    with store.engine.connect() as c:
        got = (
            c.execute(persons.select().where(persons.c.pseudonym == pseudo("CANARY-7f3a-000007")))
            .mappings()
            .one()
        )
    assert (got["department"], got["age"], got["sbp"]) == ("Büro-Ärzte-€", 54.373917, 150.373917)
