"""Versioned risk models with their training record, as files in the node's state folder.

Each model is two files named by its version: ``<version>.npz`` (the parameter arrays) and
``<version>.json`` (architecture, feature order, training record). The version is the first 16
hex digits of SHA-256 over the weights (shape and float64 bytes) and the record without its
timestamp, so saving the same model twice is idempotent and a loaded model is checked against its
name. The node scores with the exact model it was sent.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from pydantic import ValidationError

from shared.errors import SpecError
from shared.features import FEATURE_NAMES
from shared.risk.arch import RiskArch, check_arrays
from shared.risk.record import TrainingRecord
from shared.risk.tiers import check_cutoffs

__all__ = ["ModelStore", "StoredModel", "TrainingRecord", "model_version"]

_VERSION_CHARS = 16


@dataclass(frozen=True)
class StoredModel:
    """A model as the node scores with it."""

    version: str
    arrays: list[np.ndarray]
    record: TrainingRecord

    @property
    def arch(self) -> RiskArch:
        return self.record.arch


def model_version(*, arrays: Sequence[np.ndarray], record: TrainingRecord) -> str:
    """Content hash of weights and record (``created_at`` excluded)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a, dtype="<f8")
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    meta = record.model_dump(mode="json", exclude={"created_at"})
    h.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()[:_VERSION_CHARS]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class ModelStore:
    """The node's folder of versioned models."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def save(self, *, arrays: Sequence[np.ndarray], record: TrainingRecord) -> StoredModel:
        """Store a model; returns it with its version.

        Raises:
            SpecError: arrays that do not fit the record's architecture, a feature order other
                than ``FEATURE_NAMES``, or invalid tier cut-offs.
        """
        if tuple(record.feature_names) != FEATURE_NAMES:
            raise SpecError(f"model features {record.feature_names} differ from {FEATURE_NAMES}")
        check_cutoffs(record.cutoffs)
        arrays = check_arrays(arch=record.arch, arrays=arrays)
        version = model_version(arrays=arrays, record=record)
        self.root.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, *arrays)
        _write_atomic(self.root / f"{version}.npz", buf.getvalue())
        _write_atomic(self.root / f"{version}.json",
                      record.model_dump_json(indent=2).encode())
        return StoredModel(version=version, arrays=arrays, record=record)

    def versions(self) -> list[str]:
        """Stored versions, oldest first (by ``created_at``)."""
        if not self.root.is_dir():
            return []
        found = [p.stem for p in self.root.glob("*.json") if (self.root / f"{p.stem}.npz").exists()]
        return sorted(found, key=lambda v: (self._record(v).created_at, v))

    def load(self, version: str) -> StoredModel:
        """Load ``version`` and check its content against its name.

        Raises:
            SpecError: unknown version, unreadable files, or content that does not hash to
                its version (a corrupted or tampered model).
        """
        if not (self.root / f"{version}.npz").exists():
            raise SpecError(f"model version {version!r} not found in {self.root}")
        record = self._record(version)
        with np.load(self.root / f"{version}.npz") as npz:
            arrays = [npz[f"arr_{i}"] for i in range(len(npz.files))]
        arrays = check_arrays(arch=record.arch, arrays=arrays)
        if model_version(arrays=arrays, record=record) != version:
            raise SpecError(f"model {version}: content does not match its version (corrupted?)")
        return StoredModel(version=version, arrays=arrays, record=record)

    def latest(self) -> StoredModel:
        """The most recently created model.

        Raises:
            SpecError: the store is empty.
        """
        versions = self.versions()
        if not versions:
            raise SpecError(f"no risk model stored in {self.root} (train one first)")
        return self.load(versions[-1])

    def _record(self, version: str) -> TrainingRecord:
        try:
            return TrainingRecord.model_validate_json((self.root / f"{version}.json").read_text())
        except (OSError, ValidationError) as e:
            raise SpecError(f"model {version}: unreadable training record: {e}") from None
