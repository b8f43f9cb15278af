"""The data folder (VECTOR_STORE_DIR) shared by every worker: three vector stores, the
catalogue, the fusion weights and the item images, kept consistent across processes.

Layout:
  clip.json + clip-*.index, blip.json + blip-*.index, fashion.json + fashion-*.index
  items.json        catalogue (commit point of an item's existence)
  fusion.json       fusion weights and feedback counters
  images/<id>.<ext> the uploaded image bytes
  generation        an integer bumped after every committed change
  .lock             fcntl lock: exclusive for a writer's whole transaction, shared for readers

Cross-worker visibility: each worker compares the generation file with the generation it has
loaded, at most every `refresh_interval` (0.2 s), and reloads what changed (stores whose json
changed, the catalogue, the weights) under a shared lock. A writer first catches up the same way
under the exclusive lock, so it never overwrites another worker's change.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from flashfit_server.atomic import file_lock, read_json, write_bytes_atomic, write_json_atomic
from flashfit_server.catalog import Catalog, Item
from flashfit_server.fusion import MODELS, Weights, initial_weights, project_to_bounded_simplex
from flashfit_server.vector_store import IndexKind, VectorStore

log = logging.getLogger(__name__)

STORE_NAMES = MODELS  # one store per model slot: clip, blip, fashion


class NotFound(KeyError):
    pass


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


@dataclass
class DataState:
    """One consistent view of the data folder, as loaded by this worker."""

    generation: int
    stores: dict[str, VectorStore]
    catalog: Catalog
    fusion: FusionState
    store_shas: dict[str, str] = field(default_factory=dict)


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


class DataStore:
    def __init__(
        self,
        folder: Path,
        kind: IndexKind = "flat",
        default_weights: Weights | None = None,
        refresh_interval: float = 0.2,
    ):
        self.folder = folder
        self.kind = kind
        self.default_weights = default_weights or initial_weights(0.4, 0.3, 0.3)
        self.refresh_interval = refresh_interval
        self._lock = threading.RLock()
        self._state: DataState | None = None
        self._dims: dict[str, int] | None = None
        self._last_check = 0.0

    # --- paths ---------------------------------------------------------------------------------

    @property
    def lock_path(self) -> Path:
        return self.folder / ".lock"

    @property
    def generation_path(self) -> Path:
        return self.folder / "generation"

    @property
    def items_path(self) -> Path:
        return self.folder / "items.json"

    @property
    def fusion_path(self) -> Path:
        return self.folder / "fusion.json"

    @property
    def images_dir(self) -> Path:
        return self.folder / "images"

    # --- opening and refreshing ----------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._state is not None

    def open(self, dims: dict[str, int]) -> None:
        """Load (or create) the stores for models producing `dims`-dimensional vectors."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.images_dir.mkdir(exist_ok=True)
        self._dims = dict(dims)
        with self._lock, file_lock(self.lock_path, shared=True):
            self._state = self._load(previous=None)

    def _disk_generation(self) -> int:
        try:
            return int(self.generation_path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            return -1  # half-written by hand? force a reload; writers always rename a full file

    def _load(self, previous: DataState | None) -> DataState:
        """Read the committed state; unchanged stores are reused from `previous`."""
        assert self._dims is not None
        generation = self._disk_generation()
        stores: dict[str, VectorStore] = {}
        shas: dict[str, str] = {}
        for name in STORE_NAMES:
            meta_path = self.folder / f"{name}.json"
            sha = read_json(meta_path)["sha256"] if meta_path.exists() else ""
            if previous is not None and previous.store_shas.get(name) == sha and sha:
                stores[name] = previous.stores[name]
            else:
                stores[name] = VectorStore.load(self.folder, name, self._dims[name], self.kind)
            shas[name] = sha
        catalog = Catalog.load(self.items_path)
        fusion_data = read_json(self.fusion_path) if self.fusion_path.exists() else {}
        fusion = FusionState.from_json(fusion_data, self.default_weights)
        missing = [i for i in catalog.items if any(i not in stores[n] for n in STORE_NAMES)]
        if missing:
            # Only a hand-edited folder gets here; hide such items rather than score them as 0.
            log.error("items %s are listed but missing from a store; hiding them", missing[:10])
            for item_id in missing:
                catalog.items.pop(item_id)
        return DataState(generation, stores, catalog, fusion, shas)

    def refresh(self, force: bool = False) -> bool:
        """Catch up with other workers' commits; cheap when nothing changed. True if reloaded."""
        now = time.monotonic()
        if self._state is None or (not force and now - self._last_check < self.refresh_interval):
            return False
        self._last_check = now
        if self._disk_generation() == self._state.generation:
            return False
        try:
            with _try_shared_lock(self.lock_path):
                new_state = self._load(previous=self._state)
        except BlockingIOError:
            return False  # a writer is mid-transaction; serve what we have, look again soon
        with self._lock:
            # An in-process commit may have landed while we loaded; never step backwards.
            if new_state.generation > self._state.generation:
                self._state = new_state
        return True

    @contextlib.contextmanager
    def read(self) -> Iterator[DataState]:
        """The current state, held steady (no in-process writer) while the caller uses it."""
        self.refresh()
        with self._lock:
            if self._state is None:
                raise RuntimeError("data store is not open yet")
            yield self._state

    def sizes(self) -> dict[str, int]:
        state = self._state
        if state is None:
            return {name: 0 for name in STORE_NAMES}
        return {name: len(store) for name, store in state.stores.items()}

    # --- writing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[DataState]:
        if self._state is None:
            raise RuntimeError("data store is not open yet")
        with self._lock, file_lock(self.lock_path):
            if self._disk_generation() != self._state.generation:
                self._state = self._load(previous=self._state)
            self._prune_orphans(self._state)
            try:
                yield self._state
            except BaseException:
                # The in-memory state may be half-changed; the disk is not. Start again from it.
                self._state = self._load(previous=None)
                raise

    def _prune_orphans(self, state: DataState) -> None:
        """Vectors whose item never got committed (a writer killed mid-add) are removed, so
        their ids can be handed out again."""
        for name, store in state.stores.items():
            if len(store) == len(state.catalog.items):
                continue  # every listed item is in every store, so equal sizes mean no orphans
            orphans = [int(i) for i in store.ids() if int(i) not in state.catalog.items]
            if orphans:
                log.warning("removing %d uncommitted vectors from %s", len(orphans), name)
                store.remove(orphans)

    def _next_generation(self, state: DataState) -> int:
        return max(state.generation, self._disk_generation()) + 1

    def _publish(self, state: DataState, generation: int) -> None:
        write_bytes_atomic(self.generation_path, f"{generation}\n".encode())
        state.generation = generation

    def _save_stores(self, state: DataState, generation: int) -> None:
        for name in STORE_NAMES:
            meta = state.stores[name].save(self.folder, generation)
            state.store_shas[name] = meta["sha256"]

    def add_items(self, new_items: list[NewItem]) -> list[Item]:
        """Store a batch: images, then vectors, then the catalogue entry (the commit)."""
        if not new_items:
            return []
        created_at = datetime.now(UTC).isoformat(timespec="seconds")
        with self._transaction() as state:
            generation = self._next_generation(state)
            first_id = state.catalog.next_id
            ids = list(range(first_id, first_id + len(new_items)))
            items = []
            for item_id, new in zip(ids, new_items, strict=True):
                image_file = f"{item_id}.{new.image_extension}"
                write_bytes_atomic(self.images_dir / image_file, new.image_data)
                items.append(
                    Item(
                        id=item_id, name=new.name, category=new.category, color=new.color,
                        tags=list(new.tags), user_id=new.user_id, caption=new.caption,
                        image_file=image_file, created_at=created_at,
                    )
                )
            for name in STORE_NAMES:
                vectors = np.stack([new.vectors[name] for new in new_items]).astype(np.float32)
                state.stores[name].add(np.asarray(ids, dtype=np.int64), vectors)
            self._save_stores(state, generation)
            for item in items:
                state.catalog.items[item.id] = item
            state.catalog.next_id = ids[-1] + 1
            state.catalog.save(self.items_path)
            self._publish(state, generation)
            return items

    def add_vectors_unchecked(self, ids: np.ndarray, vectors: dict[str, np.ndarray], items: list[Item]) -> None:
        """Bulk load of synthetic items (benchmarks): no images, one commit."""
        with self._transaction() as state:
            generation = self._next_generation(state)
            for name in STORE_NAMES:
                state.stores[name].add(ids, vectors[name])
            self._save_stores(state, generation)
            for item in items:
                state.catalog.items[item.id] = item
            state.catalog.next_id = max(state.catalog.next_id, int(ids.max()) + 1)
            state.catalog.save(self.items_path)
            self._publish(state, generation)

    def delete_item(self, item_id: int) -> Item:
        """Remove from the catalogue first (the commit), then the vectors, then the image."""
        with self._transaction() as state:
            item = state.catalog.items.get(item_id)
            if item is None:
                raise NotFound(item_id)
            generation = self._next_generation(state)
            del state.catalog.items[item_id]
            state.catalog.save(self.items_path)
            for store in state.stores.values():
                store.remove([item_id])
            self._save_stores(state, generation)
            self._publish(state, generation)
        (self.images_dir / item.image_file).unlink(missing_ok=True)
        return item

    def update_fusion(self, change: Callable[[FusionState], FusionState]) -> FusionState:
        with self._transaction() as state:
            generation = self._next_generation(state)
            state.fusion = change(state.fusion)
            write_json_atomic(self.fusion_path, state.fusion.to_json())
            self._publish(state, generation)
            return state.fusion

    def image_path(self, item: Item) -> Path:
        return self.images_dir / item.image_file


@contextlib.contextmanager
def _try_shared_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise BlockingIOError from exc
            raise
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
