"""The node's TOML files (config, policy): read here, parsed by :func:`shared.study.parse_toml`.

``shared`` does no I/O (``tests/unit/test_layering.py``), so each side reads its own files; the
coordinator's counterpart is :mod:`coordinator.files` (the node must not import it).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO, Iterator

from shared.errors import SpecError
from shared.study import parse_toml


def read_toml(path: str | Path, *, what: str, hint: str = "") -> dict:
    """A TOML file's content, or a :class:`SpecError` naming the file and what is wrong."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise SpecError(f"{what} {path} not found{hint}") from None
    return parse_toml(text, what=f"{what} {path}")


def create_private_file(path: str | None) -> None:
    """Create a new SQLite database file as 0600 (an existing one is left as it is): the store
    holds pseudonymised health data and the ledger every release. SQLite gives its -wal and
    -shm files the database file's permissions, so they follow."""
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except (FileExistsError, FileNotFoundError):  # exists; or no folder: the driver says so
        pass


@contextlib.contextmanager
def private_output(path: str | Path) -> Iterator[BinaryIO]:
    """``path`` opened for writing (truncated) as mode 0600 whatever the umask, even when it
    existed with another mode: for files of per-person values (``rehealth node score -o``),
    which another account on the host must not read (``tests/security/test_files_at_rest.py``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "wb") as f:
        yield f
