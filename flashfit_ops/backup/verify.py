"""`verify_backup`: every blob a backup needs is present with its recorded size; with read_data,
every blob is downloaded and decodes to its recorded size and hash. Problems name file and blob."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

from flashfit_ops.backup import blobs
from flashfit_ops.backup.catalogue import backup_ids, load_manifest, resolve_ref
from flashfit_ops.backup.common import WORKERS, NullProgress, Progress, parallel
from flashfit_ops.backup.manifest import BLOB_PREFIX, FileEntry, Manifest, ManifestError
from flashfit_ops.backup.store import ObjectMissing, Store, scratch_dir, with_retries

Problem = dict[str, Any]  # {"path": ..., "blob": ..., "problem": ...}


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
        try:
            manifest = load_manifest(store, backup_id)
        except ManifestError as exc:
            reports.append({"id": backup_id, "ok": False, "problems": [{"path": None, "blob": None, "problem": exc.message}]})
            continue
        by_key = _unique_blobs(manifest)
        problems = _listing_problems(manifest, listing)
        if read_data:
            broken = {p["blob"] for p in problems}
            todo = [e for k, e in by_key.items() if k not in broken]
            problems += _read_problems(store, manifest, todo, workers, progress)
            read_bytes += sum(e.stored_size for e in todo)
        reports.append({"id": backup_id, "ok": not problems, "files": len(manifest.files), "blobs": len(by_key),
                        "problems": problems})
    return {"target": store.url, "read_data": read_data, "read_bytes": read_bytes,
            "ok": all(r["ok"] for r in reports), "backups": reports}


def _unique_blobs(manifest: Manifest) -> dict[str, FileEntry]:
    """Each blob key of the manifest with the first entry that needs it."""
    by_key: dict[str, FileEntry] = {}
    for entry in manifest.files:
        by_key.setdefault(entry.key, entry)
    return by_key


def _listing_problems(manifest: Manifest, listing: dict[str, int]) -> list[Problem]:
    problems: list[Problem] = []
    for entry in manifest.files:
        stored = listing.get(entry.key)
        if stored is None:
            problems.append({"path": entry.path, "blob": entry.key, "problem": "blob is missing"})
        elif stored != entry.stored_size:
            problems.append({"path": entry.path, "blob": entry.key,
                             "problem": f"blob is {stored} bytes, the manifest says {entry.stored_size} (truncated or replaced)"})
    return problems


def _read_problems(store: Store, manifest: Manifest, todo: list[FileEntry], workers: int, progress: Progress) -> list[Problem]:
    """Download and check each blob of todo; a bad blob is a problem of every file that uses it."""
    scratch = scratch_dir()
    try:
        progress.start(f"read {manifest.id}", sum(e.stored_size for e in todo))
        results = parallel(lambda e: (e, _check_blob(store, e, scratch, progress)), todo, workers)
    finally:
        progress.finish()
        shutil.rmtree(scratch, ignore_errors=True)
    return [{"path": same.path, "blob": entry.key, "problem": f"blob {problem}"}
            for entry, problem in results if problem
            for same in manifest.files if same.key == entry.key]


def _check_blob(store: Store, entry: FileEntry, scratch: Path, progress: Progress) -> str | None:
    """Download one blob and check it decodes to its recorded size and hash; None when good."""
    tmp = scratch / f"{entry.blob}.{threading.get_ident()}"
    try:
        with_retries(lambda: store.get_file(entry.key, tmp))
        progress.advance(entry.stored_size)
        return _stored_problem(tmp, entry)
    except ObjectMissing:
        return "is missing"
    finally:
        tmp.unlink(missing_ok=True)


def _stored_problem(tmp: Path, entry: FileEntry) -> str | None:
    """What is wrong with a downloaded blob, or None. Encrypted blobs are checked as stored: the
    key is not needed to verify a backup."""
    if entry.encryption is not None:
        digest, _ = blobs.sha256_file(tmp)
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
