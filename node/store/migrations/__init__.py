"""Alembic migrations of the node store (applied by :func:`node.store.schema.migrate`).

Shipped inside the package so that an installed node finds them. A new revision:
``cd node/store/migrations && alembic -c alembic.ini revision --autogenerate -m "what"`` against a
store at the current head (see ``alembic.ini``), then review the generated file by hand.
"""
