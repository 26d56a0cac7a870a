"""The ledger's anchor: the node remembers which privacy ledger it was charged through, and how
far, so that a lost ledger is refused instead of being a fresh budget.

A ledger that is deleted (or a ``ledger_url`` pointed at a new path) used to be created afresh,
empty, with the whole configured budget, at the next release: views already paid for were drawn
again (``tests/security/test_ledger_deleted.py``). The ledger cannot notice its own absence, so
the node's store keeps its :class:`~node.ledger.LedgerMark` — the ledger's random id and the
number of charges it held — in ``store_meta`` (no new table, so no schema revision), advanced
after every charge. A node without a store (a SuperNode reading a data file) keeps it in its
state folder (``ledger-anchor.json``).

Every opener that releases (:func:`open_anchored_ledger`: the ClientApp's runtime,
``rehealth node serve`` and ``groups``; ``budget`` checks without writing; ``restore``
carries the mark over) refuses a ledger that is

- **missing**: the store names a ledger and ``ledger_url`` holds none;
- **another ledger**: its id is not the anchored one;
- **behind the mark**: it holds fewer charges than the store has seen (an older copy).

A store without an anchor (a new node, or a store made before anchors) is anchored to the
ledger it opens: nothing was charged through another one that the node could know of. Only the
operator moves the anchor afterwards (``rehealth node ledger adopt``), and that is logged.

The mark is written after the charge committed, so a crash between the two leaves the ledger
one charge *ahead* of its mark (accepted), never behind it. The refusal names what is wrong and
what to do, never a count or a path (a study's refusal text reaches the coordinator); the node's
log has the ids and counts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol

from sqlalchemy import Integer as SAInteger
from sqlalchemy import cast, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url

from node.files import create_private_file
from node.ledger import LedgerMark, PrivacyLedger, ledger_exists
from shared.errors import PrivacyError

if TYPE_CHECKING:
    from node.store import Store

__all__ = [
    "ADOPT_HINT",
    "AnchorStore",
    "FileAnchor",
    "LedgerAnchorError",
    "StoreAnchor",
    "adopt_ledger",
    "check_mark",
    "open_anchored_ledger",
]

log = logging.getLogger("rehealth.node.ledger")

#: ``store_meta`` rows of the anchor.
META_LEDGER_ID, META_LEDGER_CHARGES = "ledger_id", "ledger_charges"

#: What the operator can do about a refused ledger (every refusal ends with it).
ADOPT_HINT = (
    "restore the ledger (or point ledger_url back at it); if it is lost for good, "
    "'rehealth node ledger adopt --config node.toml' releases from this one, deliberately"
)


class LedgerAnchorError(PrivacyError):
    """The ledger at ``ledger_url`` is not the one the node was charged through, or is behind."""


class AnchorStore(Protocol):
    """Where a node keeps its ledger's mark."""

    def read(self) -> LedgerMark | None: ...

    def advance(self, mark: LedgerMark) -> None:
        """Anchor ``mark`` if nothing is anchored; else raise the count to it, never lower."""
        ...

    def replace(self, mark: LedgerMark) -> None:
        """Anchor ``mark`` whatever was anchored (the operator's adopt)."""
        ...


class StoreAnchor:
    """The mark in the node store's ``store_meta`` (``ledger_id``, ``ledger_charges``).

    Each write is one statement (an upsert), so two processes charging at once cannot lower
    the count: it is raised only where the stored count is smaller."""

    def __init__(self, store_url: str):
        self.store_url = store_url
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            from node.store import open_store

            # the opener checked the store already (or reads it next); quick_check per charge
            # would cost a full read of it
            self._store = open_store(self.store_url, check=False)
        return self._store

    def read(self) -> LedgerMark | None:
        meta = self.store.meta()
        if META_LEDGER_ID not in meta:
            return None
        return LedgerMark(ledger_id=meta[META_LEDGER_ID], charges=int(meta.get(META_LEDGER_CHARGES, "0")))

    def advance(self, mark: LedgerMark) -> None:
        from node.store import models

        m = models.store_meta
        with self.store.engine.begin() as conn:
            ins = (sqlite_insert if conn.dialect.name == "sqlite" else pg_insert)(m)
            now = _now()
            conn.execute(
                ins.on_conflict_do_nothing(index_elements=[m.c.name]),
                [{"name": META_LEDGER_ID, "value": mark.ledger_id, "updated_at": now}],
            )
            anchored = conn.execute(select(m.c.value).where(m.c.name == META_LEDGER_ID)).scalar_one()
            if anchored != mark.ledger_id:  # the operator adopted another ledger meanwhile
                raise LedgerAnchorError(f"the node's privacy ledger was replaced while in use: {ADOPT_HINT}")
            conn.execute(
                ins.on_conflict_do_update(
                    index_elements=[m.c.name],
                    set_={"value": ins.excluded.value, "updated_at": now},
                    where=cast(m.c.value, SAInteger) < cast(ins.excluded.value, SAInteger),
                ),
                [{"name": META_LEDGER_CHARGES, "value": str(mark.charges), "updated_at": now}],
            )

    def replace(self, mark: LedgerMark) -> None:
        self.store.set_meta({META_LEDGER_ID: mark.ledger_id, META_LEDGER_CHARGES: str(mark.charges)})

    def close(self) -> None:
        if self._store is not None:
            self._store.engine.dispose()
            self._store = None


