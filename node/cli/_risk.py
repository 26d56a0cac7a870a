"""Plumbing shared by the risk commands (serve, score, apikey): where models and keys live."""

from __future__ import annotations

from pathlib import Path

import typer

from node.config import NodeConfig
from shared.errors import SpecError

MODELS_DIR = "models"  # beside node.toml: <node dir>/models/<version>.npz|.json


def node_config(config: Path | None) -> NodeConfig | None:
    """The node config if ``--config`` was given (or ./node.toml exists), else ``None``."""
    if config is None:
        config = Path("node.toml") if Path("node.toml").exists() else None
    return NodeConfig.from_toml(config) if config is not None else None


def model_dir(cfg: NodeConfig | None, config: Path | None, explicit: Path | None) -> Path:
    """``--model-dir``, else ``models/`` beside the node config."""
    if explicit is not None:
        return explicit
    if cfg is None:
        raise SpecError("give --model-dir or --config (models live in <node dir>/models)")
    return (config or Path("node.toml")).resolve().parent / MODELS_DIR


def keys_file(cfg: NodeConfig | None, explicit: Path | None) -> Path:
    """``--keys-file``, else the config's ``api_keys_path``."""
    if explicit is not None:
        return explicit
    if cfg is None:
        raise SpecError("give --keys-file or --config (api_keys_path)")
    return cfg.api_keys_path


def parse_cutoffs(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(
            "cut-offs: three comma-separated probabilities, e.g. 0.05,0.1,0.2", param_hint="--cutoffs"
        ) from None
