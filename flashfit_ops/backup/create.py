"""`create_backup`: snapshot (through the server when one answers) → the files to keep → upload
of what the store lacks → the manifest, written last: until it exists, the backup does not."""

from __future__ import annotations

import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flashfit_ops import __version__
from flashfit_ops.backup import blobs
from flashfit_ops.backup.common import WORKERS, NullProgress, Progress, parallel, utcnow
from flashfit_ops.backup.lock import acquire_lock
from flashfit_ops.backup.manifest import FileEntry, Manifest, manifest_key, new_backup_id
from flashfit_ops.backup.paths import is_within
from flashfit_ops.backup.snapshot import SNAPSHOT_ROOT, SnapshotResult, Snapshotter
from flashfit_ops.backup.sources import Item, config_items, data_items, secret_items
from flashfit_ops.backup.store import Store, scratch_dir, with_retries
from flashfit_ops.backup.upload import Uploader, UploadStats, existing_blobs, hash_item
from flashfit_ops.errors import UsageError

if TYPE_CHECKING:
    from flashfit_ops.config.model import Config


def create_backup(
    config: Config,
    store: Store,
    *,
    config_file: Path | None = None,
    data_dir: Path | None = None,
    snapshotter: Snapshotter | None = None,
    tag: str | None = None,
    include_secrets: bool = False,
    key_material: str | None = None,
    progress: Progress | None = None,
    workers: int = WORKERS,
    now: datetime | None = None,
) -> dict[str, Any]:
    progress = progress or NullProgress()
    started = time.monotonic()
    now = now or utcnow()
    backup_id = new_backup_id(now)
    if include_secrets:
        _check_key(key_material)
    data_dir = _data_folder(config, data_dir)
    store.check(create=True)
    lock = acquire_lock(store, "backup", backup_id, now)
    warnings: list[str] = []
    scratch = scratch_dir()
    snap: SnapshotResult | None = None
    try:
        snap = _snapshot(snapshotter, data_dir, backup_id, warnings)
        items = _items(config, config_file, data_dir, snap, key_material if include_secrets else None, warnings)
        total = sum(item.size for item in items)  # read here: the snapshot folder goes in `finally`
        stats = UploadStats()
        uploader = Uploader(store, existing_blobs(store), scratch, progress, stats)
        entries = _upload(uploader, items, total, backup_id, progress, workers)
        manifest = _manifest(config, backup_id, now, entries, tag, snap, config_file, data_dir)
        # The manifest goes last: until it exists, this backup does not.
        with_retries(lambda: store.put_bytes(manifest_key(backup_id), manifest.to_json()))
    finally:
        lock.release()
        shutil.rmtree(scratch, ignore_errors=True)
        _drop_snapshot(snap, data_dir)
    return {
        "id": backup_id,
        "time": now.isoformat(),
        "tag": tag,
        "target": store.url,
        "source": manifest.source,
        "via": snap.via if snap else None,
        "server_version": manifest.server_version,
        "files": len(entries),
        "bytes": total,
        "new_blobs": stats.new_blobs,
        "reused_blobs": stats.reused_blobs,
        "uploaded_bytes": stats.uploaded_bytes,
        "seconds": round(time.monotonic() - started, 3),
        "warnings": warnings,
    }


def _data_folder(config: Config, data_dir: Path | None) -> Path:
    from flashfit_ops.backup.location import data_location

    data_dir = data_dir or data_location(config)
    if not data_dir.is_dir():
        raise UsageError(f"the data folder {data_dir} does not exist", hint="check volumes.data in flashfit.yml")
    return data_dir


def _snapshot(snapshotter: Snapshotter | None, data_dir: Path, backup_id: str, warnings: list[str]) -> SnapshotResult | None:
    """The server's snapshot of the vector stores, or None (then the folder is read as it is)."""
    snap = snapshotter.snapshot(data_dir, f"{SNAPSHOT_ROOT}/{backup_id}") if snapshotter is not None else None
    if snap is None:
        warnings.append("no server answered: read the data folder directly (stop writers for a consistent copy)")
    return snap


def _drop_snapshot(snap: SnapshotResult | None, data_dir: Path) -> None:
    """Remove the snapshot folder the server wrote inside the data folder."""
    if snap is not None and is_within(data_dir, snap.folder) and snap.folder != data_dir:
        shutil.rmtree(snap.folder, ignore_errors=True)


def _items(config: Config, config_file: Path | None, data_dir: Path, snap: SnapshotResult | None,
           secrets_key: str | None, warnings: list[str]) -> list[Item]:
    """The data (the snapshot's stores first), the configuration and, given a key, the secrets."""
    items = data_items(data_dir, snap, warnings)
    items += config_items(config, config_file, warnings)
    if secrets_key is not None:
        items += secret_items(config, secrets_key, warnings)
    return items


def _check_key(key_material: str | None) -> None:
    """--include-secrets needs a key that parses, before anything is read or written."""
    if not key_material:
        raise UsageError("--include-secrets needs an encryption key",
                         hint="set BACKUP_ENCRYPTION_KEY (environment) or pass --key-file; 32 bytes hex/base64 or a passphrase")
    try:
        blobs.parse_key(key_material)
    except blobs.KeyError_ as exc:
        raise UsageError(f"bad encryption key: {exc}") from None


def _upload(uploader: Uploader, items: list[Item], total: int, backup_id: str, progress: Progress,
            workers: int) -> list[FileEntry]:
    """Largest first, so the long uploads start early and small ones fill the gaps. One thread
    hashes ahead, in that order, so hashing the next file overlaps uploading this one (the blob's
    name, its hash, must be known before its upload starts)."""
    progress.start(f"backup {backup_id}", total)
    ordered = sorted(items, key=lambda item: item.size, reverse=True)
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flashfit-hash")
    try:
        hashes = {id(item): hasher.submit(hash_item, item) for item in ordered if item.data is None}
        return parallel(lambda item: uploader.store_item(item, hashes.get(id(item))), ordered, workers)
    finally:
        hasher.shutdown(wait=True, cancel_futures=True)
        progress.finish()


def _manifest(config: Config, backup_id: str, now: datetime, entries: list[FileEntry], tag: str | None,
              snap: SnapshotResult | None, config_file: Path | None, data_dir: Path) -> Manifest:
    return Manifest(
        id=backup_id,
        time=now,
        files=entries,
        tag=tag,
        server_version=snap.server_version if snap else None,
        flashfit_version=__version__,
        source="server-snapshot" if snap else "data-folder",
        host=socket.gethostname(),
        project=config.project,
        extra={"config_file": config_file.name if config_file else None, "data_dir": str(data_dir),
               "snapshot_via": snap.via if snap else None},
    )
