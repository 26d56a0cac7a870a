"""The node store: SQLAlchemy 2 tables over SQLite (default) or PostgreSQL (by URL)."""

from node.store.engine import Store, fetch_by_pseudonyms, insert_ignore, open_store
from node.store.models import NATURAL_KEYS, metadata

__all__ = ["NATURAL_KEYS", "Store", "fetch_by_pseudonyms", "insert_ignore", "metadata", "open_store"]
