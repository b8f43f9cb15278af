"""The backup jobs under their former import path. The jobs live in their own modules: lock
(the lock in the target), catalogue (ids, manifests, listing), upload + create, verify, prune,
and restore (staging → swap → apply_config). New code imports those, or `backup.api`."""

from __future__ import annotations

from flashfit_ops.backup.catalogue import backup_ids, list_backups, load_manifest, resolve_ref
from flashfit_ops.backup.common import WORKERS, NullProgress, Progress
from flashfit_ops.backup.create import create_backup
from flashfit_ops.backup.lock import EXCLUSIVE, LOCK_STALE_SECONDS, Lock, acquire_lock
from flashfit_ops.backup.prune import prune_backups
from flashfit_ops.backup.restore import SPACE_MARGIN, restore_backup
from flashfit_ops.backup.upload import existing_blobs
from flashfit_ops.backup.verify import verify_backup

__all__ = [
    "EXCLUSIVE",
    "LOCK_STALE_SECONDS",
    "SPACE_MARGIN",
    "WORKERS",
    "Lock",
    "NullProgress",
    "Progress",
    "acquire_lock",
    "backup_ids",
    "create_backup",
    "existing_blobs",
    "list_backups",
    "load_manifest",
    "prune_backups",
    "resolve_ref",
    "restore_backup",
    "verify_backup",
]
