"""`rehealth node model list|approve`: the node's risk models, served and candidate.

A model a coordinator sends (the federated evaluation) is stored as a candidate; ``serve`` and
``score`` use only approved ones. ``approve`` promotes a candidate after it passed the
calibration check (:mod:`node.risk.calibration`) on this node's own rows — local, exact,
nothing released.
"""

from __future__ import annotations

from pathlib import Path

import typer

from node.cli._app import app
from node.cli._dataplane import check_format, echo_json, errors_to_exit
from node.cli._risk import model_dir, node_config

model_app = typer.Typer(
    help="Risk models: list served and candidate models, approve a candidate.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(model_app, name="model")


@model_app.command("list")
def list_models(
    config: Path = typer.Option(None, "--config", "-c", help="The node's node.toml."),
    models: Path = typer.Option(None, "--model-dir", help="Model store (default <node dir>/models)."),
    fmt: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """Every stored model: served (approved) ones, then candidates awaiting approval."""
    from node.risk.model_store import ModelStore

    check_format(fmt)
    with errors_to_exit():
        entries = ModelStore(model_dir(node_config(config), config, models)).entries()
    if fmt == "json":
        echo_json(
            {
                "models": [
                    {
                        "version": e.version,
                        "status": e.status,
                        "record": e.record.model_dump(mode="json"),
                        "approval": e.approval,
                    }
                    for e in entries
                ]
            }
        )
        return
    if not entries:
        typer.echo("no risk models stored")
        return
    typer.echo(f"{'version':<18}{'status':<11}{'source':<12}{'rounds':>6}  {'ε':>6}  created")
    for e in entries:
        eps = f"{e.record.epsilon:g}" if e.record.epsilon is not None else "-"
        typer.echo(
            f"{e.version:<18}{e.status:<11}{e.record.source:<12}{e.record.rounds:>6}  "
            f"{eps:>6}  {e.record.created_at:%Y-%m-%d %H:%M}"
        )


@model_app.command("approve")
def approve(
    version: str = typer.Argument(..., help="The candidate's version (rehealth node model list)."),
    config: Path = typer.Option(None, "--config", "-c", help="The node's node.toml."),
    models: Path = typer.Option(None, "--model-dir", help="Model store (default <node dir>/models)."),
    data: Path = typer.Option(
        None,
        "--data",
        help="Cohort file (CSV/Parquet: the 16 features and "
        "cv_event) to check on; default: the config's data.cohort, else the "
        "node store's cohort.",
    ),
    fmt: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """Check a candidate's calibration on this node's rows; serve it only if it passes."""
    from node.risk.calibration import calibration_check
    from node.risk.model_store import ModelStore
    from shared.errors import SpecError

    check_format(fmt)
    with errors_to_exit():
        cfg = node_config(config)
        store = ModelStore(model_dir(cfg, config, models))
        candidate = store.load_candidate(version)
        X, y = local_rows(cfg, data)
        check = calibration_check(prob=_predict(candidate, X), y=y)
        if not check.passed:
            raise SpecError(
                f"model {version} NOT approved — it fails the calibration check on "
                f"this node's rows: {'; '.join(check.reasons)}. Figures: "
                f"{check.summary()}"
            )
        store.approve(version, check=check.to_dict())
    if fmt == "json":
        echo_json({"version": version, "approved": True, "check": check.to_dict()})
        return
    typer.echo(f"model {version} approved and served: {check.summary()}")


def local_rows(cfg, data: Path | None):
    """The node's own (features, cv_event) rows: ``--data``, else ``data.cohort`` of the
    config, else the node store's cohort. Features clipped to their public bounds; rows lacking
    a feature or a 0/1 outcome left out.

    Raises:
        SpecError: no source of rows; DataError: the rows lack a column.
    """
    import numpy as np
    import pandas as pd

    from node.risk.scoring import read_book
    from shared.errors import DataError, SpecError
    from shared.features import FEATURE_NAMES, FEATURES, clip_to_bounds

    path = data if data is not None else (cfg.data.cohort if cfg is not None else None)
    if path is not None:
        frame = read_book(path)
    elif cfg is not None:
        from node.store import open_store

        frame = open_store(cfg.store_url).cohort_columns(
            covariates=list(FEATURE_NAMES), treatment_column="treated", outcomes=["cv_event"]
        )
    else:
        raise SpecError("give --data FILE or --config node.toml (its cohort or store)")
    missing = [c for c in (*FEATURE_NAMES, "cv_event") if c not in frame.columns]
    if missing:
        raise DataError(f"the local rows lack column(s): {', '.join(missing)}", field=missing[0])
    X = frame[list(FEATURE_NAMES)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    y = pd.to_numeric(frame["cv_event"], errors="coerce").to_numpy(dtype=float)
    X, keep, _ = clip_to_bounds(X, FEATURES)
    y = y[keep]
    ok = (y == 0) | (y == 1)
    return X[ok], y[ok].astype(np.float64)


def _predict(stored, X):
    from shared.features import FEATURES, scale
    from shared.risk.arch import predict_proba

    return predict_proba(arch=stored.arch, arrays=stored.arrays, z=scale(X, FEATURES))
