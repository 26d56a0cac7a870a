"""``rehealth node backup`` / ``restore``: the node's store and privacy ledger in one encrypted,
authenticated archive; restored without ever lowering the ledger's ε spent.

What an archive holds (all inside the encryption, see :mod:`node.backup.archive`):

- ``manifest.json``: site id, key fingerprint, when, the store's dialect, copy method, schema
  version and row counts, the ledger's releases and ε spent;
- the store (:mod:`node.backup.store_copy`: SQLite online backup, ``pg_dump`` or a logical copy);
- ``ledger.json``: every row of the privacy ledger (:mod:`node.backup.ledger_merge`).

Not in it: the pseudonym key. The archive is encrypted under a key derived from it, so the key
file must be backed up separately (and kept apart from the archives): without it an archive is
unreadable, and so would be the store's pseudonyms.

Restore order: authenticate and unpack the whole archive; refuse another site's archive or a
schema newer than this code; merge the ledger (never lowering ε spent); only then replace the
store and bring it to this code's schema. A failure before the store step leaves the store as
it was; the ledger merge alone never does harm.

The ledger's anchor (:mod:`node.ledger_anchor`) is not rolled back with the store: the store
being replaced knows the newest mark, so the restored store keeps it. A restore that brings the
ledger back behind that mark (the live ledger was lost, the backup's is older) restores, but
says so, and the node then refuses to release until the operator adopts the ledger.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

from node.backup.archive import ArchiveError, extract_archive, write_archive
from node.backup.ledger_merge import MergeReport, backup_ledger_id, export_ledger, ledger_exists, merge_ledger
from node.backup.store_copy import (
    FILES,
    check_sqlite_copy,
    dump_store,
    logical_restore,
    pg_restore,
    schema_of,
    sqlite_restore,
)
from node.config import NodeConfig
from node.ledger import LedgerMark, PrivacyLedger
from node.ledger_anchor import LedgerAnchorError, StoreAnchor, check_mark
from node.pseudonym import META_FINGERPRINT, KeyMismatchError, key_fingerprint, load_or_create_key
from node.store import Store, open_store
from node.store.schema import check_known, current_revision
from shared.errors import SpecError

__all__ = ["ArchiveError", "MergeReport", "backup_node", "restore_node"]

MANIFEST, LEDGER = "manifest.json", "ledger.json"

log = logging.getLogger(__name__)


def backup_node(cfg: NodeConfig, to: Path, *, method: str | None = None, force: bool = False) -> dict:
    """Write the node's store and ledger to the encrypted archive ``to``; return its manifest
    (plus ``archive_bytes``).

    Raises:
        SpecError: ``to`` exists (without ``force``) or its folder does not.
        KeyFileError, KeyMismatchError: no key file, or not the key the store's data was made with.
    """
    to = Path(to)
    if to.exists() and not force:
        raise SpecError(f"{to} exists: choose a new file name (backups are never overwritten), or --force")
    if not to.parent.is_dir():
        raise SpecError(f"the folder {to.parent} does not exist")
    key = load_or_create_key(cfg.key_path, create=False)
    fp = key_fingerprint(key)
    store = open_store(cfg.store_url, create=False)
    # the clear copy stays beside the store (or in the system's temp folder), never on the
    # backup medium: only the encrypted archive goes there
    tmp = Path(tempfile.mkdtemp(dir=_work_dir(cfg), prefix=".rehealth-backup-"))  # 0700
    try:
        stored_fp = store.meta().get(META_FINGERPRINT)
        if stored_fp is not None and stored_fp != fp:
            raise KeyMismatchError(
                f"the key file {cfg.key_path} is not the key the store's data was made with "
                f"(store {stored_fp[:8]}, file {fp[:8]}): restore the right key first"
            )
        method, file = dump_store(store, tmp, method=method)
        ledger = export_ledger(cfg.ledger_url)
        (tmp / LEDGER).write_text(json.dumps(ledger))
        manifest = {
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "site_id": cfg.site_id,
            "key_fingerprint": fp,
            "store": {
                "dialect": store.dialect,
                "method": method,
                "file": file.name,
                "revision": _revision(store),
                "schema": schema_of(store),
                "rows": store.counts(),
            },
            "ledger": _ledger_summary(ledger),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        header = {"key": fp[:8], "created_at": manifest["created_at"]}
        write_archive(to, key, header, {MANIFEST: tmp / MANIFEST, LEDGER: tmp / LEDGER, file.name: file})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        store.engine.dispose()
    return {**manifest, "archive": str(to), "archive_bytes": to.stat().st_size}


def restore_node(cfg: NodeConfig, src: Path) -> dict:
    """Restore the store from the archive ``src`` and merge its ledger into the node's.

    Raises:
        ArchiveError: not a backup, made with another key, truncated or altered.
        SchemaTooNewError: the backup's store schema is newer than this code's.
        SpecError: another site's backup, or one of another database kind than store_url.
        DataError: the store is in use by another process (SQLite) or cannot be written.
    """
    src = Path(src)
    key = load_or_create_key(cfg.key_path, create=False)
    where = f"backup {src}"
    work = _work_dir(cfg)
    tmp = Path(tempfile.mkdtemp(dir=work, prefix=".rehealth-restore-"))  # 0700
    try:
        extract_archive(src, key, tmp, {MANIFEST, LEDGER, *FILES.values()})
        manifest = _read_manifest(tmp, where)
        st = manifest["store"]
        _check_fits(cfg, manifest, where)
        check_known(st["revision"], where)  # a newer schema: refused before anything changes
        copy = tmp / st["file"]
        if st["method"] == "sqlite":
            check_sqlite_copy(copy, where)
        ledger = json.loads((tmp / LEDGER).read_text()) if (tmp / LEDGER).exists() else None
        live_mark = _live_anchor(cfg)  # before the store it lives in is replaced
        merged = merge_ledger(cfg.ledger_url, ledger) if ledger else None
        if st["method"] == "sqlite":
            sqlite_restore(copy, cfg.store_url)
        else:
            store = open_store(cfg.store_url)
            try:
                if st["method"] == "pg_dump":
                    pg_restore(copy, store, st["schema"])
                else:
                    logical_restore(copy, store, where)
            finally:
                store.engine.dispose()
        store = open_store(cfg.store_url)  # migrates an older backup to this code's schema
        try:
            rows = store.counts()
        finally:
            store.engine.dispose()
        anchor_problem = _anchor_after_restore(cfg, live_mark, ledger)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "backup_created_at": manifest["created_at"],
        "method": st["method"],
        "revision": st["revision"],
        "rows": rows,
        "ledger": merged.__dict__ if merged else None,
        "ledger_anchor": anchor_problem,
    }


def _live_anchor(cfg: NodeConfig) -> LedgerMark | None:
    """The mark the current store holds (None: no store, none anchored, or a store too damaged
    to read, which is logged)."""
    if not ledger_exists(cfg.store_url):  # the same test for the store's SQLite file
        return None
    anchor = StoreAnchor(cfg.store_url)
    try:
        return anchor.read()
    except Exception as e:  # noqa: BLE001 - a store being restored may be corrupt: restore it anyway
        log.warning("restore: the current store's ledger anchor cannot be read (%s)", type(e).__name__)
        return None
    finally:
        anchor.close()


def _anchor_after_restore(cfg: NodeConfig, live: LedgerMark | None, backup: dict | None) -> str | None:
    """Anchor the restored store, and say what is wrong with the ledger if anything (None: ok).

    The anchor is the current store's (newer than the backup's), else the backup's own. When it
    names the backup's ledger at no more charges than the backup holds, the merged ledger holds
    all it vouches for (the merge is a union), so the store is anchored to the merged ledger."""
    anchor = StoreAnchor(cfg.store_url)
    try:
        restored = anchor.read()
        mark = live or restored
        if restored is not None and mark is not None and restored.ledger_id == mark.ledger_id:
            mark = max(mark, restored, key=lambda m: m.charges)
        if mark is None:
            return None  # anchored at the node's first release
        ledger = PrivacyLedger(cfg.ledger_url)
        try:
            now = ledger.mark()
        finally:
            ledger.engine.dispose()
        if backup is not None and backup_ledger_id(backup) == mark.ledger_id:
            if mark.charges <= len(backup.get("privacy_releases", [])):
                mark = now  # the merged ledger holds every charge the mark vouches for
        anchor.replace(mark)
        try:
            check_mark(now, mark, where="after the restore")
        except LedgerAnchorError as e:
            return str(e)
        return None
    finally:
        anchor.close()


def _revision(store: Store) -> str | None:
    with store.engine.connect() as conn:
        return current_revision(conn)


def _ledger_summary(rows: dict | None) -> dict:
    if rows is None:
        return {"present": False}
    return {
        "present": True,
        "releases": len(rows["privacy_releases"]),
        "reservations": len(rows["privacy_reservations"]),
    }


def _work_dir(cfg: NodeConfig) -> Path | None:
    """Where clear copies live while a backup is written or a restore unpacked: beside a SQLite
    store (the disk that holds the data in clear anyway, with room for it), else the default."""
    u = make_url(cfg.store_url)
    if u.get_backend_name() == "sqlite" and u.database:
        folder = Path(u.database).parent
        if not folder.is_dir():
            raise SpecError(f"the store's folder {folder} does not exist: create it, or fix store_url")
        return folder
    return None


def _read_manifest(tmp: Path, where: str) -> dict:
    try:
        manifest = json.loads((tmp / MANIFEST).read_text())
        st = manifest["store"]
        assert st["method"] in FILES and st["file"] == FILES[st["method"]]
        assert (tmp / st["file"]).is_file()
    except Exception:  # noqa: BLE001 - an authenticated archive without a sound manifest
        raise ArchiveError(f"{where} lacks a sound manifest or store copy") from None
    return manifest


def _check_fits(cfg: NodeConfig, manifest: dict, where: str) -> None:
    if manifest.get("site_id") != cfg.site_id:
        raise SpecError(
            f"{where} is of site {manifest.get('site_id')!r}, this node is {cfg.site_id!r}: "
            "restore a backup of this site"
        )
    backend = make_url(cfg.store_url).get_backend_name()
    if manifest["store"]["dialect"] != backend:
        raise SpecError(
            f"{where} holds a {manifest['store']['dialect']} store; store_url is {backend}: "
            "restore into the same kind of database"
        )
    if backend == "sqlite" and _same_sqlite(cfg.store_url, cfg.ledger_url) and ledger_exists(cfg.ledger_url):
        raise SpecError(
            "ledger_url names the store's own SQLite file: restoring the store would replace the "
            "ledger too. Give the ledger its own file (ledger_url) before restoring"
        )


def _same_sqlite(a: str, b: str) -> bool:
    ua, ub = make_url(a), make_url(b)
    if ub.get_backend_name() != "sqlite" or not ua.database or not ub.database:
        return False
    return Path(ua.database).resolve() == Path(ub.database).resolve()
