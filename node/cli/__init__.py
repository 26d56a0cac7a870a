"""`rehealth node` commands. One module per command; each registers itself on ``app``."""

from node.cli._app import app

__all__ = ["app"]

# Command modules register on import; add one line per command module.
from node.cli import (  # noqa: E402,F401
    apikey,  # noqa: E402,F401
    backup,  # noqa: E402,F401
    budget,  # noqa: E402,F401
    groups,  # noqa: E402,F401
    ingest,
    init,
    intervention,
    ledger,  # noqa: E402,F401
    model,  # noqa: E402,F401
    plans,  # noqa: E402,F401
    quarantine,  # noqa: E402,F401
    report,  # noqa: E402,F401
    run,  # noqa: E402,F401
    score,  # noqa: E402,F401
    serve,  # noqa: E402,F401
    store,  # noqa: E402,F401
)
