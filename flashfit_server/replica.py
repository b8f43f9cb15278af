"""A data folder that follows the shared catalogue log (sharedlog.py), so every node serves one
catalogue.

The seam with the local store is small: a commit of the log is applied as an ordinary local
commit (DataStore.add_items with the ids the record assigned, or delete_item), and the catalogue
meta `sync_seq` records the last record applied. Applying is idempotent (a record whose ids are
all present is skipped, a delete of an absent id is a no-op), so a kill between the local commit
and `sync_seq` costs nothing.

Writes, with sync configured: under the node's `.sync.lock` (one writer per data folder, shared
by the worker processes), read what the log has that this folder lacks and apply it, pick the
next ids, upload the blobs, create log/<applied+1>.json conditionally; a lost race (another node
took that seq) goes round again. The client's write is acknowledged only after its record is in
the log, and only then applied locally.

Following: a thread per worker lists the log every poll interval; whichever worker gets the
lock applies what is new (the other workers see the local manifest change as usual). A node
whose folder is empty or behind catches up before it marks itself ready.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from flashfit_server import checkpoints
from flashfit_server.atomic import fault_point, try_file_lock, write_bytes_atomic
from flashfit_server.catalog import Item
from flashfit_contract.datafolder import MAX_ID
from flashfit_server.datastore import STORE_NAMES, DataStore, NewItem, NotFound
from flashfit_server.segments import HEADER, MAGIC, encode
from flashfit_server.settings import Settings
from flashfit_server.sharedlog import (
    BlobMismatch,
    BlobRef,
    Checkpoint,
    ItemRecord,
    LogUnreachable,
    Part,
    PartRef,
    Record,
    SharedLog,
    SyncError,
    SyncTarget,
    parse_part,
    sha256_hex,
)

log = logging.getLogger(__name__)

SYNC_SEQ_KEY = "sync_seq"
SYNC_LOG_KEY = "sync_log"
CHECKPOINT_LOADING_KEY = "sync_checkpoint_loading"  # a checkpoint being applied (resumed after a kill)
STAGING_DIR = ".checkpoint-staging"  # a checkpoint's blobs, all verified before any is applied
DEFAULT_CHECKPOINT_EVERY = 1_000
APPLY_BATCH_ITEMS = 2_000  # consecutive adds applied as one local commit while catching up
DOWNLOAD_THREADS = 8

BlobFetch = Callable[[str, BlobRef], bytes]  # (kind, ref) -> verified bytes


def decode_segment(data: bytes, ids: list[int], dim: int, name: str) -> np.ndarray:
    """The vectors of a downloaded segment, refused unless it holds exactly `ids` at `dim`."""
    if len(data) < HEADER or data[:8] != MAGIC:
        raise BlobMismatch(f"{name} is not a segment")
    count, file_dim = struct.unpack("<QQ", data[8:24])
    if count != len(ids) or file_dim != dim or len(data) != HEADER + count * 8 + count * dim * 4:
        raise BlobMismatch(f"{name} holds {count}x{file_dim} vectors, its record names {len(ids)}x{dim}")
    stored = np.frombuffer(data, "<i8", count, HEADER)
    if stored.tolist() != ids:
        raise BlobMismatch(f"{name} holds other item ids than its record")
    vectors = np.frombuffer(data, "<f4", count * dim, HEADER + 8 * count).reshape(count, dim)
    if not np.isfinite(vectors).all():
        raise BlobMismatch(f"{name} holds non-finite vectors")
    return vectors


class Replica:
    def __init__(self, store: DataStore, shared: SharedLog, poll_interval: float = 0.5,
                 checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY, load_checkpoints: bool = True):
        self.store = store
        self.shared = shared
        self.poll_interval = poll_interval
        self.checkpoint_every = checkpoint_every  # 0: this node writes none
        self.load_checkpoints = load_checkpoints  # False: an empty folder replays the whole log
        self.checkpoint_loaded: int | None = None  # the checkpoint this folder started from
        self.checkpoints_refused: list[str] = []  # why newer checkpoints were passed over
        self.checkpoint_written: int | None = None
        self._checkpoint_due = False
        self.writer = f"{socket.gethostname()}/{os.getpid()}"
        self.caught_up = False  # the first catch-up (before readiness) has finished
        self.problem: str | None = None
        self.refused = False  # the problem is the log's content (not the network): it will not pass by itself
        self.head_seen = 0
        self.behind_since: float | None = None
        self._behind_at = 0  # the applied seq when behind_since was set
        self.races_lost = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- state ------------------------------------------------------------------------------

    @property
    def applied_seq(self) -> int:
        """The last record applied to this folder (0 before the folder is open)."""
        if not self.store.is_open:
            return 0
        return int(self.store.db.meta(SYNC_SEQ_KEY) or 0)

    def status(self) -> dict[str, Any]:
        applied = self.applied_seq
        head = max(self.head_seen, applied)
        since = self.behind_since
        behind = 0.0 if head <= applied or since is None else time.monotonic() - since
        return {
            "log": self.shared.url, "applied_seq": applied, "log_head_seq": head,
            "behind_seconds": round(behind, 3), "caught_up": self.caught_up, "problem": self.problem,
            "races_lost": self.races_lost, "checkpoint_loaded": self.checkpoint_loaded,
            "checkpoint_written": self.checkpoint_written, "checkpoints_refused": self.checkpoints_refused[-5:],
        }

    def readiness(self) -> str | None:
        """Why this worker must not be ready yet (None once it has caught up)."""
        if self.caught_up:
            return None
        return f"catching up with the shared catalogue log: {self.applied_seq} of {self.head_seen} commits applied"

    def _lock(self, blocking: bool = True) -> contextlib.AbstractContextManager[bool]:
        return try_file_lock(self.store.folder / ".sync.lock", blocking)

    # --- applying the log -------------------------------------------------------------------

    def _check_folder(self) -> None:
        """A folder synced with another log, or holding items no log knows, would mix catalogues."""
        db = self.store.db
        known = db.meta(SYNC_LOG_KEY)
        if known is not None and known != self.shared.url:
            raise SyncError(f"the data folder follows {known}, not {self.shared.url}: use an empty folder")
        if known is None:
            count = db.count()
            if count:
                raise SyncError(
                    f"the data folder holds {count} items that are not in the shared log {self.shared.url}: "
                    "seed an empty log with it (`flashfit-server catalog publish`) or start this node from an "
                    "empty data folder (see README, multi-node)")
            db.set_meta(SYNC_LOG_KEY, self.shared.url)

    def _set_problem(self, exc: BaseException | None, context: str = "") -> None:
        text = None if exc is None else f"{exc}" if isinstance(exc, SyncError) else f"{type(exc).__name__}: {exc}"
        if text is not None and text != self.problem:
            log.error("catalogue sync%s: %s", context, text)
        self.problem = text
        self.refused = exc is not None and not isinstance(exc, LogUnreachable)

    def _note_head(self, head: int, applied: int) -> None:
        """`behind_since`: since when this folder has been behind the log without progress (a
        replica applying a steady stream of commits is one poll behind, not stuck)."""
        self.head_seen = max(self.head_seen, head)
        if self.head_seen <= applied:
            self.behind_since = None
        elif self.behind_since is None or applied > self._behind_at:
            self.behind_since, self._behind_at = time.monotonic(), applied

    def apply_new(self) -> int:
        """Apply every record after `sync_seq` (caller holds the sync lock); the count applied."""
        applied = self.applied_seq
        seqs = self.shared.list_after(applied)
        self._note_head(max(seqs, default=applied), applied)
        done = 0
        if applied == 0 and seqs and self.load_checkpoints and (
                self.store.db.count() == 0 or self.store.db.meta(CHECKPOINT_LOADING_KEY)):
            done = self._start_from_checkpoint(seqs[-1])
            seqs = [s for s in seqs if s > self.applied_seq]
        for start in range(0, len(seqs), 256):
            with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
                records = list(pool.map(self.shared.get_record, seqs[start:start + 256]))
            expected = self.applied_seq + 1
            contiguous: list[Record] = []
            for record in records:  # stop at a gap: seqs are created in order, a hole is a damaged log
                if record.seq != expected + len(contiguous):
                    break
                contiguous.append(record)
            done += self._apply_records(contiguous)
            if len(contiguous) < len(records):
                raise SyncError(f"log record {self.applied_seq + 1} is missing (the log has {records[len(contiguous)].seq})")
        self._note_head(self.head_seen, self.applied_seq)
        return done

    def _apply_records(self, records: list[Record]) -> int:
        """Consecutive adds become one local commit; a delete is its own."""
        batch: list[Record] = []
        for record in records:
            if record.op == "add" and sum(len(r.items) for r in batch) < APPLY_BATCH_ITEMS:
                batch.append(record)
                continue
            self._apply_adds(batch)
            batch = []
            if record.op == "add":
                batch.append(record)
            elif record.op == "import":
                self._apply_import(record)
            else:
                self._apply_delete(record)
        self._apply_adds(batch)
        return len(records)

    def _fetch_parts(self, refs: Sequence[PartRef], dims: Mapping[str, int], where: str) -> list[Part]:
        """The parts an import record or a checkpoint names, each checked, ids unique across them."""
        def fetch(ref: PartRef) -> Part:
            return parse_part(self.shared.get_blob("parts", ref.blob), ref)

        with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
            parts = list(pool.map(fetch, refs))
        seen: set[int] = set()
        for part in parts:
            if dict(part.dims) != dict(dims):
                raise SyncError(f"{part.where} holds other dims than {where}")
            if seen.intersection(part.ids):
                raise SyncError(f"{where}: item {min(seen.intersection(part.ids))} is in two parts")
            seen.update(part.ids)
        return parts

    def _apply_parts(self, parts: list[Part], fetch: BlobFetch | None = None) -> None:
        """Parts as local commits of about APPLY_BATCH_ITEMS items; a part already here is skipped."""
        batch: list[Part] = []
        for part in parts:
            batch.append(part)
            if sum(len(p.items) for p in batch) >= APPLY_BATCH_ITEMS:
                self._add_bodies(batch, fetch)
                batch = []
        self._add_bodies(batch, fetch)

    def _apply_import(self, record: Record) -> None:
        """Record 1 holding a whole published catalogue: its parts, then its next_id, then sync_seq."""
        self._apply_parts(self._fetch_parts(record.parts, record.dims, record.where))
        self.store.db.set_meta("next_id", str(max(record.next_id, self.store.db.next_id())))
        self.store.db.set_meta(SYNC_SEQ_KEY, str(record.seq))

    def _apply_delete(self, record: Record) -> None:
        with contextlib.suppress(NotFound):
            self.store.delete_item(record.deleted)
        self.store.db.set_meta(SYNC_SEQ_KEY, str(record.seq))

    def _apply_adds(self, records: list[Record]) -> None:
        if not records:
            return
        self._add_bodies(records)
        self.store.db.set_meta(SYNC_SEQ_KEY, str(records[-1].seq))

    def _add_bodies(self, bodies: Sequence[Record | Part], fetch: BlobFetch | None = None) -> None:
        """Add records' (or parts') items as one local commit, skipping those already applied."""
        todo: list[Record | Part] = []
        for body in bodies:
            present = self.store.db.present(body.ids, MAX_ID)
            if len(present) == len(body.ids):
                continue  # applied before a kill that came ahead of sync_seq
            if present:
                raise SyncError(f"{body.where}: items {sorted(present)[:5]} exist here already")
            todo.append(body)
        news, ids = self._download(todo, fetch or self.shared.get_blob)
        if news:
            self.store.add_items(news, assigned=ids)

    def _download(self, records: Sequence[Record | Part], fetch: BlobFetch) -> tuple[list[NewItem], list[int]]:
        dims = self._dims()
        for record in records:
            for name in STORE_NAMES:
                if record.dims[name] != dims[name]:
                    raise SyncError(f"{record.where} holds {record.dims[name]}-d {name} vectors, the models "
                                    f"here make {dims[name]}-d ones: this node runs other checkpoints")
        jobs: list[tuple[str, BlobRef]] = [("segments", r.segments[n]) for r in records for n in STORE_NAMES]
        jobs += [("images", item.image) for r in records for item in r.items]
        unique = list(dict.fromkeys(jobs))  # the same image (or segment) is fetched once
        with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
            fetched = dict(zip(unique, pool.map(lambda job: fetch(*job), unique), strict=True))
        blobs = [fetched[job] for job in jobs]
        segments, images = iter(blobs[:3 * len(records)]), iter(blobs[3 * len(records):])
        news: list[NewItem] = []
        ids: list[int] = []
        for record in records:
            vectors = {n: decode_segment(next(segments), record.ids, dims[n], f"segments/{record.segments[n].sha256}")
                       for n in STORE_NAMES}
            for row, item in enumerate(record.items):
                news.append(NewItem(
                    image_data=next(images), image_extension=item.image_extension,
                    vectors={n: vectors[n][row] for n in STORE_NAMES}, name=item.name, caption=item.caption,
                    category=item.category, color=item.color, tags=list(item.tags), user_id=item.user_id,
                    created_at=item.created_at,
                ))
                ids.append(item.id)
        return news, ids

    def _dims(self) -> dict[str, int]:
        with self.store.read() as state:
            return dict(state.manifest.dims)

    # --- checkpoints ---------------------------------------------------------------------------

    def _start_from_checkpoint(self, head: int) -> int:
        """An empty folder loads the newest checkpoint that passes every check (the commits it
        stands for: 0 if none does, and the whole log is replayed). A refused one is named in
        `checkpoints_refused` and the log, and the next older one is tried."""
        loading = self.store.db.meta(CHECKPOINT_LOADING_KEY)
        candidates = sorted(self.shared.list_checkpoints(), reverse=True)
        if loading:  # a kill interrupted it: its parts already here are skipped
            candidates = [int(loading)]
        for seq in candidates:
            try:
                if seq > head:
                    raise SyncError(f"checkpoint {seq} is ahead of the log (head: log record {head})")
                checkpoint = self.shared.get_checkpoint(seq)
                self._apply_checkpoint(checkpoint)
            except LogUnreachable:
                raise
            except SyncError as exc:
                if loading:
                    raise SyncError(f"this folder holds part of checkpoint {seq}, which is now refused ({exc}): "
                                    "start this node from an empty data folder") from None
                shutil.rmtree(self.store.folder / STAGING_DIR, ignore_errors=True)
                reason = f"checkpoint {seq} refused: {exc}"
                log.warning("catalogue sync: %s; trying an older checkpoint or the whole log", reason)
                self.checkpoints_refused.append(reason)
                continue
            self.checkpoint_loaded = seq
            return seq
        return 0

    def _apply_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Every part and blob is fetched and verified (blobs into a staging folder) before the
        first item is applied, so a refused checkpoint leaves the folder empty for the fallback."""
        where = f"checkpoint {checkpoint.seq}"
        dims = self._dims()
        if dict(checkpoint.dims) != dims:
            raise SyncError(f"{where} holds {dict(checkpoint.dims)} vectors, the models here make {dims}")
        parts = self._fetch_parts(checkpoint.parts, checkpoint.dims, where)
        top = max((max(p.ids) for p in parts), default=0)
        if top >= checkpoint.next_id:
            raise SyncError(f"{where}: item {top} is not below its next_id {checkpoint.next_id}")
        staging = self.store.folder / STAGING_DIR
        staging.mkdir(exist_ok=True)
        jobs = list(dict.fromkeys([("segments", p.segments[n]) for p in parts for n in STORE_NAMES]
                                  + [("images", i.image) for p in parts for i in p.items]))

        def stage(job: tuple[str, BlobRef]) -> None:
            path = staging / f"{job[0]}-{job[1].sha256}"
            if not (path.exists() and path.stat().st_size == job[1].size):
                write_bytes_atomic(path, self.shared.get_blob(*job), sync_dir=False, sync=False)

        with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
            list(pool.map(stage, jobs))

        def staged(kind: str, ref: BlobRef) -> bytes:
            data = (staging / f"{kind}-{ref.sha256}").read_bytes()
            if len(data) != ref.size or sha256_hex(data) != ref.sha256:
                raise BlobMismatch(f"staged {kind}/{ref.sha256} changed on disk")
            return data

        self.store.db.set_meta(CHECKPOINT_LOADING_KEY, str(checkpoint.seq))
        self._apply_parts(parts, staged)
        self.store.db.set_meta("next_id", str(max(checkpoint.next_id, self.store.db.next_id())))
        self.store.db.set_meta(SYNC_SEQ_KEY, str(checkpoint.seq))
        self.store.db.set_meta(CHECKPOINT_LOADING_KEY, "")
        shutil.rmtree(staging, ignore_errors=True)

    def write_checkpoint(self) -> Checkpoint | None:
        """Write the checkpoint at this folder's seq (None: one is there already, or nothing to do)."""
        with self._lock():
            return self._write_checkpoint_locked()

    def _write_checkpoint_locked(self) -> Checkpoint | None:
        self._checkpoint_due = False
        self.apply_new()
        seq = self.applied_seq
        if seq == 0:
            return None
        # The previous checkpoint's parts are read back each time rather than kept: a writer's
        # memory stays independent of the catalogue's size between checkpoints.
        built = checkpoints.build(self.shared, self.store, seq, self.writer, previous=None)
        if not self.shared.put_checkpoint(built.checkpoint):
            return None
        self.checkpoint_written = seq
        log.info("catalogue sync: wrote checkpoint %s (%s items, %s parts)", seq, built.checkpoint.items,
                 len(built.parts))
        return built.checkpoint

    def _note_commit(self, seq: int) -> None:
        """The node whose commit reaches a multiple of checkpoint_every writes the checkpoint: the
        follower thread does it (no client waits on it); without one (ingest), the writer does."""
        if self.checkpoint_every and seq % self.checkpoint_every == 0:
            self._checkpoint_due = True
            if self._thread is None:
                self._checkpoint_quietly()

    def _checkpoint_quietly(self) -> None:
        try:
            self._write_checkpoint_locked()
        except Exception as exc:  # noqa: BLE001 - a checkpoint is an optimisation: the commit stands
            log.warning("catalogue sync: no checkpoint written: %s", exc)

    # --- writing through the log ------------------------------------------------------------

    def add_items(self, news: list[NewItem]) -> list[Item]:
        """Acknowledged (returned) only once the commit is in the shared log."""
        if not news:
            return []
        created_at = datetime.now(UTC).isoformat(timespec="seconds")
        news = [replace(n, created_at=n.created_at or created_at) for n in news]
        with self._lock():
            uploaded: dict[bytes, BlobRef] = {}  # a batch repeating one image uploads it once
            images = [uploaded.get(n.image_data) or uploaded.setdefault(n.image_data, self.shared.put_blob("images", n.image_data))
                      for n in news]
            while True:
                self.apply_new()
                seq = self.applied_seq + 1
                first = self.store.db.next_id()
                ids = list(range(first, first + len(news)))
                dims = self._dims()
                segments = {}
                for name in STORE_NAMES:
                    vectors = np.stack([n.vectors[name] for n in news]).astype(np.float32)
                    if vectors.shape[1] != dims[name]:
                        raise ValueError(f"{name}: expected {dims[name]}-d vectors, got {vectors.shape}")
                    segments[name] = self.shared.put_blob("segments", encode(np.asarray(ids, np.int64), vectors))
                items = tuple(
                    ItemRecord(id=i, name=n.name, caption=n.caption, created_at=n.created_at or created_at,
                               image=image, image_extension=n.image_extension, category=n.category, color=n.color,
                               tags=tuple(n.tags), user_id=n.user_id)
                    for i, n, image in zip(ids, news, images, strict=True)
                )
                record = Record(seq, "add", self.writer, dims=dims, items=items, segments=segments)
                fault_point("sync-before-append")
                if self.shared.append(record):
                    break
                self.races_lost += 1  # another node took this seq: read it and go again
            stored = self.store.add_items(news, assigned=ids)
            self.store.db.set_meta(SYNC_SEQ_KEY, str(seq))
            self._note_commit(seq)
            return stored

    def delete_item(self, item_id: int) -> Item:
        with self._lock():
            while True:
                self.apply_new()
                item = self.store.db.get(item_id)
                if item is None:
                    raise NotFound(item_id)
                seq = self.applied_seq + 1
                if self.shared.append(Record(seq, "delete", self.writer, deleted=item_id)):
                    break
                self.races_lost += 1
            deleted = self.store.delete_item(item_id)
            self.store.db.set_meta(SYNC_SEQ_KEY, str(seq))
            self._note_commit(seq)
            return deleted

    # --- lifecycle --------------------------------------------------------------------------

    def sync_once(self) -> None:
        """Check that this folder may follow the log, and apply what is new (SyncError if not)."""
        with self._lock():
            self._check_folder()
            self.apply_new()

    def catch_up(self) -> None:
        """Before readiness: apply the whole log (retrying an unreachable bucket; a refused record
        stays in `problem`, named, and is retried too, in case it gets repaired)."""
        while not self._stop.is_set():
            try:
                self.sync_once()
                self._set_problem(None)
                self.caught_up = True
                return
            except SyncError as exc:
                self._set_problem(exc)
                self._stop.wait(self.poll_interval)

    def start_following(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._follow, name="catalog-sync", daemon=True)
            self._thread.start()

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                with self._lock(blocking=False) as locked:
                    if locked:
                        self.apply_new()
                        if self._checkpoint_due:
                            self._checkpoint_quietly()
                    else:  # another worker of this node is applying: just note the head
                        applied = self.applied_seq
                        self._note_head(max(self.shared.list_after(applied), default=applied), applied)
                self._set_problem(None)
            except Exception as exc:  # noqa: BLE001 - a dead follower would leave the node stale
                self._set_problem(exc, f" (still serving commit {self.applied_seq})")

    def close(self) -> None:
        self._stop.set()


def replica_for(settings: Settings, store: DataStore) -> Replica | None:
    """The replica that CATALOG_SYNC_URL asks for (None: this folder keeps its own catalogue)."""
    if not settings.catalog_sync_url:
        return None
    target = SyncTarget(settings.catalog_sync_url, settings.catalog_sync_endpoint or None,
                        settings.catalog_sync_region or None, settings.catalog_sync_credentials)
    return Replica(store, SharedLog(target), settings.catalog_sync_poll_interval,
                   checkpoint_every=settings.catalog_sync_checkpoint_every)
