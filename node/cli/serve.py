"""`rehealth node serve`: run the node's scoring API (FastAPI under uvicorn)."""

from __future__ import annotations

import stat
from pathlib import Path

import typer

from node.cli._app import app
from node.cli._dataplane import errors_to_exit
from node.cli._logging import LOG_FORMAT_OPTION, LOG_LEVEL_OPTION, setup_node_logging
from node.cli._risk import keys_file, model_dir, node_config, parse_cutoffs
from node.cli.report import reports_folder
from node.config import is_loopback
from shared.errors import SpecError


@app.command("serve")
def serve(
    config: Path = typer.Option(None, "--config", "-c", help="The node's node.toml."),
    models: Path = typer.Option(None, "--model-dir", help="Model store (default <node dir>/models)."),
    version: str = typer.Option(None, "--version", help="Model version (default: the latest)."),
    keys: Path = typer.Option(None, "--keys-file", help="API keys (default: api_keys_path)."),
    book: Path = typer.Option(
        None, "--book", help="CSV/Parquet population for HR group views (default: the node store's persons)."
    ),
    cutoffs: str = typer.Option(None, "--cutoffs", help="Tier cut-offs, e.g. 0.05,0.1,0.2."),
    k: int = typer.Option(None, "--k", help="Group views: suppress cells below k (default: min_cell)."),
    sigma: float = typer.Option(2.0, "--sigma", help="Group views: Gaussian noise per count and risk sum."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8080, "--port"),
    tls_cert: Path = typer.Option(
        None, "--tls-cert", help="HTTPS certificate, PEM (default: [api] tls_cert); needed off loopback."
    ),
    tls_key: Path = typer.Option(None, "--tls-key", help="HTTPS private key, PEM (default: [api] tls_key)."),
    log_format: str = LOG_FORMAT_OPTION,
    log_level: str = LOG_LEVEL_OPTION,
) -> None:
    """Serve real-time and batch scoring and group views, behind API keys with roles; one
    audit line per request on stderr (see docs/USAGE.md, "Operating the scoring API")."""
    import logging

    import uvicorn

    from node.api.app import MAX_BODY_BYTES, create_app
    from node.cli.groups import group_policy, population

    with errors_to_exit():
        cfg = node_config(config)
        tls = transport(host, tls_cert, tls_key, cfg.api if cfg is not None else None)
        _, level = setup_node_logging(cfg, log_format, log_level)
        if cfg is None and book is not None:  # as `rehealth node groups` (test_views_need_a_ledger.py)
            raise SpecError(
                "give --config node.toml: group views of --book are charged to the node's ledger "
                "(without it every restart would give a fresh, uncharged draw)"
            )
        ledger = None
        # the store's persons are read at the first group request, not at start-up
        people = book if book is not None or cfg is None else (lambda: population(cfg, None))
        if cfg is not None:
            from node.ledger_anchor import StoreAnchor, open_anchored_ledger

            # the population's one budget (and /readyz's), checked against the store's anchor
            ledger = open_anchored_ledger(cfg.ledger_url, StoreAnchor(cfg.store_url))
            ledger.ensure_budget(epsilon=cfg.budget.epsilon, delta=cfg.budget.delta)
        policy = group_policy(cfg, k=k, sigma=sigma)
        api_cfg = cfg.api if cfg is not None else None
        api = create_app(
            keys=keys_file(cfg, keys),
            model_dir=model_dir(cfg, config, models),
            version=version,
            cutoffs=parse_cutoffs(cutoffs),
            book=people,
            group_policy=policy,
            ledger=ledger,
            store_url=cfg.store_url if cfg is not None else None,
            max_body_bytes=api_cfg.max_body_bytes if api_cfg else MAX_BODY_BYTES,
            cors_origins=api_cfg.cors_origins if api_cfg else (),
            plan_callbacks=_plan_callbacks(cfg),
            reports_dir=reports_folder(config) if cfg is not None else None,
        )
    logging.getLogger("rehealth.api").info(
        "scoring API starting",
        extra={
            "fields": {
                "host": host,
                "port": port,
                "max_body_bytes": api_cfg.max_body_bytes if api_cfg else MAX_BODY_BYTES,
                "tls": tls is not None,
            }
        },
    )
    # log_config=None: uvicorn keeps the one handler set up above; its own access log stays
    # off (the audit line replaces it: it has the key id and route template, not the raw path)
    uvicorn.run(
        api,
        host=host,
        port=port,
        log_config=None,
        log_level=level.lower(),
        access_log=False,
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
    )


def transport(host: str, cert: Path | None, key: Path | None, api) -> tuple[Path, Path] | None:
    """The certificate and key to serve HTTPS with (the options, else ``[api]``), or None for
    plain HTTP — which only a loopback host may have: the API carries API keys, per-person
    scores and HR's session cookie, which must not cross a network in the clear (a TLS proxy
    on this host keeps the API on 127.0.0.1). Checked before anything is opened.

    Raises:
        SpecError: one of cert and key without the other, a missing file, a key others can
            read, or a plain-HTTP host that is not loopback.
    """
    if cert is None and key is None and api is not None:
        cert, key = api.tls_cert, api.tls_key
    if (cert is None) != (key is None):
        raise SpecError("give both --tls-cert and --tls-key, or neither")
    if cert is not None and key is not None:
        for p in (cert, key):
            if not p.is_file():
                raise SpecError(f"TLS file {p} not found")
        mode = stat.S_IMODE(key.stat().st_mode)
        if mode & 0o077:  # as federation.private_key: a key others can read is their server
            raise SpecError(f"TLS key {key} is readable by others (mode {mode:o}); chmod 600 it")
        return cert, key
    if not is_loopback(host):
        raise SpecError(
            f"the scoring API on {host} would be plain HTTP: API keys and per-person scores would "
            "cross the network in the clear. Give --tls-cert/--tls-key (or [api] tls_cert/tls_key), "
            "or keep --host 127.0.0.1 behind a TLS proxy on this machine"
        )
    return None


def _plan_callbacks(cfg):
    """The signed plan-event callback, served when ``[plans]`` is configured and its callback
    secret exists (``rehealth node plans secret``)."""
    if cfg is None or cfg.plans is None or not cfg.plans.callback_secret_path.exists():
        return None
    from node.cli.plans import _recipient_key
    from node.plans.events import CallbackSettings
    from node.plans.signing import read_secret
    from node.store import open_store

    return CallbackSettings(
        store=open_store(cfg.store_url),
        secret=read_secret(cfg.plans.callback_secret_path, what="callback secret"),
        recipient_key=_recipient_key(cfg),
        window_s=cfg.plans.callback_window_s,
    )
