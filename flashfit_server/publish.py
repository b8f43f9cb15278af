"""Publish an existing single-node data folder into an EMPTY shared catalogue log, as log record 1
(`flashfit-server catalog publish`).

Explicit, not automatic at a node's first start: publishing decides which folder becomes every
node's catalogue, and when several nodes start at once with their own folders an automatic seed
would pick one by timing. The command is run once, by a person, on the folder they mean.

Order (each step safe to rerun after a crash; blobs are content-addressed, and one already in the
bucket at its size is not uploaded again):
  1. refuse unless the log is empty (or this folder already follows this very log: nothing to do;
     or record 1 is this folder's own import, written by a publish that died before step 4);
  2. upload every item's image, then parts of PART_ITEMS items (one segment per store + a JSON
     part naming the items with their ids, so references to them stay valid);
  3. under the folder's write lock (no local commit can slip in), check the folder did not change,
     then create log/000000000001.json, an "import" record naming the parts, with a conditional
     write: if another node created seq 1 first, stop; nothing of this folder is then in the log
     (the whole catalogue is one record, so it can never interleave with another writer's);
  4. only then mark the folder as following the log (sync_log, sync_seq = 1), and write
     checkpoint 1 (the same parts), so late joiners load it instead of replaying.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from flashfit_server.atomic import file_lock
from flashfit_server.catalog import Item
from flashfit_server.checkpoints import PART_ITEMS, put_once, upload_part
from flashfit_server.datastore import DataStore
from flashfit_server.replica import SYNC_LOG_KEY, SYNC_SEQ_KEY
from flashfit_server.sharedlog import (
    _EXTENSION,
    Checkpoint,
    ItemRecord,
    LogUnreachable,
    PartRef,
    Record,
    SharedLog,
    SyncError,
)

log = logging.getLogger(__name__)

UPLOAD_THREADS = 8


class PublishRefused(SyncError):
    """The log is not this folder's to seed (not empty, or another writer won seq 1)."""


class FolderProblem(SyncError):
    """The data folder cannot be published as it is (named)."""


@dataclass(frozen=True)
class Published:
    items: int
    parts: int
    already: bool = False  # the folder already followed this log: nothing was done
    resumed: bool = False  # record 1 was this folder's import already (a publish died before marking)


def _item_record(store: DataStore, item: Item, shared: SharedLog) -> ItemRecord:
    extension = item.image_file.rpartition(".")[2]
    if "." not in item.image_file or not _EXTENSION.match(extension):
        raise FolderProblem(f"item {item.id}: image file {item.image_file!r:.80} has no short lowercase extension")
    try:
        data = store.image_path(item).read_bytes()
    except (OSError, ValueError) as exc:  # DataFolderError is a ValueError
        raise FolderProblem(f"item {item.id}: cannot read its image: {exc}") from None
    return ItemRecord(id=item.id, name=item.name, caption=item.caption, created_at=item.created_at,
                      image=put_once(shared, "images", data), image_extension=extension, category=item.category,
                      color=item.color, tags=tuple(item.tags), user_id=item.user_id)


def _chunks(ids: list[int], size: int) -> Iterator[list[int]]:
    for first in range(0, len(ids), size):
        yield ids[first:first + size]


def publish(store: DataStore, shared: SharedLog, progress: Callable[[str], None] = lambda _: None) -> Published:
    """Seed the empty log `shared` with the catalogue of the open `store` (see the module doc)."""
    db = store.db
    known = db.meta(SYNC_LOG_KEY)
    head = max(shared.list_after(0), default=0)
    if known is not None and known != shared.url:
        raise PublishRefused(f"the data folder follows {known}, not {shared.url}: it cannot seed another log")
    if known == shared.url:
        if head:
            return Published(db.count(), 0, already=True)
        raise PublishRefused(f"the data folder follows {shared.url}, yet that log is empty (a wiped bucket?): "
                             "publish a copy of the folder that never followed a log")
    not_empty = PublishRefused(f"the log {shared.url} is not empty (head: log record {head}): only an empty log "
                               "can be seeded; start this node from an empty data folder to follow it instead")
    ours: Record | None = None  # record 1 is this folder's own import when a publish died before marking
    if head:
        try:
            ours = shared.get_record(1)
        except SyncError as exc:
            if isinstance(exc, LogUnreachable):
                raise
            raise not_empty from None
        if ours.op != "import":
            raise not_empty
    with store.read() as state:
        ids = sorted(state.catalog.present(db.all_ids()))
        if not ids:
            raise FolderProblem(f"the data folder {store.folder} holds no items: nothing to publish "
                                "(start the node with CATALOG_SYNC_URL set instead)")
        if ours is not None and sum(p.items for p in ours.parts) != len(ids):
            raise not_empty  # not this folder's import: refused before uploading anything
        refs: list[PartRef] = []
        for chunk in _chunks(ids, PART_ITEMS):
            items = state.catalog.fetch(chunk)
            with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
                records = list(pool.map(lambda i: _item_record(store, items[i], shared), chunk))
            refs.append(upload_part(shared, state, records)[0])
            progress(f"uploaded {min(len(ids), len(refs) * PART_ITEMS)}/{len(ids)} items")
        writer = f"{socket.gethostname()}/{os.getpid()}/publish"
        next_id = db.next_id()
        record = Record(1, "import", writer, dims=dict(state.manifest.dims), parts=tuple(refs), next_id=next_id)
        if ours is not None and (ours.parts, ours.next_id, dict(ours.dims)) != (record.parts, next_id, record.dims):
            raise not_empty  # an import, but of another catalogue
        with file_lock(store.lock_path):  # no local commit between the check and the mark
            store.refresh()
            with store.read() as now:
                changed = now.generation != state.generation or db.next_id() != next_id
            if changed:
                raise SyncError("the data folder changed while it was being published (is a server still "
                                "writing to it?): nothing was marked; stop it and run the command again")
            if ours is None and not shared.append(record):
                raise PublishRefused(f"another writer created log record 1 of {shared.url} while this folder was "
                                     "being published: nothing of this folder is in the log; start this node from "
                                     "an empty data folder to follow that log instead")
            db.set_meta(SYNC_LOG_KEY, shared.url)
            db.set_meta(SYNC_SEQ_KEY, "1")
    try:  # the folder is published by now: a checkpoint that fails to land only costs joiners time
        shared.put_checkpoint(Checkpoint(1, writer, record.dims, record.parts, next_id))
    except SyncError as exc:
        log.warning("catalogue published, but checkpoint 1 was not written: %s", exc)
    return Published(len(ids), len(refs), resumed=ours is not None)
