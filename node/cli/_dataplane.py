"""Plumbing shared by the data-plane commands (init, ingest, intervention): opening a node
from its config, and turning expected errors into one line on stderr and exit code 1."""

from __future__ import annotations

import contextlib
import csv
import gzip
import json
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

import click
import pyarrow as pa
import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy.exc import SQLAlchemyError

from node.config import NodeConfig
from node.ingest.pipeline import store_error_text
from node.pseudonym import Pseudonymizer, open_pseudonymizer
from node.store import Store, open_store
from shared.errors import ReHealthError

CONFIG_OPTION = typer.Option(Path("node.toml"), "--config", "-c", help="The node's node.toml.")
FORMAT_OPTION = typer.Option("table", "--format", help="Output: table (human) or json.")


def open_node(config_path: Path) -> tuple[NodeConfig, Store, Pseudonymizer]:
    cfg = NodeConfig.from_toml(config_path)
    store = open_store(cfg.store_url)  # integrity-checked; the key is then checked against it
    return cfg, store, open_pseudonymizer(store, cfg.key_path, site_id=cfg.site_id)


@contextlib.contextmanager
def opened_node(config_path: Path) -> Iterator[tuple[NodeConfig, Store, Pseudonymizer]]:
    """:func:`open_node` for one command: the store's connections are closed when it is done,
    whatever happens (a CLI process may be one of several on a PostgreSQL server)."""
    cfg, store, pseudo = open_node(config_path)
    try:
        yield cfg, store, pseudo
    finally:
        store.engine.dispose()


@contextlib.contextmanager
def errors_to_exit() -> Iterator[None]:
    """An expected error becomes ``error: <message>`` on stderr and exit code 1 (no traceback).

    Expected: our typed errors (their messages never hold a row's value), and what a bad file
    or a failing store raises from a library — those are described by their type, the file
    name and the store's error code, never by the library's message (pyarrow, pandas and
    PostgreSQL quote cell values in theirs). Anything else is a bug and keeps its traceback
    (without local variables: see :mod:`node.cli._app`).
    """
    try:
        yield
    except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
        raise
    except ReHealthError as e:
        _fail(str(e))
    except _EXPECTED as e:
        _fail(describe_error(e))


#: Library errors a user's file or store can cause (see :func:`describe_error`).
_EXPECTED = (
    SQLAlchemyError,
    pa.ArrowException,
    UnicodeError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    csv.Error,
    OSError,  # after the ones above: gzip.BadGzipFile and pyarrow's IO errors are OSErrors
)


def describe_error(e: BaseException) -> str:
    """One line for an expected library error, without any value from a row."""
    if isinstance(e, SQLAlchemyError):
        return f"the store failed ({store_error_text(e)}): check the store and store_url, then retry"
    if isinstance(e, pa.ArrowException):
        return f"cannot read the Parquet file ({type(e).__name__}): export it again"
    if isinstance(e, UnicodeDecodeError):
        return f"a file is not UTF-8 text (byte {e.start}): re-export it as UTF-8"
    if isinstance(e, UnicodeError):
        return f"a text cannot be encoded or decoded ({type(e).__name__})"
    if isinstance(e, (EOFError, zlib.error)):
        return "a compressed file is cut off or corrupt: copy it again"
    if isinstance(e, zipfile.BadZipFile):
        return "a ZIP file is corrupt: copy it again"
    if isinstance(e, csv.Error):
        return "a CSV file is malformed: export it again"
    if isinstance(e, gzip.BadGzipFile):
        return "a .gz file is not gzip or is corrupt: copy it again"
    assert isinstance(e, OSError)
    if e.strerror is None:  # pyarrow's and others' OSErrors carry only a message (maybe a value)
        return f"cannot read a file or the store ({type(e).__name__}): check it and run the command again"
    where = f": {e.filename}" if e.filename else ""
    return f"{e.strerror}{where}"


def _fail(message: str) -> None:
    """Print ``error: message`` as one line on stderr (whatever the terminal width), exit 1."""
    Console(stderr=True).print(
        f"[red]error:[/red] {escape(' '.join(message.split()))}", highlight=False, markup=True, soft_wrap=True
    )
    raise typer.Exit(1) from None


def check_format(fmt: str) -> None:
    if fmt not in ("table", "json"):
        raise typer.BadParameter("use --format table or --format json", param_hint="--format")


def echo_json(data: dict) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
