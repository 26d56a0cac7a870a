"""``python -m node.cli``: the node's commands without the root CLI (``node run`` starts its
scoring API this way)."""

from node.cli import app

app()
