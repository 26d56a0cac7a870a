"""Revisions of the node store's schema, oldest first (``0001`` is the baseline)."""
