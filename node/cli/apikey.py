"""`rehealth node apikey create|list|revoke`: the scoring API's keys (a key is shown once, at
creation; only its SHA-256 is stored, and ``list`` shows ids, roles and dates, never a key)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from node.cli._app import app
from node.cli._dataplane import FORMAT_OPTION, errors_to_exit
from node.cli._risk import keys_file, node_config

apikey_app = typer.Typer(
    help="API keys of the node's scoring API.", no_args_is_help=True, pretty_exceptions_show_locals=False
)
app.add_typer(apikey_app, name="apikey")
CONFIG = typer.Option(None, "--config", "-c", help="The node's node.toml.")
KEYS = typer.Option(None, "--keys-file", help="API keys file (default: api_keys_path).")


def _iso(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


@apikey_app.command("create")
def create(
    role: str = typer.Option(..., "--role", help="underwriter, hr, ops or admin."),
    expires_in: str = typer.Option(None, "--expires-in", help="Lifetime, e.g. 30d, 12h, 2w (default: none)."),
    config: Path = CONFIG,
    keys: Path = KEYS,
    fmt: str = FORMAT_OPTION,
) -> None:
    """Create a key; only its SHA-256 is stored, the key itself is printed once."""
    from node.api.auth import add_key, parse_duration

    with errors_to_exit():
        path = keys_file(node_config(config), keys)
        entry, key = add_key(path, role=role, expires_in=parse_duration(expires_in) if expires_in else None)
    if fmt == "json":
        typer.echo(
            json.dumps(
                {
                    "id": entry.key_id,
                    "role": entry.role,
                    "key": key,
                    "expires_at": _iso(entry.expires_at),
                    "keys_file": str(path),
                }
            )
        )
    else:
        until = f", expires {_iso(entry.expires_at)}" if entry.expires_at else ""
        typer.echo(f"{entry.key_id} ({entry.role}{until}) added to {path}\nkey (shown once): {key}")


# `add` was the command's first name; kept so existing scripts go on working.
apikey_app.command("add", hidden=True)(create)


@apikey_app.command("list")
def list_(config: Path = CONFIG, keys: Path = KEYS, fmt: str = FORMAT_OPTION) -> None:
    """Every key: id, role, status (active, expired, revoked) and dates; never a key or hash."""
    from node.api.auth import list_keys

    with errors_to_exit():
        entries = list_keys(keys_file(node_config(config), keys))
    rows = [
        {
            "id": k.key_id,
            "role": k.role,
            "status": k.status(),
            "created_at": _iso(k.created_at),
            "expires_at": _iso(k.expires_at),
            "revoked_at": _iso(k.revoked_at),
        }
        for k in entries
    ]
    if fmt == "json":
        typer.echo(json.dumps(rows))
        return
    typer.echo(f"{'id':<12} {'role':<12} {'status':<8} {'created':<21} {'expires':<21} revoked")
    for r in rows:
        typer.echo(
            f"{r['id']:<12} {r['role']:<12} {r['status']:<8} {r['created_at'] or '-':<21} "
            f"{r['expires_at'] or '-':<21} {r['revoked_at'] or '-'}"
        )


@apikey_app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="The key's id (see: apikey list)."),
    config: Path = CONFIG,
    keys: Path = KEYS,
) -> None:
    """Revoke a key: a running API refuses it (401) from its next request on."""
    from node.api.auth import revoke_key

    with errors_to_exit():
        entry = revoke_key(keys_file(node_config(config), keys), key_id)
    typer.echo(f"{entry.key_id} ({entry.role}) revoked at {_iso(entry.revoked_at)}")
