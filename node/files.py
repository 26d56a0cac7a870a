"""The node's TOML files (config, policy): read here, parsed by :func:`shared.study.parse_toml`.

``shared`` does no I/O (``tests/unit/test_layering.py``), so each side reads its own files; the
coordinator's counterpart is :mod:`coordinator.files` (the node must not import it).
"""

from __future__ import annotations

from pathlib import Path

from shared.errors import SpecError
from shared.study import parse_toml


def read_toml(path: str | Path, *, what: str, hint: str = "") -> dict:
    """A TOML file's content, or a :class:`SpecError` naming the file and what is wrong."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise SpecError(f"{what} {path} not found{hint}") from None
    return parse_toml(text, what=f"{what} {path}")
