"""Background compaction: merge small segments into one and drop tombstoned rows, without
blocking readers or writers.

The merged segment is written (and, for HNSW, its graph built) with no lock held; only the swap
takes the writer lock: the manifest is re-read, and the merge is published only if every segment
it replaces is still live (a delete since then stays a tombstone, which still applies: tombstones
made after the merge began carry a later commit than any merged row). One compaction at a time
per folder (.compact.lock); a kill at any moment leaves either the old manifest or the new one,
and an unreferenced merged file is debris that the next compaction deletes.

Policy (size-tiered): a store is compacted once it has more than MAX_SEGMENTS segments, or when
more than a fifth of its rows are tombstoned. The largest segment is left alone while it holds
at least four times the rest, so a big base is rewritten only about every fourfold growth.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from flashfit_server.atomic import fault_point, file_lock, try_file_lock, write_json_atomic
from flashfit_contract.datafolder import SegmentEntry
from flashfit_server.datastore import STORE_NAMES, DataState, DataStore
from flashfit_server.graphs import GRAPH_SUFFIX
from flashfit_server.segmented import SegmentedIndex
from flashfit_server.segments import SEGMENTS_DIR, write_segment

log = logging.getLogger(__name__)

MAX_SEGMENTS = 8
DEAD_FRACTION = 0.2
BASE_RATIO = 4


def choose(index: SegmentedIndex, full: bool = False) -> list[int]:
    """Positions of the segments to merge (empty: leave the store as it is)."""
    sizes = [len(s) for s in index.segments]
    total = sum(sizes)
    dead = total - len(index)
    if full or (total and dead / total > DEAD_FRACTION):
        return list(range(len(sizes))) if (len(sizes) > 1 or dead) else []
    if len(sizes) <= MAX_SEGMENTS:
        return []
    largest = max(range(len(sizes)), key=sizes.__getitem__)
    if sizes[largest] >= BASE_RATIO * (total - sizes[largest]):
        return [i for i in range(len(sizes)) if i != largest]
    return list(range(len(sizes)))


def needs_compaction(state: DataState) -> bool:
    return any(choose(index) for index in state.stores.values())


def _merge(store: DataStore, index: SegmentedIndex, positions: list[int]) -> SegmentEntry:
    ids, vectors = [], []
    for pos in positions:
        segment, mask = index.segments[pos], index.masks[pos]
        ids.append(np.asarray(segment.ids) if mask is None else np.asarray(segment.ids)[mask])
        vectors.append(np.asarray(segment.vectors) if mask is None else np.asarray(segment.vectors)[mask])
    seq = max(index.segments[pos].seq for pos in positions)
    merged_ids = np.concatenate(ids)
    order = np.argsort(merged_ids, kind="stable")
    entry = write_segment(store.folder, index.name, seq, merged_ids[order], np.concatenate(vectors)[order])
    return SegmentEntry(**entry)


def _needed_tombstones(state: DataState) -> dict[int, int]:
    """Tombstones that still hide a row of some live segment; the others can go."""
    tombstones = state.manifest.tombstones
    if not tombstones:
        return {}
    ids = np.fromiter(tombstones.keys(), np.int64, len(tombstones))
    seqs = np.fromiter(tombstones.values(), np.int64, len(tombstones))
    needed = np.zeros(len(ids), bool)
    for index in state.stores.values():
        for segment in index.segments:
            needed |= (segment.rows_of(ids) >= 0) & (segment.seq < seqs)
    return {int(i): int(s) for i, s, keep in zip(ids, seqs, needed, strict=True) if keep}


def compact(store: DataStore, full: bool = False) -> bool:
    """Merge what the policy (or `full`) asks for; True if a new manifest was published."""
    with try_file_lock(store.folder / ".compact.lock") as locked:
        if not locked:
            return False
        store.refresh()
        base = store._state
        if base is None:
            return False
        plan = {name: choose(base.stores[name], full) for name in STORE_NAMES}
        plan = {name: positions for name, positions in plan.items() if positions}
        if not plan:
            return False
        replaced: dict[str, set[str]] = {}
        merged: dict[str, SegmentEntry] = {}
        for name, positions in plan.items():
            merged[name] = _merge(store, base.stores[name], positions)
            replaced[name] = {base.stores[name].segments[p].file for p in positions}
        fault_point("compaction-before-swap")

        def swapped(manifest):  # noqa: ANN001, ANN202
            stores = dict(manifest.stores)
            for name, entry in merged.items():
                kept = tuple(e for e in stores[name] if e.file not in replaced[name])
                stores[name] = (entry, *kept)
            return replace(manifest, stores=stores)

        # Map the merged segments (and build HNSW graphs) before taking any lock.
        prepared = store._build(swapped(base.manifest), previous=base)
        with store._write_lock, file_lock(store.lock_path):
            store.refresh()
            current = store._state
            assert current is not None
            for name, files in replaced.items():
                live = {e.file for e in current.manifest.stores[name]}
                if not files <= live:
                    log.warning("compaction of %s raced with another; abandoned", name)
                    return False
            candidate = replace(swapped(current.manifest), generation=current.generation + 1)
            state = store._build(candidate, previous=prepared)
            final = replace(candidate, tombstones=_needed_tombstones(state))
            consistent = store.db.meta("committed_seq") == str(current.generation)
            write_json_atomic(store.manifest_path, final.to_json())
            if consistent:  # the catalogue still agrees: spare the next writer its orphan scan
                store.db.set_meta("committed_seq", str(final.generation))
            store._state = store._build(final, previous=state)
            store._seen = store._signature()
            _remove_unreferenced(store)
        log.info("compacted %s", {name: len(p) for name, p in plan.items()})
        return True


def _remove_unreferenced(store: DataStore) -> None:
    """Segment files no manifest names: replaced by a merge, or debris of a killed writer.
    Callers hold the writer lock and the compaction lock, so no file is being written."""
    assert store._state is not None
    live = {e.file.split("/", 1)[1] for e in store._state.manifest.entries()}
    for path in (store.folder / SEGMENTS_DIR).iterdir():
        graph_of_dead = path.suffix == GRAPH_SUFFIX and f"{path.stem}.seg" not in live
        if (path.name not in live and path.suffix == ".seg") or path.name.endswith(".tmp") or graph_of_dead:
            path.unlink(missing_ok=True)
