"""`restore_backup`: check the backup is complete, then download-and-verify (staging.py) →
swap-with-service (swap.py) → apply-config (apply_config.py). A failure before the swap leaves
the live data untouched; a server that does not come up on the restored data gets the previous
data back. A dry run stops after the check and compares the backup with the live data."""

from __future__ import annotations

import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from flashfit_ops.backup import blobs
from flashfit_ops.backup.apply_config import apply_config as write_config
from flashfit_ops.backup.apply_config import publish_review
from flashfit_ops.backup.catalogue import load_manifest, resolve_ref
from flashfit_ops.backup.common import WORKERS, NullProgress, Progress, utcnow
from flashfit_ops.backup.manifest import BLOB_PREFIX, Manifest
from flashfit_ops.backup.service import ServiceControl
from flashfit_ops.backup.staging import Staging, download_and_verify, space_error
from flashfit_ops.backup.store import Store
from flashfit_ops.backup.swap import swap_with_service
from flashfit_ops.errors import IntegrityFailure

if TYPE_CHECKING:
    from flashfit_ops.config.model import Config

SPACE_MARGIN = 64 * 1024 * 1024


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

    started = time.monotonic()
    now = now or utcnow()
    store.check()
    manifest = load_manifest(store, resolve_ref(store, ref))
    data_dir = data_dir or data_location(config)
    _require_blobs(store, manifest)
    review = config.base_dir / f"restore-{manifest.id}"
    result = _summary(manifest, data_dir, None if apply_config else review, dry_run, key_material)
    if dry_run:
        result["changes"] = live_diff(manifest, data_dir)
        return result

    _require_space(data_dir.parent, manifest, disk_free)
    staging = Staging(data=data_dir.parent / f".{data_dir.name}.restore-{manifest.id}",
                      review=config.base_dir / f".restore-{manifest.id}.tmp")
    download_and_verify(store, manifest, staging, key_material=key_material, progress=progress or NullProgress(),
                        workers=workers, now=now)
    # Everything is downloaded and verified: now, and only now, touch the live data.
    previous = swap_with_service(service, staging.data, staging.review, data_dir, manifest.id,
                                 ready_timeout=ready_timeout, now=now)
    result["previous"] = str(previous) if previous else None
    publish_review(staging.review, review)
    if apply_config:
        result["applied"] = write_config(config, manifest, review, config_file, now)
    result["review_folder"] = str(review)
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def _require_blobs(store: Store, manifest: Manifest) -> None:
    """Every blob the backup needs is in the store with its recorded size, or IntegrityFailure."""
    listing = store.list(BLOB_PREFIX)
    missing = [e for e in manifest.files if listing.get(e.key) != e.stored_size]
    if not missing:
        return
    first = missing[0]
    state = "missing" if first.key not in listing else f"{listing[first.key]} bytes, expected {first.stored_size}"
    raise IntegrityFailure(
        f"backup {manifest.id} is damaged: {first.path} needs blob {first.key} ({state})"
        + (f", and {len(missing) - 1} more" if len(missing) > 1 else ""),
        hint="nothing was changed; `flashfit backup verify` lists the damage; restore an older backup",
        details={"damaged": [{"path": e.path, "blob": e.key} for e in missing]},
    )


def _summary(manifest: Manifest, data_dir: Path, review: Path | None, dry_run: bool,
             key_material: str | None) -> dict[str, Any]:
    data_entries = manifest.entries("data")
    warnings: list[str] = []
    if manifest.entries("secrets") and not key_material:
        warnings.append("the backup holds an encrypted env file; no key given (BACKUP_ENCRYPTION_KEY or --key-file), so it is not restored")
    return {
        "id": manifest.id,
        "time": manifest.time.isoformat(),
        "tag": manifest.tag,
        "data_dir": str(data_dir),
        "files": len(data_entries),
        "bytes": sum(e.size for e in data_entries),
        "config_files": len(manifest.entries("config")),
        "review_folder": None if review is None else str(review),
        "dry_run": dry_run,
        "warnings": warnings,
    }


def _require_space(parent: Path, manifest: Manifest, disk_free: Callable[[Path], int]) -> None:
    parent.mkdir(parents=True, exist_ok=True)
    need = sum(e.size for e in manifest.files) + SPACE_MARGIN
    free = disk_free(parent)
    if free < need:
        raise space_error(parent, need=need, free=free)


def live_diff(manifest: Manifest, data_dir: Path) -> dict[str, list[str]]:
    """What restoring the backup would add, change and remove in data_dir (and leave the same)."""
    from flashfit_ops.backup.sources import walk_data

    live = {rel: full for rel, full, _ in walk_data(data_dir, [])} if data_dir.is_dir() else {}
    wanted = {e.relative: e for e in manifest.entries("data")}
    changed: list[str] = []
    same: list[str] = []
    for rel, entry in wanted.items():
        if rel in live:
            (same if blobs.sha256_file(live[rel])[0] == entry.sha256 else changed).append(rel)
    return {
        "add": sorted(set(wanted) - set(live)),
        "change": sorted(changed),
        "remove": sorted(set(live) - set(wanted)),
        "same": sorted(same),
    }
