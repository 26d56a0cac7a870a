"""The coordinator's files: study specs (TOML) in, study results (JSON) out and back.

The models and their parsing live in ``shared`` (:mod:`shared.study`, :mod:`shared.result`),
which does no I/O so that both sides can import it as a pure library
(``tests/unit/test_layering.py``); reading and writing the files is this module's.
"""

from __future__ import annotations

import json
from pathlib import Path

from shared.errors import SpecError
from shared.result import StudyResult
from shared.study import StudySpec


def load_spec(path: str | Path) -> StudySpec:
    """The study spec at ``path``; relative site data paths resolve against its folder."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"study spec {path} not found") from None
    return StudySpec.from_toml_text(text, source=f"study spec {path}", base=path.parent.resolve())


def write_result(result: StudyResult, path: str | Path) -> None:
    """``result`` as indented JSON (what ``rehealth report`` and the runner read back)."""
    Path(path).write_text(json.dumps(result.model_dump(mode="json"), indent=2) + "\n")


def read_result(path: str | Path) -> StudyResult:
    """The study result at ``path``; ``OSError`` if unreadable, pydantic's ``ValidationError``
    if it is not a result of this schema."""
    return StudyResult.model_validate_json(Path(path).read_text())
