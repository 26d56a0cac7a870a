"""Versioned risk models with their training record, as files in the node's state folder.

Each model is two files named by its version: ``<version>.npz`` (the parameter arrays) and
``<version>.json`` (architecture, feature order, training record). The version is the first 16
hex digits of SHA-256 over the weights (shape and float64 bytes) and the record without its
timestamp, so saving the same model twice is idempotent and a loaded model is checked against its
name.

**Served and candidate models.** A model is *served* (``rehealth node serve`` and ``score``,
:meth:`ModelStore.latest`, :meth:`ModelStore.load`) only when it sits in the store's folder
together with ``<version>.approved.json``, the operator's approval note. A model a coordinator
sends is saved as a *candidate* (:meth:`ModelStore.save_candidate`, folder ``candidates/``) and
becomes served only through :meth:`ModelStore.approve`, which ``rehealth node model approve``
calls after the model passed a calibration check on the node's own rows
(:mod:`node.risk.calibration`). A model in the folder without an approval note (stored by a
node before approvals existed) counts as a candidate. :meth:`ModelStore.save` is the operator's
own act (a locally trained or imported model) and writes its approval note directly.
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

from node.files import private_output
from shared.errors import SpecError
from shared.features import FEATURE_NAMES
from shared.risk.arch import RiskArch, check_arrays
from shared.risk.record import TrainingRecord
from shared.risk.tiers import check_cutoffs

__all__ = ["CANDIDATES", "ModelEntry", "ModelStore", "StoredModel", "TrainingRecord", "model_version"]

_VERSION_CHARS = 16
CANDIDATES = "candidates"  # sub-folder of models a coordinator sent, not served
_APPROVAL = ".approved.json"


@dataclass(frozen=True)
class StoredModel:
    """A model as the node scores with it."""

    version: str
    arrays: list[np.ndarray]
    record: TrainingRecord

    @property
    def arch(self) -> RiskArch:
        return self.record.arch


@dataclass(frozen=True)
class ModelEntry:
    """One line of ``rehealth node model list``."""

    version: str
    status: str  # "served" | "candidate"
    record: TrainingRecord
    approval: dict | None = None


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


def _write_atomic(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write ``path`` whole or not at all; ``private``: mode 0600 whatever the umask."""
    tmp = path.with_name(path.name + ".tmp")
    if private:
        with private_output(tmp) as f:
            f.write(data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


class ModelStore:
    """The node's folder of versioned models: served ones at its top, candidates below."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def candidates_dir(self) -> Path:
        return self.root / CANDIDATES

    # -- writing ---------------------------------------------------------------------------
    def save(
        self,
        *,
        arrays: Sequence[np.ndarray],
        record: TrainingRecord,
        note: str = "stored by the node's operator",
    ) -> StoredModel:
        """Store a model the operator vouches for (trained locally, imported): served at once.

        Raises:
            SpecError: arrays that do not fit the record's architecture, a feature order other
                than ``FEATURE_NAMES``, or invalid tier cut-offs.
        """
        stored = self._write(self.root, arrays, record)
        self._write_approval(stored.version, {"note": note})
        return stored

    def save_candidate(self, *, arrays: Sequence[np.ndarray], record: TrainingRecord) -> StoredModel:
        """Store a model a coordinator sent as a candidate: never served until approved.

        An already served model of the same version stays served (same content).

        Raises:
            SpecError: as :meth:`save`.
        """
        return self._write(self.candidates_dir, arrays, record)

    def approve(self, version: str, *, check: dict) -> StoredModel:
        """Promote candidate ``version`` to served, recording ``check`` (the calibration figures
        the operator's approval rests on) in its approval note.

        Raises:
            SpecError: no such candidate, or its content does not match its version.
        """
        folder = self._candidate_folder(version)
        stored = self._load(folder, version)
        if folder != self.root:
            self._write(self.root, stored.arrays, stored.record)
        self._write_approval(version, {"note": "approved by the node's operator", "check": check})
        if folder != self.root:
            for suffix in (".npz", ".json"):
                (folder / f"{version}{suffix}").unlink(missing_ok=True)
        return self.load(version)

    def _write(self, folder: Path, arrays: Sequence[np.ndarray], record: TrainingRecord) -> StoredModel:
        if tuple(record.feature_names) != FEATURE_NAMES:
            raise SpecError(f"model features {record.feature_names} differ from {FEATURE_NAMES}")
        check_cutoffs(record.cutoffs)
        arrays = check_arrays(arch=record.arch, arrays=arrays)
        version = model_version(arrays=arrays, record=record)
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, *arrays)
        _write_atomic(folder / f"{version}.npz", buf.getvalue())
        _write_atomic(folder / f"{version}.json", record.model_dump_json(indent=2).encode())
        return StoredModel(version=version, arrays=arrays, record=record)

    def _write_approval(self, version: str, body: dict) -> None:
        import datetime as dt

        body = {
            "version": version,
            "approved_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            **body,
        }
        # 0600: the calibration check is exact figures of the node's own rows (events, observed
        # rate per decile of risk), not for another account on the host (test_files_at_rest.py)
        _write_atomic(
            self.root / f"{version}{_APPROVAL}",
            (json.dumps(body, indent=2, default=float) + "\n").encode(),
            private=True,
        )

    # -- reading ---------------------------------------------------------------------------
    def _approved(self, version: str) -> bool:
        return (self.root / f"{version}{_APPROVAL}").exists()

    @staticmethod
    def _stored_in(folder: Path) -> list[str]:
        if not folder.is_dir():
            return []
        return [
            p.stem
            for p in folder.glob("*.json")
            if not p.name.endswith(_APPROVAL) and (folder / f"{p.stem}.npz").exists()
        ]

    def versions(self) -> list[str]:
        """Served (approved) versions, oldest first (by ``created_at``)."""
        found = [v for v in self._stored_in(self.root) if self._approved(v)]
        return sorted(found, key=lambda v: (self._record(self.root, v).created_at, v))

    def candidate_versions(self) -> list[str]:
        """Candidate versions (sent, not approved), oldest first."""
        sent = [
            (self.candidates_dir, v) for v in self._stored_in(self.candidates_dir) if not self._approved(v)
        ]
        legacy = [(self.root, v) for v in self._stored_in(self.root) if not self._approved(v)]
        found = {v: f for f, v in sent + legacy}
        return sorted(found, key=lambda v: (self._record(found[v], v).created_at, v))

    def entries(self) -> list[ModelEntry]:
        """Every model: served ones, then candidates (each oldest first)."""
        out = []
        for v in self.versions():
            note = json.loads((self.root / f"{v}{_APPROVAL}").read_text())
            out.append(
                ModelEntry(version=v, status="served", record=self._record(self.root, v), approval=note)
            )
        for v in self.candidate_versions():
            out.append(
                ModelEntry(version=v, status="candidate", record=self._record(self._candidate_folder(v), v))
            )
        return out

    def load(self, version: str) -> StoredModel:
        """Load served ``version`` and check its content against its name.

        Raises:
            SpecError: unknown or unapproved version, unreadable files, or content that does
                not hash to its version (a corrupted or tampered model).
        """
        if version in self.candidate_versions():
            raise SpecError(
                f"model {version} is a candidate, not approved: approve it first "
                f"(rehealth node model approve {version})"
            )
        if not self._approved(version) or not (self.root / f"{version}.npz").exists():
            raise SpecError(f"model version {version!r} not found in {self.root}")
        return self._load(self.root, version)

    def load_candidate(self, version: str) -> StoredModel:
        """Load candidate ``version`` (for the calibration check before approval).

        Raises:
            SpecError: no such candidate, or its content does not match its version.
        """
        return self._load(self._candidate_folder(version), version)

    def _candidate_folder(self, version: str) -> Path:
        if self._approved(version):
            raise SpecError(f"model {version} is already approved and served")
        for folder in (self.candidates_dir, self.root):
            if (folder / f"{version}.npz").exists() and (folder / f"{version}.json").exists():
                return folder
        raise SpecError(f"no candidate model {version!r} in {self.candidates_dir}")

    def _load(self, folder: Path, version: str) -> StoredModel:
        record = self._record(folder, version)
        with np.load(folder / f"{version}.npz") as npz:
            arrays = [npz[f"arr_{i}"] for i in range(len(npz.files))]
        arrays = check_arrays(arch=record.arch, arrays=arrays)
        if model_version(arrays=arrays, record=record) != version:
            raise SpecError(f"model {version}: content does not match its version (corrupted?)")
        return StoredModel(version=version, arrays=arrays, record=record)

    def latest(self) -> StoredModel:
        """The most recently created served model.

        Raises:
            SpecError: no served model (candidates are named, with how to approve them).
        """
        versions = self.versions()
        if not versions:
            pending = self.candidate_versions()
            hint = (
                f"; {len(pending)} candidate(s) await approval (rehealth node model list)"
                if pending
                else " (train one first)"
            )
            raise SpecError(f"no risk model approved for serving in {self.root}{hint}")
        return self.load(versions[-1])

    @staticmethod
    def _record(folder: Path, version: str) -> TrainingRecord:
        try:
            return TrainingRecord.model_validate_json((folder / f"{version}.json").read_text())
        except (OSError, ValidationError) as e:
            raise SpecError(f"model {version}: unreadable training record: {e}") from None
