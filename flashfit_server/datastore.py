"""The data folder (VECTOR_STORE_DIR) shared by every worker, as a segmented store.

Layout:
  manifest.json          the commit point of the vectors: live segments of each store (file,
                         size, sha256, count, commit seq) and tombstones (deleted id -> commit)
  segments/<store>-<seq>-<sha16>.seg   immutable vectors + ids, written once (see segments.py)
  catalog.sqlite3 (+ -wal, -shm)       items, fusion weights, feedback counters (see catalog.py)
  images/<id>.<ext>      the uploaded image bytes
  .lock                  fcntl lock: exclusive for a writer's transaction, shared for snapshots

A commit writes only what changed: one small segment per store for an add, a tombstone for a
delete, then the manifest is atomically replaced. The order keeps every shown item complete:
  add:    images -> segments -> manifest (vectors live, not yet listed) -> catalogue row (commit)
  delete: catalogue row removed (commit) -> manifest with a tombstone -> image unlinked
A kill between the steps leaves vectors no row lists; they are invisible and the next writer
tombstones them. A tombstone hides its id only in segments of earlier commits, so an id can be
handed out again after such a crash.

Durability: the guarantee is against the process being killed (SIGKILL, the OOM killer, a
container stop): an acknowledged write is never lost, a half-written one never shown. A killed
process loses nothing it wrote with write() (the page cache belongs to the kernel) and rename()
is atomic for every other process, so the commit path needs no fsync: files are renamed into
place unsynced and SQLite runs WAL with synchronous=NORMAL. fsync would add power-loss
durability only, at 8-11 syncs per add, each a journal commit that on a busy host waits behind
other processes' dirty pages (tens of ms). After a power loss the last commits may be missing,
or the manifest may name a segment whose bytes never reached the disk: its sha256 then fails on
open and /ready names it (restore the latest backup); it is never served. Compaction, migration
and snapshots (rare, large) still fsync. `fsync_commits=True` restores the syncs per commit.

Readers never reload on the request path: a background thread watches manifest.json (a stat
per interval), maps only the new segments (their sha256 checked first) and swaps in a new
immutable DataState. Only a request that misses an item applies a small change (at most
INLINE_REFRESH_BYTES of new segments) itself (catch_up), so a client reads its own write
through another worker. Compaction (compaction.py) merges small segments in the background.
Folders of the previous format (clip.json + clip-*.index, items.json, fusion.json) are migrated
on first open (legacy.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from flashfit_server import compaction
from flashfit_server.atomic import fault_point, file_lock, fsync_dir, try_file_lock, write_bytes_atomic, write_json_atomic
from flashfit_server.catalog import CatalogDB, CatalogView, Item
from flashfit_contract.datafolder import (
    CATALOG_NAME,
    MANIFEST_NAME,
    DataFolderError,
    Manifest,
    SegmentEntry,
    check_catalog,
    check_image_file,
    read_manifest,
    verify_segment,
)
from flashfit_server.fusion import MODELS, Weights, initial_weights, project_to_bounded_simplex
from flashfit_server.segmented import SegmentedIndex, live_mask
from flashfit_server.segments import SEGMENTS_DIR, Segment, write_segment

log = logging.getLogger(__name__)

STORE_NAMES = MODELS  # one store per model slot: clip, blip, fashion
FUSION_KEY = "fusion"
MIN_REFRESH_INTERVAL = 0.02
COMPACT_CHECK_INTERVAL = 5.0  # seconds between looks at the segment counts
INLINE_REFRESH_BYTES = 1 << 20  # new segment bytes a read may map itself (a few commits' worth)


class NotFound(KeyError):
    pass


class StoreError(RuntimeError):
    """The data folder cannot be opened as it is (another model dimension, a bad file)."""


@dataclass
class FusionState:
    weights: Weights
    liked: int = 0
    disliked: int = 0

    def to_json(self) -> dict:
        return {"weights": self.weights, "liked": self.liked, "disliked": self.disliked}

    @classmethod
    def from_json(cls, data: dict, default: Weights) -> FusionState:
        weights = data.get("weights") or default
        return cls(project_to_bounded_simplex(weights), int(data.get("liked", 0)), int(data.get("disliked", 0)))


class DataState:
    """One consistent, immutable view: the stores of one manifest and the catalogue rows it covers."""

    def __init__(self, manifest: Manifest, stores: dict[str, SegmentedIndex], db: CatalogDB, default: Weights):
        self.manifest = manifest
        self.generation = manifest.generation
        self.stores = stores
        self.catalog = CatalogView(db, manifest.generation)
        self._db = db
        self._default = default

    @property
    def fusion(self) -> FusionState:
        raw = self._db.meta(FUSION_KEY)
        return FusionState.from_json(json.loads(raw) if raw else {}, self._default)


@dataclass
class NewItem:
    """An item ready to be stored: image bytes, metadata and one vector per store."""

    image_data: bytes
    image_extension: str
    vectors: dict[str, np.ndarray]
    name: str
    caption: str
    category: str | None = None
    color: str | None = None
    tags: list[str] = field(default_factory=list)
    user_id: str | None = None
    created_at: str | None = None  # set when a replica applies a commit of the shared log


def _tombstone_arrays(tombstones: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.fromiter(tombstones.keys(), np.int64, len(tombstones))
    seqs = np.fromiter(tombstones.values(), np.int64, len(tombstones))
    order = np.argsort(ids)
    return ids[order], seqs[order]


class DataStore:
    def __init__(
        self,
        folder: Path,
        kind: str = "flat",
        default_weights: Weights | None = None,
        refresh_interval: float = 0.2,
        compact_in_background: bool = True,
        fsync_commits: bool = False,
    ):
        self.folder = folder
        self.kind = kind
        self.default_weights = default_weights or initial_weights(0.4, 0.3, 0.3)
        self.refresh_interval = refresh_interval
        self.compact_in_background = compact_in_background
        self.fsync_commits = fsync_commits  # power-loss durability per commit (see "Durability")
        self.db = CatalogDB(folder / CATALOG_NAME, fsync_commits)
        self.problem: str | None = None  # why the latest manifest on disk could not be applied
        self._write_lock = threading.RLock()
        self._state: DataState | None = None
        self._dims: dict[str, int] | None = None
        self._seen: tuple | None = None  # stat signature of the manifest the state came from
        self._catch_up_lock = threading.Lock()
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    # --- paths ---------------------------------------------------------------------------------

    @property
    def lock_path(self) -> Path:
        return self.folder / ".lock"

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST_NAME

    @property
    def images_dir(self) -> Path:
        return self.folder / "images"

    # --- opening and refreshing ----------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._state is not None

    def open(self, dims: dict[str, int], background: bool = True) -> None:
        """Open (creating, or migrating from the previous format) the folder for models that
        produce `dims`-dimensional vectors; every file is validated and every segment's sha256
        checked. Raises DataFolderError / StoreError with a message naming the problem."""
        from flashfit_server.legacy import migrate_if_needed

        self.folder.mkdir(parents=True, exist_ok=True)
        self.images_dir.mkdir(exist_ok=True)
        self._dims = {name: int(dims[name]) for name in STORE_NAMES}
        with self._write_lock, file_lock(self.lock_path):
            migrate_if_needed(self.folder, self._dims)
            self.db.create()
            check_catalog(self.folder)
            manifest = read_manifest(self.folder)
            if manifest is None:
                manifest = Manifest(0, dict(self._dims), {n: () for n in STORE_NAMES}, {})
                write_json_atomic(self.manifest_path, manifest.to_json())
            self._check_dims(manifest)
            signature = self._signature()
            self._state = self._build(manifest, previous=None)
            self._seen = signature
        if background:
            self._start_refresher()

    def _check_dims(self, manifest: Manifest) -> None:
        assert self._dims is not None
        for name in STORE_NAMES:
            if manifest.dims[name] != self._dims[name]:
                raise StoreError(
                    f"store {name!r} holds {manifest.dims[name]}-d vectors but the model makes "
                    f"{self._dims[name]}-d ones; re-ingest the catalogue after changing checkpoints"
                )

    def _signature(self) -> tuple | None:
        try:
            st = os.stat(self.manifest_path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _build(self, manifest: Manifest, previous: DataState | None) -> DataState:
        """Map the manifest's segments, reusing those `previous` already has; only new segments
        are hashed and mapped, only new tombstones touch the masks."""
        tomb_ids, tomb_seqs = _tombstone_arrays(manifest.tombstones)
        new_tombs: dict[int, int] | None = None
        if previous is not None:
            old = previous.manifest.tombstones
            new_tombs = {i: s for i, s in manifest.tombstones.items() if old.get(i) != s}
        stores: dict[str, SegmentedIndex] = {}
        for name in STORE_NAMES:
            prev_index = previous.stores[name] if previous is not None else None
            prev_by_file = {}
            if prev_index is not None:
                prev_by_file = {s.file: (s, m) for s, m in zip(prev_index.segments, prev_index.masks, strict=True)}
            segments, masks = [], []
            for entry in manifest.stores[name]:
                if entry.file in prev_by_file and new_tombs is not None:
                    segment, mask = prev_by_file[entry.file]
                    if new_tombs:
                        ids, seqs = _tombstone_arrays(new_tombs)
                        extra = live_mask(segment, ids, seqs)
                        if extra is not None:
                            mask = extra if mask is None else (mask & extra)
                else:
                    data = verify_segment(self.folder, entry)  # the bytes of a small one: parsed, not mapped
                    segment = Segment.open(self.folder, entry.to_json(), manifest.dims[name], data)
                    mask = live_mask(segment, tomb_ids, tomb_seqs)
                segments.append(segment)
                masks.append(mask)
            graphs = prev_index.graphs() if prev_index is not None else None
            index = SegmentedIndex(name, manifest.dims[name], self.kind, tuple(segments), tuple(masks), graphs)
            index.prepare()
            stores[name] = index
        return DataState(manifest, stores, self.db, self.default_weights)

    def refresh(self, force: bool = False, inline_limit: int | None = None) -> bool:
        """Apply a newer manifest if there is one; True if a new state was swapped in. Called
        by the background thread (and by writers, to catch up), never by a request."""
        if self._state is None:
            return False
        signature = self._signature()
        if signature == self._seen and not force:
            return False
        try:
            manifest = read_manifest(self.folder)
            if manifest is None:
                raise DataFolderError(f"{MANIFEST_NAME} disappeared")
            self._check_dims(manifest)
            state = self._state
            if manifest.generation == state.generation and manifest == state.manifest:
                self._seen = signature
                return False
            if inline_limit is not None:
                known = {e.file for e in state.manifest.entries()}
                if sum(e.size for e in manifest.entries() if e.file not in known) > inline_limit:
                    return False
            new_state = self._build(manifest, previous=state)
        except FileNotFoundError:
            return False  # compaction replaced a segment we were about to map: look again soon
        except (DataFolderError, StoreError, ValueError, OSError) as exc:
            if self._signature() != signature:
                return False  # replaced while we read it (a compaction): look again next round
            if self.problem != str(exc):
                log.error("data folder: cannot apply the new manifest, still serving generation %s: %s",
                          self._state.generation, exc)
            self.problem = str(exc)
            return False
        with self._write_lock:
            if self._state is None or new_state.generation > self._state.generation:
                self._state = new_state
            self._seen = signature
        self.problem = None
        return True

    def _start_refresher(self) -> None:
        if self._refresher is not None:
            return
        interval = max(self.refresh_interval, MIN_REFRESH_INTERVAL)
        this = weakref.ref(self)
        stop = self._stop

        def loop() -> None:
            while not stop.wait(interval):
                store = this()
                if store is None:
                    return
                try:
                    store.refresh()
                except Exception:  # noqa: BLE001 - a refresher that dies would leave the worker stale
                    log.exception("data folder refresh failed; retrying")
                del store

        def compact_loop() -> None:
            while not stop.wait(COMPACT_CHECK_INTERVAL):
                store = this()
                if store is None:
                    return
                try:
                    if store._state is not None and compaction.needs_compaction(store._state.stores):
                        store.compact()
                except Exception:  # noqa: BLE001 - the next round tries again; reads are unaffected
                    log.exception("compaction failed; the store stays as it was")
                del store

        self._refresher = threading.Thread(target=loop, name="datastore-refresh", daemon=True)
        self._refresher.start()
        if self.compact_in_background:
            threading.Thread(target=compact_loop, name="datastore-compact", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self.db.close()

    def catch_up(self) -> bool:
        """For a request that missed an item (written through another worker a moment ago): apply
        a newer manifest now if it brings only small new segments (a few commits), so a client
        reads its own write through any worker. True if a newer state was swapped in. Costs one
        stat when nothing changed; anything bigger (a compaction) is left to the background
        thread, so no request waits on a large reload. Requests that find what they ask for never
        come here: they read the current state and never wait."""
        if self._state is None or self._signature() == self._seen:
            return False
        with self._catch_up_lock:  # misses arriving together wait for one refresh, not N
            if self._signature() == self._seen:
                return True
            try:
                return self.refresh(inline_limit=INLINE_REFRESH_BYTES)
            except Exception:  # noqa: BLE001 - the background thread retries and reports
                return False

    @contextlib.contextmanager
    def read(self) -> Iterator[DataState]:
        """The current state; immutable, so it is used without any lock, and never refreshed
        here: the background thread swaps in new states (see catch_up for misses)."""
        state = self._state
        if state is None:
            raise RuntimeError("data store is not open yet")
        yield state

    def sizes(self) -> dict[str, int]:
        state = self._state
        if state is None:
            return {name: 0 for name in STORE_NAMES}
        return {name: len(store) for name, store in state.stores.items()}

    # --- compaction (the policy and the merged files: compaction.py) ----------------------------

    def compact(self, full: bool = False) -> bool:
        """Merge what the policy (or `full`) asks for; True if a new manifest was published.
        The merged segments are written and mapped with no lock held; only the swap takes the
        writer lock, and is abandoned if another compaction replaced one of the segments."""
        with try_file_lock(self.folder / ".compact.lock") as locked:
            if not locked:
                return False
            self.refresh()
            base = self._state
            if base is None:
                return False
            plan = compaction.plan(base.stores, full)
            if not plan:
                return False
            merged = {name: compaction.merge(self.folder, base.stores[name], positions) for name, positions in plan.items()}
            replaced = {name: {base.stores[name].segments[p].file for p in positions} for name, positions in plan.items()}
            fault_point("compaction-before-swap")
            # Map the merged segments (and build HNSW graphs) before taking any lock.
            prepared = self._build(compaction.swapped(base.manifest, merged, replaced), previous=base)
            with self._write_lock, file_lock(self.lock_path):
                self.refresh()
                current = self._state
                assert current is not None
                if not compaction.still_live(current.manifest, replaced):
                    return False
                candidate = replace(compaction.swapped(current.manifest, merged, replaced), generation=current.generation + 1)
                state = self._build(candidate, previous=prepared)
                final = replace(candidate, tombstones=compaction.needed_tombstones(candidate.tombstones, state.stores))
                consistent = self.db.meta("committed_seq") == str(current.generation)
                write_json_atomic(self.manifest_path, final.to_json())
                if consistent:  # the catalogue still agrees: spare the next writer its orphan scan
                    self.db.set_meta("committed_seq", str(final.generation))
                self._state = self._build(final, previous=state)
                self._seen = self._signature()
                compaction.remove_unreferenced(self.folder, final)
            compaction.report(plan)
            return True

    # --- writing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[DataState]:
        if self._state is None:
            raise RuntimeError("data store is not open yet")
        with self._write_lock, file_lock(self.lock_path):
            self.refresh()
            if self.problem:
                raise StoreError(f"the data folder on disk is not valid, refusing to write: {self.problem}")
            yield self._state

    def _orphan_tombstones(self, state: DataState, seq: int) -> dict[int, int]:
        """Vectors whose catalogue row never got committed (a writer killed mid-add, or mid-delete
        before its tombstone). Every catalogue commit records the manifest generation it goes
        with, so the full comparison runs only after such a kill (or a compaction)."""
        if self.db.meta("committed_seq") == str(state.generation):
            return {}
        listed = self.db.count()
        if all(len(store) == listed for store in state.stores.values()):
            return {}
        known = self.db.all_ids()
        orphans = {int(i) for store in state.stores.values() for i in store.ids().tolist() if int(i) not in known}
        if orphans:
            log.warning("tombstoning %d vectors of an interrupted add", len(orphans))
        return {item_id: seq for item_id in orphans}

    def _commit_manifest(self, manifest: Manifest) -> DataState:
        write_json_atomic(self.manifest_path, manifest.to_json(), sync=self.fsync_commits, compact=True)
        assert self._state is not None
        state = self._build(manifest, previous=self._state)
        self._state, self._seen = state, self._signature()
        return state

    def _append(self, state: DataState, seq: int, ids: np.ndarray, vectors: dict[str, np.ndarray],
                tombstones: dict[int, int]) -> Manifest:
        stores = dict(state.manifest.stores)
        for name in STORE_NAMES:
            entry = write_segment(self.folder, name, seq, ids, vectors[name], sync_dir=False, sync=self.fsync_commits)
            stores[name] = (*stores[name], SegmentEntry(**entry))
        if self.fsync_commits:
            fsync_dir(self.folder / SEGMENTS_DIR)  # once for the three, before the manifest names them
        return replace(state.manifest, generation=seq, stores=stores,
                       tombstones={**state.manifest.tombstones, **tombstones})

    def add_items(self, new_items: list[NewItem], assigned: list[int] | None = None) -> list[Item]:
        """Store a batch: images, segments, manifest, then the catalogue rows (the commit).
        `assigned`: the ids a commit of the shared log assigned (see replica.py); else the next free."""
        if not new_items:
            return []
        created_at = datetime.now(UTC).isoformat(timespec="seconds")
        with self._transaction() as state:
            seq = state.generation + 1
            first_id = self.db.next_id()
            if assigned is None:
                ids = np.arange(first_id, first_id + len(new_items), dtype=np.int64)
            else:
                ids = np.asarray(assigned, dtype=np.int64)
            items = []
            for item_id, new in zip(ids.tolist(), new_items, strict=True):
                image_file = f"{item_id}.{new.image_extension}"
                check_image_file(self.folder, image_file, "image file")
                write_bytes_atomic(self.images_dir / image_file, new.image_data, sync_dir=False, sync=self.fsync_commits)
                items.append(Item(
                    id=item_id, name=new.name, category=new.category, color=new.color, tags=list(new.tags),
                    user_id=new.user_id, caption=new.caption, image_file=image_file,
                    created_at=new.created_at or created_at,
                ))
            vectors = {}
            for name in STORE_NAMES:
                vectors[name] = np.stack([new.vectors[name] for new in new_items]).astype(np.float32)
                if vectors[name].shape[1] != state.manifest.dims[name]:
                    raise ValueError(f"{name}: expected {state.manifest.dims[name]}-d vectors, got {vectors[name].shape}")
            if self.fsync_commits:
                fsync_dir(self.images_dir)
            manifest = self._append(state, seq, ids, vectors, self._orphan_tombstones(state, seq))
            self._commit_manifest(manifest)
            self.db.insert(items, seq, max(first_id, int(ids.max()) + 1))
            fault_point("after-commit:catalog")
            return items

    def add_vectors_unchecked(self, ids: np.ndarray, vectors: dict[str, np.ndarray], items: list[Item]) -> None:
        """Bulk load of synthetic items (benchmarks): no images, one commit."""
        with self._transaction() as state:
            seq = state.generation + 1
            ids = np.asarray(ids, dtype=np.int64)
            manifest = self._append(state, seq, ids, {n: np.asarray(v, np.float32) for n, v in vectors.items()}, {})
            self._commit_manifest(manifest)
            self.db.insert(items, seq, max(self.db.next_id(), int(ids.max()) + 1))

    def delete_item(self, item_id: int) -> Item:
        """Remove the catalogue row first (the commit), then tombstone the vectors, then the image."""
        with self._transaction() as state:
            seq = state.generation + 1
            item = self.db.delete(item_id, seq)
            if item is None:
                raise NotFound(item_id)
            tombstones = {**state.manifest.tombstones, item_id: seq, **self._orphan_tombstones(state, seq)}
            self._commit_manifest(replace(state.manifest, generation=seq, tombstones=tombstones))
        with contextlib.suppress(DataFolderError):
            check_image_file(self.folder, item.image_file, "image file").unlink(missing_ok=True)
        return item

    def update_fusion(self, change: Callable[[FusionState], FusionState]) -> FusionState:
        """One SQLite write transaction: every worker reads the weights from the catalogue."""
        def apply(raw: str | None) -> str:
            current = FusionState.from_json(json.loads(raw) if raw else {}, self.default_weights)
            return json.dumps(change(current).to_json())

        return FusionState.from_json(json.loads(self.db.update_meta(FUSION_KEY, apply)), self.default_weights)

    def image_path(self, item: Item) -> Path:
        """The image file, refused (DataFolderError) if the catalogue names anything outside images/."""
        return check_image_file(self.folder, item.image_file, f"item {item.id} image_file")
