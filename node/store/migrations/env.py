"""Alembic environment of the node store.

:func:`node.store.schema.migrate` passes the connection it has locked in
``config.attributes["connection"]`` (migrations then run inside its transaction). The
``alembic`` command line (developers writing a revision) connects to ``sqlalchemy.url``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from node.store.models import metadata

config = context.config


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copy
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite:///dev-migrations.db")
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
