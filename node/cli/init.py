"""``rehealth node init``: a commented default node.toml, the pseudonym key and an empty store."""

from __future__ import annotations

import tomllib
from pathlib import Path

import typer
from rich.console import Console

from node.cli._app import app
from node.cli._dataplane import FORMAT_OPTION, check_format, echo_json, errors_to_exit
from node.config import CONFIG_NAME, NodeConfig, default_config_text
from node.pseudonym import open_pseudonymizer
from node.store import open_store
from shared.errors import SpecError


@app.command("init")
def init(
    directory: Path = typer.Option(Path("."), "--dir", "-d", help="Node directory (created)."),
    site_id: str = typer.Option("my_site", "--site-id", help="This site's name in studies."),
    time_zone: str = typer.Option(
        "UTC", "--time-zone", help="The site's IANA time zone (e.g. Europe/Berlin): dates are days there."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing node.toml."),
    fmt: str = FORMAT_OPTION,
) -> None:
    """Create a node: commented node.toml, pseudonym key (0600) and an empty store."""
    check_format(fmt)
    with errors_to_exit():
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SpecError(f"cannot create {directory}: {e.strerror}") from None
        path = directory / CONFIG_NAME
        if path.exists() and not force:
            raise SpecError(f"{path} exists; edit it, or pass --force to overwrite")
        text = default_config_text(site_id=site_id, time_zone=time_zone)
        # never write an invalid file, nor one the store would refuse: the store is opened
        # (checked, tables created) and the key created, or checked against the store's
        # fingerprint and site id, before node.toml is (over)written
        cfg = NodeConfig.from_dict(tomllib.loads(text), base=directory.resolve())
        store = open_store(cfg.store_url)
        try:
            open_pseudonymizer(store, cfg.key_path, site_id=cfg.site_id)
        finally:
            store.engine.dispose()
        try:
            path.write_text(text)
        except OSError as e:  # a full disk, a read-only folder: one line, not a traceback
            raise SpecError(f"cannot write {path}: {e.strerror}") from None
    info = {
        "config": str(path),
        "key": str(cfg.key_path),
        "store": _safe_url(cfg.store_url),
        "site_id": cfg.site_id,
    }
    if fmt == "json":
        echo_json(info)
        return
    out = Console()
    out.print(f"[green]node initialised[/green] for site [bold]{cfg.site_id}[/bold]")
    out.print(
        f"  config  {path}\n  key     {cfg.key_path} (0600, keep it on this machine)\n"
        f"  store   {info['store']}",
        highlight=False,
    )
    out.print(f"next: rehealth node ingest --config {path} --kind persons FILE", highlight=False)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
