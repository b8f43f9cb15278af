"""Migration of a data folder of the previous format (one faiss index per store named by
<store>.json, items.json, fusion.json) to segments + manifest + SQLite catalogue.

Runs once, under the writer lock, on the first open by a new server. The new files are written
first and the manifest last, so a kill during migration leaves a folder that migrates again. The
old files stay where they are (a rollback to the previous version still finds its data); once the
manifest exists they are ignored, and `flashfit-server clear-cache` does not touch them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from flashfit_server.atomic import write_json_atomic
from flashfit_server.catalog import CatalogDB, LegacyCatalog
from flashfit_contract.datafolder import (
    CATALOG_NAME,
    MANIFEST_NAME,
    STORE_NAMES,
    DataFolderError,
    Manifest,
    SegmentEntry,
    check_legacy_items,
    check_legacy_stores,
)
from flashfit_server.segments import write_segment

log = logging.getLogger(__name__)


def is_legacy(folder: Path) -> bool:
    if (folder / MANIFEST_NAME).exists():
        return False
    return (folder / "items.json").exists() or any((folder / f"{n}.json").exists() for n in STORE_NAMES)


def _load_vectors(folder: Path, name: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    from flashfit_server.vector_store import StoreError, VectorStore

    meta_path = folder / f"{name}.json"
    if not meta_path.exists():
        return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
    check_legacy_stores(folder)
    try:
        store = VectorStore.load(folder, name, dim)
    except (StoreError, KeyError, TypeError, RuntimeError) as exc:
        raise DataFolderError(f"{name}: {exc}") from None
    ids = store.ids()
    return ids, store.vectors(ids) if len(ids) else np.zeros((0, dim), np.float32)


def migrate_if_needed(folder: Path, dims: dict[str, int]) -> bool:
    if not is_legacy(folder):
        return False
    log.info("migrating %s to segments and a SQLite catalogue", folder)
    check_legacy_items(folder)
    catalog = LegacyCatalog.load(folder / "items.json")
    vectors = {name: _load_vectors(folder, name, dims[name]) for name in STORE_NAMES}
    listed = set(catalog.items)
    for ids, _ in vectors.values():
        listed &= set(ids.tolist())
    hidden = sorted(set(catalog.items) - listed)
    if hidden:
        log.error("items %s are listed but missing from a store; not migrated", hidden[:10])

    db_path = folder / CATALOG_NAME
    for leftover in (db_path, db_path.with_name(CATALOG_NAME + "-wal"), db_path.with_name(CATALOG_NAME + "-shm")):
        leftover.unlink(missing_ok=True)  # an interrupted migration's catalogue: made again
    tmp = folder / f".{CATALOG_NAME}.migrating"
    tmp.unlink(missing_ok=True)
    db = CatalogDB(tmp)
    db.create()
    items = [catalog.items[i] for i in sorted(listed)]
    db.insert(items, 1, max(catalog.next_id, max(listed, default=0) + 1))
    fusion_path = folder / "fusion.json"
    if fusion_path.exists():
        fusion = json.loads(fusion_path.read_text(encoding="utf-8"))
        db.update_meta("fusion", lambda _old: json.dumps(fusion))
    db.connect().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    os.replace(tmp, db_path)

    stores: dict[str, tuple[SegmentEntry, ...]] = {}
    keep = np.array(sorted(listed), dtype=np.int64)
    for name, (ids, vecs) in vectors.items():
        rows = np.isin(ids, keep)
        stores[name] = (SegmentEntry(**write_segment(folder, name, 1, ids[rows], vecs[rows])),)
    write_json_atomic(folder / MANIFEST_NAME, Manifest(1, dict(dims), stores, {}).to_json())
    log.info("migrated %d items", len(items))
    return True
