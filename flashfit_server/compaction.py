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

This module is the policy and the file work; DataStore.compact (datastore.py) runs them under
its locks and swaps the new state in.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from flashfit_contract.datafolder import Manifest, SegmentEntry
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


def report(plan: Mapping[str, list[int]]) -> None:
    log.info("compacted %s", {name: len(p) for name, p in plan.items()})


def needs_compaction(stores: Mapping[str, SegmentedIndex]) -> bool:
    return any(choose(index) for index in stores.values())


def plan(stores: Mapping[str, SegmentedIndex], full: bool = False) -> dict[str, list[int]]:
    """Per store, the positions of the segments to merge; stores left as they are are absent."""
    chosen = {name: choose(index, full) for name, index in stores.items()}
    return {name: positions for name, positions in chosen.items() if positions}


def merge(folder: Path, index: SegmentedIndex, positions: list[int]) -> SegmentEntry:
    """Write the live rows of the segments at `positions` as one new segment (no lock needed: a
    new file that no manifest names yet)."""
    ids, vectors = [], []
    for pos in positions:
        segment, mask = index.segments[pos], index.masks[pos]
        ids.append(np.asarray(segment.ids) if mask is None else np.asarray(segment.ids)[mask])
        vectors.append(np.asarray(segment.vectors) if mask is None else np.asarray(segment.vectors)[mask])
    seq = max(index.segments[pos].seq for pos in positions)
    merged_ids = np.concatenate(ids)
    order = np.argsort(merged_ids, kind="stable")
    entry = write_segment(folder, index.name, seq, merged_ids[order], np.concatenate(vectors)[order])
    return SegmentEntry(**entry)


def swapped(manifest: Manifest, merged: Mapping[str, SegmentEntry], replaced: Mapping[str, set[str]]) -> Manifest:
    """`manifest` with each store's replaced segments swapped for its merged one."""
    stores = dict(manifest.stores)
    for name, entry in merged.items():
        kept = tuple(e for e in stores[name] if e.file not in replaced[name])
        stores[name] = (entry, *kept)
    return replace(manifest, stores=stores)


def still_live(manifest: Manifest, replaced: Mapping[str, set[str]]) -> bool:
    """Every segment the merge replaces is still in `manifest`: else another compaction won."""
    for name, files in replaced.items():
        if not files <= {e.file for e in manifest.stores[name]}:
            log.warning("compaction of %s raced with another; abandoned", name)
            return False
    return True


def needed_tombstones(tombstones: dict[int, int], stores: Mapping[str, SegmentedIndex]) -> dict[int, int]:
    """Tombstones that still hide a row of some live segment; the others can go."""
    if not tombstones:
        return {}
    ids = np.fromiter(tombstones.keys(), np.int64, len(tombstones))
    seqs = np.fromiter(tombstones.values(), np.int64, len(tombstones))
    needed = np.zeros(len(ids), bool)
    for index in stores.values():
        for segment in index.segments:
            needed |= (segment.rows_of(ids) >= 0) & (segment.seq < seqs)
    return {int(i): int(s) for i, s, keep in zip(ids, seqs, needed, strict=True) if keep}


def remove_unreferenced(folder: Path, manifest: Manifest) -> None:
    """Segment files `manifest` does not name: replaced by a merge, or debris of a killed writer.
    Callers hold the writer lock and the compaction lock, so no file is being written."""
    live = {e.file.split("/", 1)[1] for e in manifest.entries()}
    for path in (folder / SEGMENTS_DIR).iterdir():
        graph_of_dead = path.suffix == GRAPH_SUFFIX and f"{path.stem}.seg" not in live
        if (path.name not in live and path.suffix == ".seg") or path.name.endswith(".tmp") or graph_of_dead:
            path.unlink(missing_ok=True)
