"""``rehealth node store``: check the store (integrity, pseudonym key) and re-key it.

``check`` is what an operator runs after a crash, a restore or a warning: the same checks every
data-plane command runs when it opens the store (SQLite ``quick_check``, or ``integrity_check``
with ``--full``; PostgreSQL connectivity and schema), plus whether the key file is the one the
stored pseudonyms were made with. ``rekey`` is the one way to start over under another key.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from node.cli._app import app
from node.cli._dataplane import CONFIG_OPTION, FORMAT_OPTION, check_format, echo_json, errors_to_exit
from node.config import NodeConfig
from node.pseudonym import (
    META_FINGERPRINT,
    META_SITE,
    REKEY_FLAG,
    KeyMismatchError,
    key_fingerprint,
    load_or_create_key,
    rekey,
)
from node.store import open_store
from node.store.engine import RESTORE_HINT
from node.store.schema import current_revision
from shared.errors import DataError, SpecError

store_app = typer.Typer(
    help="The node store: check its integrity and pseudonym key; re-key it.", no_args_is_help=True
)
app.add_typer(store_app, name="store")


@store_app.command("check")
def check(
    config: Path = CONFIG_OPTION,
    full: bool = typer.Option(
        False, "--full", help="integrity_check (also cross-checks indexes, ~2x slower), not quick_check."
    ),
    fmt: str = FORMAT_OPTION,
) -> None:
    """Check the store's integrity and its pseudonym key; exit 1 on any problem."""
    check_format(fmt)
    with errors_to_exit():
        cfg = NodeConfig.from_toml(config)
        store = open_store(cfg.store_url, create=False)  # refuses a store that fails quick_check
        try:
            problems = store.integrity_problems(full=True) if full else []
            meta = store.meta()
            counts = store.person_counts()
            key_fp = (
                key_fingerprint(load_or_create_key(cfg.key_path, create=False))
                if cfg.key_path.exists()
                else None
            )
            dialect = store.dialect
            with store.engine.connect() as conn:
                schema = current_revision(conn)
        finally:
            store.engine.dispose()
        stored_fp, stored_site = meta.get(META_FINGERPRINT), meta.get(META_SITE)
        has_data = any(counts.values())
        key_state = (
            "missing"
            if key_fp is None
            else "not recorded yet"
            if stored_fp is None
            else "matches"
            if key_fp == stored_fp
            else "differs"
        )
        site_state = (
            "not recorded yet"
            if stored_site is None
            else "matches"
            if stored_site == cfg.site_id
            else "differs"
        )
        integrity = (
            "not checked here (PostgreSQL: connectivity and schema; page checksums are the server's)"
            if dialect != "sqlite"
            else f"{len(problems)} problem(s)"
            if problems
            else ("ok (integrity_check)" if full else "ok (quick_check)")
        )
        report = {
            "integrity": integrity,
            "schema_version": schema,
            "key_file": str(cfg.key_path),
            "key_fingerprint": key_fp[:8] if key_fp else None,
            "store_key_fingerprint": stored_fp[:8] if stored_fp else None,
            "key": key_state,
            "site_id": cfg.site_id,
            "store_site_id": stored_site,
            "site": site_state,
            "rows": counts,
        }
        if fmt == "json":
            echo_json(report)
        else:
            _print_report(report, problems)
        if problems:
            raise DataError(f"the store is corrupt (SQLite integrity_check found problems): {RESTORE_HINT}")
        if has_data and key_state in ("missing", "differs"):
            what = "is missing" if key_state == "missing" else "is not the key the store's data was made with"
            raise KeyMismatchError(
                f"the pseudonym key file {what}: restore the key with fingerprint "
                f"{(stored_fp or '?')[:8]} from backup, or re-key (rehealth node store rekey)"
            )
        if has_data and site_state == "differs":
            raise KeyMismatchError(
                f"site_id differs from the store's ({stored_site!r}): restore it in node.toml, or re-key"
            )


def _print_report(report: dict, problems: list[str]) -> None:
    out = Console()
    out.print(f"integrity  {report['integrity']}", highlight=False)
    out.print(f"schema     version {report['schema_version']} (migrated on open)", highlight=False)
    for line in problems[:10]:  # SQLite names pages and indexes here, never values
        out.print(f"  {line}", highlight=False)
    out.print(
        f"key        {report['key']} (file {report['key_fingerprint'] or '-'}, "
        f"store {report['store_key_fingerprint'] or '-'})",
        highlight=False,
        soft_wrap=True,
    )
    out.print(
        f"site_id    {report['site']} (config {report['site_id']!r}, store {report['store_site_id']!r})",
        highlight=False,
        soft_wrap=True,
    )
    rows = ", ".join(f"{k} {v:,}" for k, v in report["rows"].items())
    out.print(f"rows       {rows}", highlight=False, soft_wrap=True)


@store_app.command("rekey")
def rekey_store(
    config: Path = CONFIG_OPTION,
    confirm: bool = typer.Option(
        False, REKEY_FLAG, help="Confirm: delete the stored person data made under the old key."
    ),
    fmt: str = FORMAT_OPTION,
) -> None:
    """Start the store over under the current key file (created if missing) and site_id.

    Deletes every stored person row (persons, interventions, outcomes, cohort), the quarantine
    and the ingest history in one transaction, then records the new key's fingerprint: old and
    new pseudonyms never mix. Ingest the source files again afterwards. The privacy ledger is
    kept (same population, same budget). If the old key file exists anywhere, restore it instead.
    """
    check_format(fmt)
    with errors_to_exit():
        cfg = NodeConfig.from_toml(config)
        store = open_store(cfg.store_url, create=False)
        try:
            if not confirm:
                counts = store.person_counts()
                held = ", ".join(f"{k} {v:,}" for k, v in counts.items() if v) or "no rows"
                raise SpecError(
                    f"re-keying deletes the store's person data ({held}) and its ingest history; "
                    "pseudonyms made under the old key can never be linked to new ones. If the old "
                    f"key file exists anywhere, restore it instead. To go ahead, pass {REKEY_FLAG}"
                )
            deleted, fp = rekey(store, cfg.key_path, site_id=cfg.site_id)
        finally:
            store.engine.dispose()
    if fmt == "json":
        echo_json({"deleted": deleted, "key_fingerprint": fp[:8], "site_id": cfg.site_id})
        return
    gone = ", ".join(f"{k} {v:,}" for k, v in deleted.items() if v) or "nothing"
    Console().print(
        f"[green]re-keyed[/green]: the store is bound to key {fp[:8]} (site {cfg.site_id}); deleted {gone}. "
        "Ingest the source files again; the privacy ledger is unchanged.",
        highlight=False,
        soft_wrap=True,
    )
