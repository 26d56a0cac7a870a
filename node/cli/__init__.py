"""`rehealth node` commands. One module per command; each registers itself on ``app``."""

from node.cli._app import app

__all__ = ["app"]

# Command modules register on import; add one line per command module.
from node.cli import init, ingest, intervention  # noqa: E402,F401
from node.cli import serve  # noqa: E402,F401
from node.cli import score  # noqa: E402,F401
from node.cli import apikey  # noqa: E402,F401
from node.cli import budget  # noqa: E402,F401
from node.cli import model  # noqa: E402,F401
