"""Checkpoints of the shared catalogue log: the whole catalogue as of a seq, as parts, so a node
that joins late loads it and replays only the records after it (its cost then follows the size
of the catalogue, not the number of commits ever made).

A writer builds one every CATALOG_SYNC_CHECKPOINT_EVERY commits (the node whose commit reaches a
multiple of it), incrementally: it starts from the previous checkpoint's parts, reads the records
after it, keeps each part that no delete touched and that is at least half full, and re-packs the
rest (the items added since, and the survivors of touched parts) into new parts of PART_ITEMS
items, their vectors taken from its own folder, which holds the log at exactly that seq. Images
are not uploaded again: the records name them already. The checkpoint object is created with a
conditional write; a node that finds one for that seq leaves it.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from flashfit_contract.datafolder import STORE_NAMES
from flashfit_server.datastore import DataState, DataStore
from flashfit_server.segments import encode
from flashfit_server.sharedlog import (
    BlobRef,
    Checkpoint,
    ItemRecord,
    LogUnreachable,
    Part,
    PartRef,
    Record,
    SharedLog,
    SyncError,
    parse_part,
    sha256_hex,
)

log = logging.getLogger(__name__)

FETCH_THREADS = 8
PART_ITEMS = 2_000


def put_once(shared: SharedLog, kind: str, data: bytes) -> BlobRef:
    """Upload a content-addressed blob unless it is there already (a rerun sends nothing twice)."""
    ref = BlobRef(sha256_hex(data), len(data))
    return ref if shared.has_blob(kind, ref) else shared.put_blob(kind, data)


def upload_part(shared: SharedLog, state: DataState, records: list[ItemRecord]) -> tuple[PartRef, Part]:
    """One part: a segment per store with these items' vectors (from the local folder, whose
    images the records name already), then the part JSON naming the items and segments."""
    ids = np.asarray([r.id for r in records], np.int64)
    segments = {name: put_once(shared, "segments", encode(ids, state.stores[name].vectors(ids))) for name in STORE_NAMES}
    part = Part(dict(state.manifest.dims), tuple(records), segments)
    ref = put_once(shared, "parts", part.encode())
    return PartRef(ref.sha256, ref.size, len(records)), part


@dataclass(frozen=True)
class Built:
    """A checkpoint and its parts (kept in memory by the writer: the next build starts from it)."""

    checkpoint: Checkpoint
    parts: tuple[tuple[PartRef, Part], ...]


def fetch_parts(shared: SharedLog, refs: tuple[PartRef, ...]) -> list[Part]:
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        return list(pool.map(lambda ref: parse_part(shared.get_blob("parts", ref.blob), ref), refs))


def latest_before(shared: SharedLog, seq: int) -> Built | None:
    """The newest checkpoint before `seq` that reads back whole (an unusable one is skipped)."""
    for candidate in reversed([s for s in shared.list_checkpoints() if s < seq]):
        try:
            checkpoint = shared.get_checkpoint(candidate)
            return Built(checkpoint, tuple(zip(checkpoint.parts, fetch_parts(shared, checkpoint.parts), strict=True)))
        except LogUnreachable:
            raise
        except SyncError as exc:
            log.warning("catalogue checkpoint %s not usable as a base, trying an older one: %s", candidate, exc)
    return None


def build(shared: SharedLog, store: DataStore, seq: int, writer: str, previous: Built | None) -> Built:
    """The checkpoint at `seq` (the caller holds the node's sync lock and its folder is at `seq`)."""
    if previous is None or previous.checkpoint.seq >= seq:
        previous = latest_before(shared, seq)
    base = previous.checkpoint.seq if previous else 0
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        records: list[Record] = list(pool.map(shared.get_record, range(base + 1, seq + 1)))
    live: dict[int, ItemRecord] = {}
    holder: dict[int, PartRef] = {}
    for ref, part in previous.parts if previous else ():
        for item in part.items:
            live[item.id], holder[item.id] = item, ref
    touched: set[PartRef] = set()
    known = dict(previous.parts) if previous else {}
    for record in records:
        if record.op == "import":
            for ref, part in zip(record.parts, fetch_parts(shared, record.parts), strict=True):
                known[ref] = part
                for item in part.items:
                    live[item.id], holder[item.id] = item, ref
        elif record.op == "add":
            live.update((item.id, item) for item in record.items)
        elif record.deleted in live:
            del live[record.deleted]
            if record.deleted in holder:
                touched.add(holder.pop(record.deleted))
    local = store.db.all_ids()
    if local != set(live):
        raise SyncError(f"the data folder does not hold what the log holds at commit {seq} "
                        f"({len(local)} items here, {len(live)} there): no checkpoint written")
    kept = [(ref, part) for ref, part in known.items()
            if ref not in touched and len(part.items) * 2 >= PART_ITEMS and all(i in live for i in part.ids)]
    kept_ids = {i for _, part in kept for i in part.ids}
    pool_ids = sorted(i for i in live if i not in kept_ids)
    with store.read() as state:
        dims = dict(state.manifest.dims)
        made = [upload_part(shared, state, [live[i] for i in pool_ids[first:first + PART_ITEMS]])
                for first in range(0, len(pool_ids), PART_ITEMS)]
    parts = tuple(sorted([*kept, *made], key=lambda pair: pair[1].ids[0]))
    checkpoint = Checkpoint(seq, writer, dims, tuple(ref for ref, _ in parts), store.db.next_id())
    return Built(checkpoint, parts)
