"""What a target holds: the ids of its complete backups (those with a manifest), one manifest,
a reference ('latest', an id or a unique prefix) resolved to an id, and the listing."""

from __future__ import annotations

from typing import Any

from flashfit_ops.backup.common import parallel
from flashfit_ops.backup.manifest import MANIFEST_PREFIX, Manifest, ManifestError, id_from_manifest_key, manifest_key
from flashfit_ops.backup.store import ObjectMissing, Store
from flashfit_ops.errors import UsageError


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
    if not ref or ref == "latest":
        return _latest(store, ids)
    if ref in ids:
        return ref
    return _by_prefix(store, ids, ref)


def _latest(store: Store, ids: list[str]) -> str:
    """The newest id; ids made in the same second are told apart by their manifests' times."""
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


def _by_prefix(store: Store, ids: list[str], ref: str) -> str:
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

    return parallel(one, backup_ids(store), workers)
