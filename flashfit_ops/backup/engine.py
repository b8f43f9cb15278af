"""Create, list, verify, prune and restore backups. Pure operations over a Store; progress goes
through a callback, nothing prints."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol

from flashfit_ops import __version__
from flashfit_ops.backup import blobs
from flashfit_ops.backup.manifest import (
    BLOB_PREFIX,
    LOCK_PREFIX,
    MANIFEST_PREFIX,
    FileEntry,
    Manifest,
    ManifestError,
    blob_key,
    config_file_name,
    id_from_manifest_key,
    manifest_key,
    new_backup_id,
    parse_blob_key,
)
from flashfit_ops.backup.paths import UnsafePath, is_within, join_inside
from flashfit_ops.backup.retention import Policy, apply_policy
from flashfit_ops.backup.service import ServiceControl
from flashfit_ops.backup.snapshot import SNAPSHOT_ROOT, SnapshotResult, Snapshotter
from flashfit_ops.backup.sources import Item, config_items, data_items, secret_items
from flashfit_ops.backup.store import ObjectMissing, Store, Transient, scratch_dir, with_retries
from flashfit_ops.errors import (
    FlashFitError,
    IntegrityFailure,
    LockHeld,
    OperationFailed,
    UsageError,
)
from flashfit_ops.fileio import atomic_write_bytes, fsync_dir

if TYPE_CHECKING:
    from flashfit_ops.config.model import Config

WORKERS = 4
LOCK_STALE_SECONDS = 6 * 3600
SPACE_MARGIN = 64 * 1024 * 1024
EXCLUSIVE = {"prune"}


class Progress(Protocol):
    def start(self, description: str, total: int) -> None: ...
    def advance(self, amount: int) -> None: ...
    def finish(self) -> None: ...


class NullProgress:
    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass

    def finish(self) -> None:
        pass


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _stamp(now: datetime) -> str:
    return now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _unused(path: Path) -> Path:
    """path, or path-2, path-3... whichever does not exist yet (two restores in one second)."""
    candidate, number = path, 1
    while os.path.lexists(candidate):
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate


def _parallel(func: Callable[[Any], Any], items: Iterable[Any], workers: int) -> list[Any]:
    """Run func over items on a pool; the first exception cancels what has not started and is raised."""
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as pool:
        futures = [pool.submit(func, item) for item in items]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


# --- locks ----------------------------------------------------------------------------------------


@dataclass
class Lock:
    store: Store
    key: str

    def release(self) -> None:
        try:
            self.store.delete([self.key])
        except Exception:  # a stale lock is reported by the next run; never mask the real outcome
            pass


def acquire_lock(store: Store, kind: str, ident: str, now: datetime | None = None) -> Lock:
    """Write our lock, then look for conflicting ones (prune excludes everything; backups, restores
    and verifies share). Writing first means two racing runs both see each other and both stop."""
    now = now or _utcnow()
    key = f"{LOCK_PREFIX}{kind}-{ident}.json"
    body = {"kind": kind, "host": socket.gethostname(), "pid": os.getpid(), "time": now.isoformat()}
    store.put_bytes(key, json.dumps(body).encode())
    lock = Lock(store, key)
    for other in sorted(store.list(LOCK_PREFIX)):
        if other == key:
            continue
        other_kind = other[len(LOCK_PREFIX) :].split("-", 1)[0]
        if kind not in EXCLUSIVE and other_kind not in EXCLUSIVE:
            continue
        try:
            info = json.loads(store.get_bytes(other))
            started = datetime.fromisoformat(info["time"])
        except (ObjectMissing, ValueError, KeyError, TypeError):
            continue
        age = (now - started).total_seconds()
        if age > LOCK_STALE_SECONDS:
            continue
        lock.release()
        raise LockHeld(
            f"a {other_kind} is running on {store.url} (host {info.get('host')}, pid {info.get('pid')}, "
            f"started {int(age)}s ago)",
            hint=f"wait for it to finish; a lock older than {LOCK_STALE_SECONDS // 3600}h is ignored, "
            f"or delete {other} if that run is dead",
        )
    return lock


# --- manifests ------------------------------------------------------------------------------------


def backup_ids(store: Store) -> list[str]:
    return sorted(i for key in store.list(MANIFEST_PREFIX) if (i := id_from_manifest_key(key)))


def load_manifest(store: Store, backup_id: str) -> Manifest:
    try:
        data = store.get_bytes(manifest_key(backup_id))
    except ObjectMissing:
        raise UsageError(f"no backup {backup_id} in {store.url}", hint="`flashfit backup list` shows them") from None
    return Manifest.from_json(data, expected_id=backup_id)


def resolve_ref(store: Store, ref: str | None) -> str:
    """'latest' (or nothing), a full id, or a unique prefix of one."""
    ids = backup_ids(store)
    if not ids:
        raise UsageError(f"there are no backups in {store.url}", hint="`flashfit backup create` makes one")
    if ref in (None, "", "latest"):
        newest_second = ids[-1].split("-")[0]
        tied = [i for i in ids if i.startswith(newest_second)]
        if len(tied) == 1:
            return tied[0]
        times = {}
        for backup_id in tied:
            try:
                times[backup_id] = load_manifest(store, backup_id).time
            except ManifestError:
                continue
        return max(times, key=lambda i: (times[i], i)) if times else tied[-1]
    if ref in ids:
        return ref
    matches = [i for i in ids if i.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UsageError(f"{ref!r} matches {len(matches)} backups", hint="give more of the id")
    raise UsageError(f"no backup {ref!r} in {store.url}", hint="`flashfit backup list` shows them")


def list_backups(store: Store, workers: int = 8) -> list[dict[str, Any]]:
    store.check()

    def one(backup_id: str) -> dict[str, Any]:
        try:
            return load_manifest(store, backup_id).summary()
        except ManifestError as exc:
            return {"id": backup_id, "damaged": exc.message}

    return _parallel(one, backup_ids(store), workers)


# --- create -----------------------------------------------------------------------------------------


@dataclass
class _Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    new_blobs: int = 0
    reused_blobs: int = 0
    uploaded_bytes: int = 0

    def add(self, *, new: bool, stored: int) -> None:
        with self.lock:
            if new:
                self.new_blobs += 1
                self.uploaded_bytes += stored
            else:
                self.reused_blobs += 1


def existing_blobs(store: Store) -> dict[str, tuple[str, int]]:
    """blob id -> (compression, stored size) for every blob already in the store."""
    found: dict[str, tuple[str, int]] = {}
    for key, size in store.list(BLOB_PREFIX).items():
        parsed = parse_blob_key(key)
        if parsed:
            found[parsed[0]] = (parsed[1], size)
    return found


class _Uploader:
    def __init__(self, store: Store, existing: dict[str, tuple[str, int]], scratch: Path, progress: Progress,
                 stats: _Stats):
        self.store, self.existing, self.scratch, self.progress, self.stats = store, existing, scratch, progress, stats
        self._lock = threading.Lock()

    def _reusable(self, blob: str, size: int, encrypted: bool) -> tuple[str, int] | None:
        with self._lock:
            found = self.existing.get(blob)
            if found is None:
                return None
            compression, stored = found
            if compression == "none" and not encrypted and stored != size:
                return None  # a truncated raw blob in the store: write it again
            return found

    def _put(self, key: str, *, path: Path | None = None, data: bytes | None = None, credit: int) -> None:
        """Upload with retries; progress is credited as bytes go out and taken back on a retry."""
        sent = [0]

        def on_bytes(amount: int) -> None:
            sent[0] += amount
            self.progress.advance(amount)

        def attempt() -> None:
            if sent[0]:
                self.progress.advance(-sent[0])
                sent[0] = 0
            if path is not None:
                self.store.put_file(key, path, on_bytes)
            else:
                assert data is not None
                self.store.put_bytes(key, data)
                on_bytes(len(data))

        with_retries(attempt)
        self.progress.advance(credit - sent[0])

    @staticmethod
    def hash_item(item: Item) -> tuple[str, int]:
        assert item.local is not None
        try:
            return blobs.sha256_file(item.local)
        except FileNotFoundError:
            raise OperationFailed(f"{item.local} disappeared while it was being backed up",
                                  hint="something is writing the data folder; take the backup through the server") from None

    def store_item(self, item: Item, hashed: Future[tuple[str, int]] | None = None) -> FileEntry:
        if item.data is not None:
            return self._store_bytes(item)
        assert item.local is not None
        sha, size = hashed.result() if hashed is not None else self.hash_item(item)
        if item.expected_sha256 is not None and (sha != item.expected_sha256 or size != item.expected_size):
            raise OperationFailed(f"{item.path} does not match the server's snapshot manifest (sha256 or size)",
                                  hint="the snapshot changed after the server wrote it; run the backup again")
        found = self._reusable(sha, size, False)
        if found:
            self.stats.add(new=False, stored=found[1])
            self.progress.advance(size)
            return FileEntry(item.path, size, sha, sha, found[0], found[1], item.mode)
        if size <= blobs.SMALL:
            return self._store_bytes(item, item.local.read_bytes())
        compression, upload_path, stored = "none", item.local, size
        tmp = None
        if blobs.sample_pays(item.local, size):
            tmp = self.scratch / f"{sha}.zst"
            packed = blobs.compress_file(item.local, tmp)
            if blobs.pays(size, packed):
                compression, upload_path, stored = "zstd", tmp, packed
        try:
            self._put(blob_key(sha, compression), path=upload_path, credit=size)
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        self._record(sha, compression, stored)
        return FileEntry(item.path, size, sha, sha, compression, stored, item.mode)

    def _store_bytes(self, item: Item, data: bytes | None = None) -> FileEntry:
        data = item.data if data is None else data
        assert data is not None
        sha = blobs.sha256_bytes(data)
        if item.local is not None and item.expected_sha256 is not None and sha != item.expected_sha256:
            raise OperationFailed(f"{item.path} does not match the server's snapshot manifest")
        encrypted = item.encryption is not None
        found = self._reusable(sha, len(data), encrypted)
        plain_size = len(data)  # for an encrypted file: the ciphertext, so nothing about the secret leaks
        if found:
            self.stats.add(new=False, stored=found[1])
            self.progress.advance(len(data))
            return FileEntry(item.path, plain_size, None if encrypted else sha, sha, found[0], found[1], item.mode,
                             item.encryption)
        compression, payload = "none", data
        if not encrypted and data:
            packed = blobs.compress_bytes(data)
            if blobs.pays(len(data), len(packed)):
                compression, payload = "zstd", packed
        self._put(blob_key(sha, compression), data=payload, credit=len(data))
        self._record(sha, compression, len(payload))
        return FileEntry(item.path, plain_size, None if encrypted else sha, sha, compression, len(payload), item.mode,
                         item.encryption)

    def _record(self, blob: str, compression: str, stored: int) -> None:
        with self._lock:
            self.existing[blob] = (compression, stored)
        self.stats.add(new=True, stored=stored)


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
    from flashfit_ops.backup.location import data_location

    progress = progress or NullProgress()
    started = time.monotonic()
    now = now or _utcnow()
    backup_id = new_backup_id(now)
    if include_secrets and not key_material:
        raise UsageError("--include-secrets needs an encryption key",
                         hint="set BACKUP_ENCRYPTION_KEY (environment) or pass --key-file; 32 bytes hex/base64 or a passphrase")
    if include_secrets:
        try:
            blobs.parse_key(key_material or "")
        except blobs.KeyError_ as exc:
            raise UsageError(f"bad encryption key: {exc}") from None
    data_dir = data_dir or data_location(config)
    if not data_dir.is_dir():
        raise UsageError(f"the data folder {data_dir} does not exist", hint="check volumes.data in flashfit.yml")
    store.check(create=True)
    lock = acquire_lock(store, "backup", backup_id, now)
    warnings: list[str] = []
    scratch = scratch_dir()
    snap: SnapshotResult | None = None
    try:
        dest = f"{SNAPSHOT_ROOT}/{backup_id}"
        if snapshotter is not None:
            snap = snapshotter.snapshot(data_dir, dest)
        if snap is None:
            warnings.append("no server answered: read the data folder directly (stop writers for a consistent copy)")
        items = data_items(data_dir, snap, warnings)
        items += config_items(config, config_file, warnings)
        if include_secrets:
            items += secret_items(config, key_material or "", warnings)
        total = sum(item.size for item in items)
        stats = _Stats()
        uploader = _Uploader(store, existing_blobs(store), scratch, progress, stats)
        progress.start(f"backup {backup_id}", total)
        # Largest first, so the long uploads start early and small ones fill the gaps. One thread
        # hashes ahead, in that order, so hashing the next file overlaps uploading this one (the
        # blob's name, its hash, must be known before its upload starts).
        ordered = sorted(items, key=lambda item: item.size, reverse=True)
        hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flashfit-hash")
        try:
            hashes = {id(item): hasher.submit(uploader.hash_item, item) for item in ordered if item.data is None}
            entries = _parallel(lambda item: uploader.store_item(item, hashes.get(id(item))), ordered, workers)
        finally:
            hasher.shutdown(wait=True, cancel_futures=True)
            progress.finish()
        manifest = Manifest(
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
        # The manifest goes last: until it exists, this backup does not.
        with_retries(lambda: store.put_bytes(manifest_key(backup_id), manifest.to_json()))
    finally:
        lock.release()
        shutil.rmtree(scratch, ignore_errors=True)
        if snap is not None and is_within(data_dir, snap.folder) and snap.folder != data_dir:
            shutil.rmtree(snap.folder, ignore_errors=True)
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


# --- verify --------------------------------------------------------------------------------------


def _check_blob(store: Store, entry: FileEntry, scratch: Path, progress: Progress) -> str | None:
    """Download one blob and check it decodes to its recorded size and hash; None when good."""
    tmp = scratch / f"{entry.blob}.{threading.get_ident()}"
    try:
        with_retries(lambda: store.get_file(entry.key, tmp))
        progress.advance(entry.stored_size)
        if entry.encryption is not None:
            digest, size = blobs.sha256_file(tmp)
            return None if digest == entry.blob else f"stored bytes hash to {digest[:12]}…, not {entry.blob[:12]}…"
        with open(tmp, "rb") as handle:
            try:
                digest, size = blobs.copy_decoded(handle, None, entry.compression, entry.size)
            except Exception as exc:  # zstd frame errors
                return f"cannot be decompressed ({exc})"
        if size != entry.size:
            return f"holds {size if size <= entry.size else 'more than ' + str(entry.size)} bytes, not {entry.size}"
        if digest != entry.sha256:
            return f"content hashes to {digest[:12]}…, not {entry.blob[:12]}…"
        return None
    except ObjectMissing:
        return "is missing"
    finally:
        tmp.unlink(missing_ok=True)


def verify_backup(store: Store, ref: str | None = "latest", *, read_data: bool = False, workers: int = WORKERS,
                  progress: Progress | None = None) -> dict[str, Any]:
    """Check that every blob a backup needs is present with its recorded size; with read_data,
    download every blob and check its content hash too. Returns a report; problems name the file
    and the blob."""
    progress = progress or NullProgress()
    store.check()
    ids = backup_ids(store) if ref == "all" else [resolve_ref(store, ref)]
    listing = store.list(BLOB_PREFIX)
    reports = []
    read_bytes = 0
    for backup_id in ids:
        problems: list[dict[str, Any]] = []
        try:
            manifest = load_manifest(store, backup_id)
        except ManifestError as exc:
            reports.append({"id": backup_id, "ok": False, "problems": [{"path": None, "blob": None, "problem": exc.message}]})
            continue
        by_key: dict[str, FileEntry] = {}
        for entry in manifest.files:
            by_key.setdefault(entry.key, entry)
            stored = listing.get(entry.key)
            if stored is None:
                problems.append({"path": entry.path, "blob": entry.key, "problem": "blob is missing"})
            elif stored != entry.stored_size:
                problems.append({"path": entry.path, "blob": entry.key,
                                 "problem": f"blob is {stored} bytes, the manifest says {entry.stored_size} (truncated or replaced)"})
        if read_data:
            broken = {p["blob"] for p in problems}
            todo = [e for k, e in by_key.items() if k not in broken]
            scratch = scratch_dir()
            try:
                progress.start(f"read {backup_id}", sum(e.stored_size for e in todo))
                results = _parallel(lambda e: (e, _check_blob(store, e, scratch, progress)), todo, workers)
            finally:
                progress.finish()
                shutil.rmtree(scratch, ignore_errors=True)
            read_bytes += sum(e.stored_size for e in todo)
            for entry, problem in results:
                if problem:
                    for same in manifest.files:
                        if same.key == entry.key:
                            problems.append({"path": same.path, "blob": entry.key, "problem": f"blob {problem}"})
        reports.append({"id": backup_id, "ok": not problems, "files": len(manifest.files), "blobs": len(by_key),
                        "problems": problems})
    return {"target": store.url, "read_data": read_data, "read_bytes": read_bytes,
            "ok": all(r["ok"] for r in reports), "backups": reports}


# --- prune ---------------------------------------------------------------------------------------


def prune_backups(store: Store, policy: Policy, *, dry_run: bool = False, now: datetime | None = None) -> dict[str, Any]:
    if policy.empty:
        raise UsageError("that policy keeps nothing and would delete every backup",
                         hint="give at least one of --keep-last/--keep-daily/--keep-weekly above 0")
    store.check()
    now = now or _utcnow()
    lock = None if dry_run else acquire_lock(store, "prune", new_backup_id(now), now)
    try:
        manifests: dict[str, Manifest] = {}
        damaged: list[str] = []
        for backup_id in backup_ids(store):
            try:
                manifests[backup_id] = load_manifest(store, backup_id)
            except ManifestError:
                damaged.append(backup_id)
        decision = apply_policy([(m.id, m.time) for m in manifests.values()], policy)
        warnings = []
        if not dry_run and decision.forget:
            store.delete([manifest_key(i) for i in decision.forget])
        referenced: set[str] = set()
        for backup_id in decision.keep:
            referenced |= manifests[backup_id].keys()
        unreferenced: dict[str, int] = {}
        if damaged:
            warnings.append(f"unreadable manifests {damaged}: no blob deleted, since they may need any of them")
        else:
            unreferenced = {k: s for k, s in store.list(BLOB_PREFIX).items() if k not in referenced}
            if not dry_run and unreferenced:
                store.delete(sorted(unreferenced))
    finally:
        if lock:
            lock.release()
    return {
        "target": store.url,
        "dry_run": dry_run,
        "policy": {"keep_last": policy.keep_last, "keep_daily": policy.keep_daily, "keep_weekly": policy.keep_weekly},
        "keep": [{"id": i, "reasons": r} for i, r in sorted(decision.keep.items())],
        "forget": sorted(decision.forget),
        "damaged": damaged,
        "deleted_blobs": len(unreferenced),
        "freed_bytes": sum(unreferenced.values()),
        "warnings": warnings,
    }


# --- restore ------------------------------------------------------------------------------------


def _fetch_entry(store: Store, entry: FileEntry, root: Path, rel: str, scratch: Path, progress: Progress) -> Path:
    """Download one entry into root/rel, checking size and hash; IntegrityFailure names the damage."""
    try:
        target = join_inside(root, rel)
    except UnsafePath as exc:
        raise IntegrityFailure(f"refused to restore {entry.path}: {exc}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = scratch / f"{entry.blob}.{threading.get_ident()}"
    try:
        if entry.compression == "none":
            tmp = target  # download straight into place; hashed below
        try:
            with_retries(lambda: store.get_file(entry.key, tmp))
        except ObjectMissing:
            raise IntegrityFailure(f"{entry.path}: blob {entry.key} is missing from {store.url}",
                                   hint="nothing was changed; restore an older backup (`flashfit backup list`)") from None
        except Transient as exc:
            raise OperationFailed(f"{entry.path}: download of {entry.key} kept failing: {exc}") from None
        if entry.compression == "none":
            digest, size = blobs.sha256_file(target)
        else:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with open(tmp, "rb") as src, os.fdopen(fd, "wb") as out:
                try:
                    digest, size = blobs.copy_decoded(src, out, entry.compression, entry.size)
                except OSError:
                    raise
                except Exception as exc:
                    raise IntegrityFailure(f"{entry.path}: blob {entry.key} is corrupt (cannot be decompressed: {exc})",
                                           hint="nothing was changed; restore an older backup") from None
        expected = entry.blob if entry.encryption is not None else entry.sha256
        if size != (entry.stored_size if entry.encryption is not None else entry.size) or digest != expected:
            raise IntegrityFailure(
                f"{entry.path}: blob {entry.key} is corrupt or truncated (got {size} bytes hashing to {digest[:12]}…)",
                hint="nothing was changed; restore an older backup (`flashfit backup list`)",
            )
        with open(target, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(target, entry.restored_mode)
        progress.advance(entry.size)
        return target
    finally:
        if tmp != target:
            tmp.unlink(missing_ok=True)


def _live_diff(manifest: Manifest, data_dir: Path) -> dict[str, list[str]]:
    from flashfit_ops.backup.sources import walk_data

    live = {rel: full for rel, full, _ in walk_data(data_dir, [])} if data_dir.is_dir() else {}
    wanted = {e.relative: e for e in manifest.entries("data")}
    changed, same = [], []
    for rel, entry in wanted.items():
        if rel in live:
            (same if blobs.sha256_file(live[rel])[0] == entry.sha256 else changed).append(rel)
    return {
        "add": sorted(set(wanted) - set(live)),
        "change": sorted(changed),
        "remove": sorted(set(live) - set(wanted)),
        "same": sorted(same),
    }


def _space_error(where: Path, exc: OSError | None = None, need: int | None = None, free: int | None = None) -> OperationFailed:
    detail = f": need {need} bytes, {free} free" if need is not None else ""
    return OperationFailed(f"no space left on the device holding {where}{detail}",
                           hint="the live data was not touched; free space there and run the restore again")


def restore_backup(
    config: Config,
    store: Store,
    ref: str | None = "latest",
    *,
    service: ServiceControl,
    config_file: Path | None = None,
    data_dir: Path | None = None,
    dry_run: bool = False,
    apply_config: bool = False,
    key_material: str | None = None,
    progress: Progress | None = None,
    workers: int = WORKERS,
    ready_timeout: float = 120.0,
    now: datetime | None = None,
    disk_free: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free,
) -> dict[str, Any]:
    """Download a backup into a staging folder beside the data folder, verify every hash, and only
    then swap it in (live -> <data>.previous-<time>, staging -> live) around a stop/start of the
    server. A failure before the swap leaves the live data untouched; a server that does not come
    up on the restored data gets the previous data back."""
    from flashfit_ops.backup.location import data_location

    progress = progress or NullProgress()
    started = time.monotonic()
    now = now or _utcnow()
    store.check()
    backup_id = resolve_ref(store, ref)
    manifest = load_manifest(store, backup_id)
    data_dir = data_dir or data_location(config)
    data_entries = manifest.entries("data")
    config_entries = manifest.entries("config")
    secret_entries = manifest.entries("secrets")
    review = config.base_dir / f"restore-{backup_id}"
    warnings: list[str] = []

    listing = store.list(BLOB_PREFIX)
    missing = [e for e in manifest.files if listing.get(e.key) != e.stored_size]
    if missing:
        first = missing[0]
        state = "missing" if first.key not in listing else f"{listing[first.key]} bytes, expected {first.stored_size}"
        raise IntegrityFailure(
            f"backup {backup_id} is damaged: {first.path} needs blob {first.key} ({state})"
            + (f", and {len(missing) - 1} more" if len(missing) > 1 else ""),
            hint="nothing was changed; `flashfit backup verify` lists the damage; restore an older backup",
            details={"damaged": [{"path": e.path, "blob": e.key} for e in missing]},
        )
    if secret_entries and not key_material:
        warnings.append("the backup holds an encrypted env file; no key given (BACKUP_ENCRYPTION_KEY or --key-file), so it is not restored")
    result: dict[str, Any] = {
        "id": backup_id,
        "time": manifest.time.isoformat(),
        "tag": manifest.tag,
        "data_dir": str(data_dir),
        "files": len(data_entries),
        "bytes": sum(e.size for e in data_entries),
        "config_files": len(config_entries),
        "review_folder": None if apply_config else str(review),
        "dry_run": dry_run,
        "warnings": warnings,
    }
    if dry_run:
        result["changes"] = _live_diff(manifest, data_dir)
        return result

    parent = data_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    need = sum(e.size for e in manifest.files) + SPACE_MARGIN
    free = disk_free(parent)
    if free < need:
        raise _space_error(parent, need=need, free=free)

    staging = parent / f".{data_dir.name}.restore-{backup_id}"
    review_tmp = config.base_dir / f".restore-{backup_id}.tmp"
    lock = acquire_lock(store, "restore", new_backup_id(now), now)
    scratch = scratch_dir(parent)
    try:
        for leftover in (staging, review_tmp):
            shutil.rmtree(leftover, ignore_errors=True)
        staging.mkdir(mode=0o755)
        review_tmp.mkdir(mode=0o700)
        progress.start(f"restore {backup_id}", sum(e.size for e in manifest.files))
        try:
            jobs = [(e, staging, e.relative) for e in data_entries]
            jobs += [(e, review_tmp, e.path) for e in config_entries]
            if key_material:
                jobs += [(e, scratch, f"secrets/{e.blob}") for e in secret_entries]
            fetched = _parallel(lambda job: (job[0], _fetch_entry(store, job[0], job[1], job[2], scratch, progress)),
                                jobs, workers)
        finally:
            progress.finish()
        secrets_plain: dict[str, bytes] = {}
        for entry, path in fetched:
            if entry.encryption is not None:
                try:
                    secrets_plain[entry.relative] = blobs.decrypt(path.read_bytes(), key_material or "", entry.encryption, entry.path)
                except blobs.KeyError_ as exc:
                    raise UsageError(f"cannot decrypt {entry.path}: {exc}", hint="nothing was changed") from None
                path.unlink()
        for name, plain in secrets_plain.items():
            atomic_write_bytes(review_tmp / "secrets" / name, plain, mode=0o600)
        fsync_dir(staging)
        _refuse_unsafe_data(staging, backup_id)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(review_tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise _space_error(parent, exc) from None
        if exc.errno == errno.ENAMETOOLONG:
            raise IntegrityFailure(f"backup {backup_id} names a file too long for this filesystem: {exc.filename}",
                                   hint="nothing was changed; restore into a folder with a shorter path, or an older backup") from None
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(review_tmp, ignore_errors=True)
        raise
    finally:
        lock.release()
        shutil.rmtree(scratch, ignore_errors=True)

    # Everything is downloaded and verified: now, and only now, touch the live data.
    if data_dir.exists():
        live = os.stat(data_dir)
        os.chmod(staging, live.st_mode & 0o7777)
        if os.geteuid() == 0 and (live.st_uid, live.st_gid) != (os.getuid(), os.getgid()):
            # The server (uid 1000 in the image) must be able to write what we restored,
            # sub-folders such as images/ included: give the whole tree to the live folder's owner.
            _chown_tree(staging, live.st_uid, live.st_gid)
    previous = _unused(parent / f"{data_dir.name}.previous-{_stamp(now)}")
    try:
        service.stop()
        swapped_previous = _swap_in(staging, data_dir, previous)
    except BaseException:
        # Not swapped (a failed swap puts the live folder back): the server goes on with its data.
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(review_tmp, ignore_errors=True)
        try:
            service.start()
        except Exception:
            pass
        raise
    try:
        service.start()
        service.wait_ready(ready_timeout)
    except BaseException as exc:
        failed = _unused(parent / f"{data_dir.name}.failed-{_stamp(now)}")
        back = _undo_swap(service, data_dir, swapped_previous, failed, ready_timeout)
        if isinstance(exc, FlashFitError):
            state = "and the server is ready on it again" if back is None else f"but the server is not ready on it either: {back}"
            raise OperationFailed(f"the server did not come up on backup {backup_id}: {exc.message}; the previous data was put back "
                                  + state, hint=f"the restored copy is kept as {failed} for inspection",
                                  details={**exc.details, "undone": True, "failed_copy": str(failed),
                                           "ready_after_undo": back is None}) from None
        raise
    result["previous"] = str(swapped_previous) if swapped_previous else None

    # Configuration: into the review folder, or in place with apply_config.
    if review.exists():
        shutil.rmtree(review)
    os.rename(review_tmp, review)
    if apply_config:
        result["applied"] = _apply_config(config, manifest, review, config_file, now)
    result["review_folder"] = str(review)
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def _refuse_unsafe_data(staging: Path, backup_id: str) -> None:
    """What the data files name (segments, images, index files) must stay inside the folder,
    and every segment must match its hash: the server's own validator, before the swap."""
    from flashfit_contract.datafolder import problems

    found = problems(staging)
    if found:
        raise IntegrityFailure(f"backup {backup_id} holds unsafe data: {found[0]}",
                               hint="nothing was changed; restore an older backup")


