"""Shared fixtures: node store URLs over SQLite and a real, throwaway PostgreSQL server.

``store_url`` is parametrised over ``["sqlite", "postgres"]``: every store test runs on both.
The PostgreSQL cluster is created once per session (initdb into a temp dir, as the
``postgres`` OS user when running as root), listens on 127.0.0.1 on a free port, and is
stopped at the end; each test gets its own fresh schema. Without the PostgreSQL binaries
the postgres cases FAIL (never skip): run ``deploy/postgres.sh``.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

PG_USER = "postgres"
_db_counter = itertools.count()


def _pg_bindir() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_pg_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(_as_pg_user(cmd), capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")


@pytest.fixture(scope="session")
def postgres_server():
    """Base URL (no database) of a throwaway PostgreSQL cluster on 127.0.0.1."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.fail(
            "PostgreSQL server binaries not found (no pg_ctl): run `bash deploy/postgres.sh`"
            " (installs the Debian postgresql package), then re-run the tests.",
            pytrace=False,
        )
    tmp = Path(tempfile.mkdtemp(prefix="rehealth-pg-"))
    data = tmp / "data"
    if os.geteuid() == 0:
        shutil.chown(tmp, user=PG_USER)
    port = _free_port()
    _run([str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--no-sync"])
    _run(
        [
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(tmp / "log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -k {tmp} -c fsync=off",
            "start",
        ]
    )
    try:
        yield f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{port}"
    finally:
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    """``postgresql+psycopg2://postgres@127.0.0.1:PORT/rehealth_test`` (shared by the session)."""
    return _create_database(postgres_server, "rehealth_test")


def _admin(url: str, sql: str) -> None:
    import psycopg2

    host_port, _, dbname = url.rsplit("@", 1)[1].partition("/")
    host, port = host_port.split(":")
    conn = psycopg2.connect(host=host, port=int(port), user=PG_USER, dbname=dbname or "postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


def _create_database(base_url: str, name: str) -> str:
    _admin(base_url, f'CREATE DATABASE "{name}"')
    return f"{base_url}/{name}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request, tmp_path) -> str:
    """A URL of an empty node store: a SQLite file, or a fresh schema on real PostgreSQL.

    A schema per test (selected by ``search_path`` in the URL) is much cheaper than a
    database per test and just as isolated for the store's unqualified table names.
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'node.db'}"
    base = request.getfixturevalue("postgres_url")
    schema = f"t_{os.getpid()}_{next(_db_counter)}"
    _admin(base, f'CREATE SCHEMA "{schema}"')
    return f"{base}?options=-csearch_path%3D{schema}"


def _valid_person(person_id: str, **overrides) -> dict:
    """A persons-file row (text cells, as in a CSV) that passes validation."""
    from shared.features import FEATURES

    row = {
        "person_id": person_id,
        "site": "site_a",
        "department": "ops",
        "job_type": "office",
        "index_date": "2024-01-15",
    }
    row.update({f.name: "1" if f.kind == "binary" else f"{(f.lo + f.hi) / 2:g}" for f in FEATURES})
    row.update(overrides)
    return row


@pytest.fixture
def valid_person():
    """Factory of valid persons-file rows: ``valid_person("A-1", age="55")``."""
    return _valid_person


#: Run first under ``deploy/dev.sh test`` (two pytest-xdist workers): the 20-firm study, a
#: quarter of the suite's time on its own, then the other integration tests (tests/integration/).
FIRST = "tests/integration/test_small_firms.py"
INTEGRATION = "tests/integration/"


def _queue_rank(item: pytest.Item) -> int:
    module = item.nodeid.split("::")[0]
    return 0 if module == FIRST else 1 if module.startswith(INTEGRATION) else 2


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a pytest-xdist worker: the longest work first, so the short modules fill in at the end.

    ``deploy/dev.sh test`` runs two workers with ``--dist loadscope --no-loadscope-reorder``:
    each module goes whole to one worker (a module-scoped fixture — a federation, a browser, a
    signed report — is built once) and the modules are handed out in the workers' collection
    order, which this puts as :data:`FIRST`, the other integration modules, then everything
    else (a stable sort: file order within each). So the 20-firm study starts at once on one
    worker, the other integration modules, each starting real Flower federations, follow on
    either, and at most two federations run at a time, one per worker. A run without ``-n``
    keeps file order."""
    if hasattr(config, "workerinput"):
        items.sort(key=_queue_rank)