class FileAnchor:
    """The mark in a JSON file (0600) in a store-less node's state folder, updated under an
    exclusive lock and replaced atomically."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self) -> LedgerMark | None:
        try:
            data = json.loads(self.path.read_text())
            return LedgerMark(ledger_id=str(data["ledger_id"]), charges=int(data["charges"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):  # damaged: refuse, never start afresh
            raise LedgerAnchorError(
                "the node's ledger anchor (ledger-anchor.json in its state folder) cannot be read: "
                + ADOPT_HINT
            ) from None

    def advance(self, mark: LedgerMark) -> None:
        with self._locked():
            now = self.read()
            if now is not None and now.ledger_id != mark.ledger_id:
                raise LedgerAnchorError(f"the node's privacy ledger was replaced while in use: {ADOPT_HINT}")
            if now is None or now.charges < mark.charges:
                self._write(mark)

    def replace(self, mark: LedgerMark) -> None:
        with self._locked():
            self._write(mark)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.path.with_name(self.path.name + ".lock")
        create_private_file(str(lock))
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _write(self, mark: LedgerMark) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        create_private_file(str(tmp))
        tmp.write_text(json.dumps({"ledger_id": mark.ledger_id, "charges": mark.charges}))
        os.replace(tmp, self.path)


def check_mark(ledger: LedgerMark | None, anchored: LedgerMark | None, *, where: str = "") -> None:
    """Refuse a ledger that is missing (``ledger`` None), another one, or behind ``anchored``.

    Raises:
        LedgerAnchorError: says which, and :data:`ADOPT_HINT`; ids and counts go to the log.
    """
    if anchored is None:
        return
    if ledger is None:
        problem = "is missing"
    elif ledger.ledger_id != anchored.ledger_id:
        problem = "is not the ledger this node was charged through"
    elif ledger.charges < anchored.charges:
        problem = "is behind the charges this node has recorded (an older copy)"
    else:
        return
    log.error(
        "privacy ledger%s %s: the node's anchor names ledger %s at %d charge(s); found %s",
        f" {where}" if where else "",
        problem,
        anchored.ledger_id[:8],
        anchored.charges,
        "no ledger" if ledger is None else f"ledger {ledger.ledger_id[:8]} at {ledger.charges} charge(s)",
    )
    raise LedgerAnchorError(
        f"the node's privacy ledger {problem}: releasing from it could spend again budget "
        f"already spent, so this node releases nothing until the operator acts: {ADOPT_HINT}"
    )


def open_anchored_ledger(url: str, anchor: AnchorStore | None, *, record: bool = True) -> PrivacyLedger:
    """The ledger at ``url``, after checking it against the node's anchor.

    ``record``: anchor an unanchored node to this ledger now and advance the mark after every
    charge (every opener that releases); ``False`` only checks (``rehealth node budget``).
    ``anchor`` None: a node with nowhere to keep a mark (no store, no state folder).

    Raises:
        LedgerAnchorError: the ledger is missing, another one, or behind the mark
            (:func:`check_mark`); a missing SQLite ledger is not created.
    """
    anchored = anchor.read() if anchor is not None else None
    where = _redact(url)
    if anchored is not None and not ledger_exists(url):
        check_mark(None, anchored, where=where)
    ledger = PrivacyLedger(url)
    try:
        check_mark(ledger.mark(), anchored, where=where)
    except LedgerAnchorError:
        ledger.engine.dispose()
        raise
    if anchor is not None and record:
        now = ledger.mark()
        if anchored is None:
            log.info("privacy ledger %s: anchored in the node's state (ledger %s)", where, now.ledger_id[:8])
        if anchored != now:  # a new anchor, or charges made before a crash could record them
            anchor.advance(now)
        ledger.after_charge = lambda led: anchor.advance(led.mark())
    return ledger


def adopt_ledger(url: str, anchor: AnchorStore) -> tuple[LedgerMark | None, LedgerMark]:
    """The operator's decision: anchor the node to the ledger at ``url`` (created if missing)
    as it is now, whatever was anchored; logged as a warning. Returns (before, after)."""
    before = anchor.read()
    ledger = PrivacyLedger(url)
    try:
        after = ledger.mark()
    finally:
        ledger.engine.dispose()
    anchor.replace(after)
    log.warning(
        "privacy ledger %s adopted by the operator: the node was anchored to %s, "
        "now to ledger %s at %d charge(s)",
        _redact(url),
        "nothing" if before is None else f"ledger {before.ledger_id[:8]} at {before.charges} charge(s)",
        after.ledger_id[:8],
        after.charges,
    )
    return before, after


def _now():
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc)


def _redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
