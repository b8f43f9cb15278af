"""`prune_backups`: forget the backups the retention policy does not keep (their manifests go),
then delete the blobs no remaining backup needs. Runs under the exclusive lock; a manifest that
cannot be read stops every blob deletion, since that backup may need any of them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flashfit_ops.backup.catalogue import backup_ids, load_manifest
from flashfit_ops.backup.common import utcnow
from flashfit_ops.backup.lock import acquire_lock
from flashfit_ops.backup.manifest import BLOB_PREFIX, Manifest, ManifestError, manifest_key, new_backup_id
from flashfit_ops.backup.retention import Decision, Policy, apply_policy
from flashfit_ops.backup.store import Store
from flashfit_ops.errors import UsageError


def prune_backups(store: Store, policy: Policy, *, dry_run: bool = False, now: datetime | None = None) -> dict[str, Any]:
    if policy.empty:
        raise UsageError("that policy keeps nothing and would delete every backup",
                         hint="give at least one of --keep-last/--keep-daily/--keep-weekly above 0")
    store.check()
    now = now or utcnow()
    lock = None if dry_run else acquire_lock(store, "prune", new_backup_id(now), now)
    try:
        manifests, damaged = _read_manifests(store)
        decision = apply_policy([(m.id, m.time) for m in manifests.values()], policy)
        if not dry_run and decision.forget:
            store.delete([manifest_key(i) for i in decision.forget])
        unreferenced = {} if damaged else _unreferenced_blobs(store, manifests, decision)
        if not dry_run and unreferenced:
            store.delete(sorted(unreferenced))
    finally:
        if lock:
            lock.release()
    return _report(store, policy, decision, damaged, unreferenced, dry_run)


def _report(store: Store, policy: Policy, decision: Decision, damaged: list[str], unreferenced: dict[str, int],
            dry_run: bool) -> dict[str, Any]:
    warnings = [f"unreadable manifests {damaged}: no blob deleted, since they may need any of them"] if damaged else []
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


def _read_manifests(store: Store) -> tuple[dict[str, Manifest], list[str]]:
    """(the readable manifests by id, the ids whose manifest cannot be read)."""
    manifests: dict[str, Manifest] = {}
    damaged: list[str] = []
    for backup_id in backup_ids(store):
        try:
            manifests[backup_id] = load_manifest(store, backup_id)
        except ManifestError:
            damaged.append(backup_id)
    return manifests, damaged


def _unreferenced_blobs(store: Store, manifests: dict[str, Manifest], decision: Decision) -> dict[str, int]:
    """blob key -> stored size of every blob no kept backup needs."""
    referenced: set[str] = set()
    for backup_id in decision.keep:
        referenced |= manifests[backup_id].keys()
    return {k: s for k, s in store.list(BLOB_PREFIX).items() if k not in referenced}
