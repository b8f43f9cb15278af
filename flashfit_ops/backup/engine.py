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

from flashfit_ops.backup.catalogue import backup_ids, list_backups, load_manifest, resolve_ref
from flashfit_ops.backup.common import WORKERS, NullProgress, Progress
from flashfit_ops.backup.common import parallel as _parallel
from flashfit_ops.backup.common import stamp as _stamp
from flashfit_ops.backup.common import unused as _unused
from flashfit_ops.backup.common import utcnow as _utcnow
from flashfit_ops.backup.lock import EXCLUSIVE, LOCK_STALE_SECONDS, Lock, acquire_lock
from flashfit_ops.backup.create import create_backup
from flashfit_ops.backup.prune import prune_backups
from flashfit_ops.backup.upload import existing_blobs
from flashfit_ops.backup.verify import verify_backup

SPACE_MARGIN = 64 * 1024 * 1024


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
    from flashfit_server.datafolder import problems

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
