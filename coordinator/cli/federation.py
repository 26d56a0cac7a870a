"""``rehealth federation provision|add-site|revoke-site``: start-up kits from one file.

See :mod:`coordinator.federation.provision` for what each kit holds and ``deploy/PROVISIONING.md``
for the procedure.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from shared.errors import ReHealthError

app = typer.Typer(
    help="Provision a federation: start-up kits for the coordinator and each site.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # key material must never reach a traceback
)

_INSECURE_HELP = (
    "Write the CA and study-signing keys unencrypted (debugging only; by default they are "
    "encrypted with REHEALTH_KEY_PASSPHRASE)."
)


def _fail(e: Exception) -> None:
    Console(stderr=True).print(f"[red]error:[/red] {escape(str(e))}")
    raise typer.Exit(1) from None


@app.command("provision")
def provision_cmd(
    spec: Path = typer.Argument(..., exists=True, dir_okay=False, help="federation.toml"),
    out: Path = typer.Option(Path("kits"), "--out", help="Folder for the kits."),
    force: bool = typer.Option(False, "--force", help="Replace existing kits (new keys for all)."),
    insecure_plaintext_key: bool = typer.Option(False, "--insecure-plaintext-key", help=_INSECURE_HELP),
) -> None:
    """Write the coordinator's kit and one kit per site of SPEC under --out."""
    from coordinator.federation.provision import FederationFile, describe, passphrase_from_env, provision

    try:
        phrase = passphrase_from_env(insecure_plaintext=insecure_plaintext_key)
        kits = provision(FederationFile.load(spec), out, passphrase=phrase, force=force)
    except ReHealthError as e:
        _fail(e)
    typer.echo(json.dumps(describe(kits), indent=2))


@app.command("add-site")
def add_site_cmd(
    name: str = typer.Argument(..., help="The new site's name."),
    kit: Path = typer.Option(Path("kits/coordinator"), "--kit", help="The coordinator's kit."),
    out: Path = typer.Option(Path("kits/sites"), "--out", help="Where the site's kit goes."),
    time_zone: str = typer.Option("UTC", "--time-zone"),
    runtime_address: str = typer.Option("127.0.0.1:9094", "--runtime-address"),
    force: bool = typer.Option(False, "--force", help="Re-key a site that is already registered."),
    insecure_plaintext_key: bool = typer.Option(False, "--insecure-plaintext-key", help=_INSECURE_HELP),
) -> None:
    """Write a kit for a new site and register its key (effective at the SuperLink's next start)."""
    from pydantic import ValidationError

    from coordinator.federation.provision import SiteEntry, add_site, passphrase_from_env

    try:
        site = SiteEntry(name=name, time_zone=time_zone, runtime_address=runtime_address)
        phrase = passphrase_from_env(insecure_plaintext=insecure_plaintext_key)
        written = add_site(kit, site, out, passphrase=phrase, force=force)
    except (ReHealthError, ValidationError) as e:
        _fail(e)
    typer.echo(str(written.root))


@app.command("revoke-site")
def revoke_site_cmd(
    name: str = typer.Argument(..., help="The site to revoke."),
    kit: Path = typer.Option(Path("kits/coordinator"), "--kit", help="The coordinator's kit."),
) -> None:
    """Remove the site's key from the registered set. A running SuperLink keeps accepting it
    until restarted (`rehealth coordinator run` registers only the set), or until the node is
    unregistered live: `flwr supernode list` / `flwr supernode unregister NODE_ID`."""
    from coordinator.federation.provision import revoke_site

    try:
        moved = revoke_site(kit, name)
    except ReHealthError as e:
        _fail(e)
    typer.echo(f"revoked {name} (key kept at {moved}); restart the SuperLink for it to take effect")