def _swap_in(staging: Path, live: Path, previous: Path) -> Path | None:
    """live -> previous, staging -> live; on failure of the second rename, put live back."""
    had_live = live.exists()
    if had_live:
        os.rename(live, previous)
    try:
        os.rename(staging, live)
    except BaseException:
        if had_live:
            os.rename(previous, live)
        raise
    fsync_dir(live.parent)
    return previous if had_live else None


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.lchown(root, uid, gid)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lchown(os.path.join(folder, name), uid, gid)


def _undo_swap(service: ServiceControl, live: Path, previous: Path | None, failed: Path, ready_timeout: float) -> str | None:
    """Put the previous data back and start the server on it; None once it is ready, else why not."""
    try:
        service.stop()
    except Exception:
        pass
    os.rename(live, failed)
    if previous is not None:
        os.rename(previous, live)
    fsync_dir(live.parent)
    try:
        service.start()
        service.wait_ready(ready_timeout)
    except Exception as exc:
        return exc.message if isinstance(exc, FlashFitError) else f"{type(exc).__name__}: {exc}"
    return None


def _apply_config(config: Config, manifest: Manifest, review: Path, config_file: Path | None, now: datetime) -> list[str]:
    """Write the backed-up flashfit.yml and env file in place, keeping each old one beside it."""
    from flashfit_ops.config.secrets import env_file_path

    applied = []
    stamp = _stamp(now)
    try:  # checked when the manifest was read; again here, since it names a file to copy
        name = config_file_name((manifest.extra or {}).get("config_file"))
    except ValueError as exc:
        raise IntegrityFailure(f"backup {manifest.id}: {exc}", hint="the configuration was not applied") from None
    targets: list[tuple[Path, Path, int]] = []
    if name and config_file is not None and _regular_file(review / "config" / name):
        targets.append((review / "config" / name, config_file, 0o644))
    env_path = env_file_path(config)
    if _regular_file(review / "secrets" / env_path.name):
        targets.append((review / "secrets" / env_path.name, env_path, 0o600))
    for source, dest, most in targets:
        # Never wider than the file it replaces, nor than the default for its kind.
        mode = most
        if dest.exists():
            mode = most & os.stat(dest).st_mode
            keep = _unused(dest.with_name(f"{dest.name}.previous-{stamp}"))
            shutil.copy2(dest, keep)
            os.chmod(keep, mode)
        atomic_write_bytes(dest, source.read_bytes(), mode=mode)
        applied.append(str(dest))
    return applied


def _regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
