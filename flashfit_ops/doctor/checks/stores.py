"""Index/metadata agreement in the data folder, in the server's store format
(flashfit_server/vector_store.py): each `<name>.json` names an index file and records its size,
sha256, vector count and dimension; items.json lists the catalogue. Every store holds one vector
per catalogue item.

The vector count and dimension are read from the FAISS header (IndexIDMap2: fourcc, int32 d,
int64 ntotal), so doctor needs no faiss. SHA-256 is verified up to a byte budget."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

from flashfit_ops.doctor.context import DoctorContext
from flashfit_ops.doctor.registry import check
from flashfit_ops.doctor.result import FAILURE, WARNING, Finding, combine, failure
from flashfit_contract.slots import MODELS as STORE_NAMES

SHA_BUDGET = 256 << 20
RESTORE_HINT = "restore the data from a backup (`flashfit backup restore`); the server refuses a mismatched store"
_FOURCCS = {b"IxM2", b"IxMp"}


def index_header(path: Path) -> tuple[int, int]:
    """(dimension, vector count) from a serialised faiss IndexIDMap(2)."""
    with path.open("rb") as handle:
        head = handle.read(16)
    if len(head) < 16 or head[:4] not in _FOURCCS:
        raise ValueError(f"{path.name} is not a faiss id-mapped index (header {head[:4]!r})")
    dim, ntotal = struct.unpack("<iq", head[4:16])
    return dim, ntotal


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inspect_segmented(folder: Path, sha_budget: int = SHA_BUDGET) -> Finding:
    """The segmented format (manifest.json, segments/, catalog.sqlite3): the server's own
    validator (no faiss), segment hashes verified up to the byte budget."""
    from flashfit_contract.datafolder import DataFolderError, check_catalog, read_manifest, verify_segment

    try:
        manifest = read_manifest(folder)
        assert manifest is not None
        items = check_catalog(folder)
        checked = 0
        for entry in manifest.entries():
            if checked + entry.size <= sha_budget:
                verify_segment(folder, entry)
                checked += entry.size
    except (DataFolderError, OSError) as error:
        return failure(f"the data folder is not valid: {error}", RESTORE_HINT)
    counts = {name: sum(e.count for e in entries) for name, entries in manifest.stores.items()}
    segments = sum(len(entries) for entries in manifest.stores.values())
    parts: list[tuple[str, str, str | None]] = []
    for name, rows in counts.items():
        live = rows - len(manifest.tombstones)  # an id lives in one segment per store
        if live < items:
            parts.append((FAILURE, f"{name}: the manifest holds {live} live vectors but the catalogue lists {items} items", RESTORE_HINT))
        elif live > items:  # an add writes the vectors first, then its catalogue row
            parts.append((WARNING, f"{name}: {live - items} vectors have no catalogue row yet (an add in flight, or one "
                          "that was interrupted: the server ignores them)", None))
    return combine(parts, f"{segments} segments agree with the manifest (rows {counts}, "
                   f"{len(manifest.tombstones)} deleted; {items} items)",
                   folder=str(folder), generation=manifest.generation, items=items, rows=counts,
                   sha256_checked_bytes=checked)


def inspect_folder(folder: Path, sha_budget: int = SHA_BUDGET) -> Finding:
    if (folder / "manifest.json").exists():
        return inspect_segmented(folder, sha_budget)
    parts: list[tuple[str, str, str | None]] = []
    details: dict[str, Any] = {"folder": str(folder), "stores": {}}
    items_count = None
    items_path = folder / "items.json"
    if items_path.exists():
        try:
            items_count = len(json.loads(items_path.read_text(encoding="utf-8")).get("items", []))
        except (ValueError, OSError, AttributeError) as error:
            parts.append((FAILURE, f"items.json is unreadable: {error}", RESTORE_HINT))
    details["items"] = items_count
    budget = sha_budget
    present = 0
    for name in STORE_NAMES:
        meta_path = folder / f"{name}.json"
        if not meta_path.exists():
            details["stores"][name] = None
            continue
        present += 1
        entry: dict[str, Any] = {}
        details["stores"][name] = entry
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            index_path = folder / meta["index_file"]
            count, size, dim = int(meta["count"]), int(meta["size"]), int(meta["dim"])
        except (ValueError, KeyError, TypeError, OSError) as error:
            parts.append((FAILURE, f"{name}.json is unreadable: {type(error).__name__}: {error}", RESTORE_HINT))
            continue
        entry.update(index_file=meta["index_file"], count=count, dim=dim)
        if not index_path.is_file():
            parts.append((FAILURE, f"{name}.json names {meta['index_file']}, which is missing", RESTORE_HINT))
            continue
        actual_size = index_path.stat().st_size
        try:
            actual_dim, ntotal = index_header(index_path)
        except (ValueError, OSError) as error:
            parts.append((FAILURE, f"{name}: {error}", RESTORE_HINT))
            continue
        entry.update(ntotal=ntotal, size=actual_size)
        if ntotal != count:
            parts.append((FAILURE, f"{name}: the index holds {ntotal} vectors but {name}.json says {count}", RESTORE_HINT))
        if actual_dim != dim:
            parts.append((FAILURE, f"{name}: the index is {actual_dim}-d but {name}.json says {dim}-d", RESTORE_HINT))
        if actual_size != size:
            parts.append((FAILURE, f"{name}: the index file is {actual_size} bytes but {name}.json says {size}", RESTORE_HINT))
        elif actual_size <= budget and meta.get("sha256"):
            budget -= actual_size
            entry["sha256_checked"] = True
            if _sha256(index_path) != meta["sha256"]:
                parts.append((FAILURE, f"{name}: the index file's sha256 differs from {name}.json", RESTORE_HINT))
        if items_count is not None and ntotal != items_count:
            parts.append((WARNING, f"{name} holds {ntotal} vectors for {items_count} catalogue items",
                          "an interrupted write; the server prunes orphans on its next write, or restore a backup"))
    debris = sorted(p.name for p in folder.glob("*.index")
                    if p.name not in {e.get("index_file") for e in details["stores"].values() if e})
    if debris:
        details["unreferenced_index_files"] = debris
    if not present:
        return combine(parts, f"no stores saved yet in {folder} (empty catalogue)", **details)
    counts = ", ".join(f"{n} {e.get('ntotal', '?')}" for n, e in details["stores"].items() if e)
    return combine(parts, f"{present} stores agree with their metadata ({counts}; {items_count} items)", **details)


@check("stores", "Vector index files agree with their metadata (counts, size, sha256)", timeout=20.0)
def stores(ctx: DoctorContext) -> Finding:
    from flashfit_ops.doctor.checks.disk import locations

    path = Path(locations(ctx)["volumes.data"])
    if not path.is_dir():
        return failure(f"the data folder {path} does not exist", "deploy first, or fix volumes.data")
    return inspect_folder(path)
