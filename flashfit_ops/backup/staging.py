"""Restore, step 1 of 3: download and verify. Every file of the backup goes into a staging folder
beside the data folder (and the configuration into a hidden review folder), each checked against
its size and hash; secrets are decrypted; the server's own validator checks the data. Nothing
live is touched here, and any failure removes what was staged."""

from __future__ import annotations

import errno
import os
import shutil
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from flashfit_ops.backup import blobs
from flashfit_ops.backup.common import Progress, parallel
from flashfit_ops.backup.lock import acquire_lock
from flashfit_ops.backup.manifest import FileEntry, Manifest, new_backup_id
from flashfit_ops.backup.paths import UnsafePath, join_inside
from flashfit_ops.backup.store import ObjectMissing, Store, Transient, scratch_dir, with_retries
from flashfit_ops.errors import IntegrityFailure, OperationFailed, UsageError
from flashfit_ops.fileio import atomic_write_bytes, fsync_dir

Job = tuple[FileEntry, Path, str]  # (entry, root folder, path inside it)


@dataclass(frozen=True)
class Staging:
    """Where a restore puts what it downloads before anything live changes."""

    data: Path  # beside the data folder: .<name>.restore-<id>, renamed into place by the swap
    review: Path  # beside the config: .restore-<id>.tmp, renamed to restore-<id> after the swap

    def discard(self) -> None:
        shutil.rmtree(self.data, ignore_errors=True)
        shutil.rmtree(self.review, ignore_errors=True)


def space_error(where: Path, need: int | None = None, free: int | None = None) -> OperationFailed:
    detail = f": need {need} bytes, {free} free" if need is not None else ""
    return OperationFailed(f"no space left on the device holding {where}{detail}",
                           hint="the live data was not touched; free space there and run the restore again")


def download_and_verify(store: Store, manifest: Manifest, staging: Staging, *, key_material: str | None,
                        progress: Progress, workers: int, now: datetime) -> None:
    """Fill the staging folders under a restore lock on the target; on any failure remove them."""
    lock = acquire_lock(store, "restore", new_backup_id(now), now)
    scratch = scratch_dir(staging.data.parent)
    try:
        _fill(store, manifest, staging, scratch, key_material, progress, workers)
    except OSError as exc:
        staging.discard()
        mapped = _os_error(exc, staging.data.parent, manifest.id)
        if mapped is None:
            raise
        raise mapped from None
    except BaseException:
        staging.discard()
        raise
    finally:
        lock.release()
        shutil.rmtree(scratch, ignore_errors=True)


def _os_error(exc: OSError, parent: Path, backup_id: str) -> OperationFailed | IntegrityFailure | None:
    if exc.errno == errno.ENOSPC:
        return space_error(parent)
    if exc.errno == errno.ENAMETOOLONG:
        return IntegrityFailure(f"backup {backup_id} names a file too long for this filesystem: {exc.filename}",
                                hint="nothing was changed; restore into a folder with a shorter path, or an older backup")
    return None


def _fill(store: Store, manifest: Manifest, staging: Staging, scratch: Path, key_material: str | None,
          progress: Progress, workers: int) -> None:
    for leftover in (staging.data, staging.review):
        shutil.rmtree(leftover, ignore_errors=True)
    staging.data.mkdir(mode=0o755)
    staging.review.mkdir(mode=0o700)
    jobs: list[Job] = [(e, staging.data, e.relative) for e in manifest.entries("data")]
    jobs += [(e, staging.review, e.path) for e in manifest.entries("config")]
    if key_material:
        jobs += [(e, scratch, f"secrets/{e.blob}") for e in manifest.entries("secrets")]
    progress.start(f"restore {manifest.id}", sum(e.size for e in manifest.files))
    try:
        fetched = parallel(lambda job: (job[0], fetch_entry(store, job[0], job[1], job[2], scratch, progress)), jobs, workers)
    finally:
        progress.finish()
    _write_secrets(fetched, staging.review, key_material or "")
    fsync_dir(staging.data)
    _refuse_unsafe_data(staging.data, manifest.id)


def _write_secrets(fetched: list[tuple[FileEntry, Path]], review: Path, key_material: str) -> None:
    """Decrypt the downloaded secrets (removing the ciphertext) into review/secrets, mode 0600."""
    plain: dict[str, bytes] = {}
    for entry, path in fetched:
        if entry.encryption is not None:
            try:
                plain[entry.relative] = blobs.decrypt(path.read_bytes(), key_material, entry.encryption, entry.path)
            except blobs.KeyError_ as exc:
                raise UsageError(f"cannot decrypt {entry.path}: {exc}", hint="nothing was changed") from None
            path.unlink()
    for name, content in plain.items():
        atomic_write_bytes(review / "secrets" / name, content, mode=0o600)


def _refuse_unsafe_data(staging: Path, backup_id: str) -> None:
    """What the data files name (segments, images, index files) must stay inside the folder,
    and every segment must match its hash: the server's own validator, before the swap."""
    from flashfit_contract.datafolder import problems

    found = problems(staging)
    if found:
        raise IntegrityFailure(f"backup {backup_id} holds unsafe data: {found[0]}",
                               hint="nothing was changed; restore an older backup")


def fetch_entry(store: Store, entry: FileEntry, root: Path, rel: str, scratch: Path, progress: Progress) -> Path:
    """Download one entry into root/rel, checking size and hash; IntegrityFailure names the damage.
    An uncompressed blob downloads straight into place; a compressed one through scratch."""
    try:
        target = join_inside(root, rel)
    except UnsafePath as exc:
        raise IntegrityFailure(f"refused to restore {entry.path}: {exc}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target if entry.compression == "none" else scratch / f"{entry.blob}.{threading.get_ident()}"
    try:
        _download(store, entry, tmp)
        digest, size = blobs.sha256_file(target) if tmp == target else _decode(entry, tmp, target)
        _check_digest(entry, digest, size)
        with open(target, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(target, entry.restored_mode)
        progress.advance(entry.size)
        return target
    finally:
        if tmp != target:
            tmp.unlink(missing_ok=True)


def _download(store: Store, entry: FileEntry, dest: Path) -> None:
    try:
        with_retries(lambda: store.get_file(entry.key, dest))
    except ObjectMissing:
        raise IntegrityFailure(f"{entry.path}: blob {entry.key} is missing from {store.url}",
                               hint="nothing was changed; restore an older backup (`flashfit backup list`)") from None
    except Transient as exc:
        raise OperationFailed(f"{entry.path}: download of {entry.key} kept failing: {exc}") from None


def _decode(entry: FileEntry, blob: Path, target: Path) -> tuple[str, int]:
    """Decompress blob into target (never through a link); (sha256, size) of what was written."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with open(blob, "rb") as src, os.fdopen(fd, "wb") as out:
        try:
            return blobs.copy_decoded(src, out, entry.compression, entry.size)
        except OSError:
            raise
        except Exception as exc:
            raise IntegrityFailure(f"{entry.path}: blob {entry.key} is corrupt (cannot be decompressed: {exc})",
                                   hint="nothing was changed; restore an older backup") from None


def _check_digest(entry: FileEntry, digest: str, size: int) -> None:
    """An encrypted entry is checked as stored (ciphertext); any other as its plain content."""
    expected = entry.blob if entry.encryption is not None else entry.sha256
    if size != (entry.stored_size if entry.encryption is not None else entry.size) or digest != expected:
        raise IntegrityFailure(
            f"{entry.path}: blob {entry.key} is corrupt or truncated (got {size} bytes hashing to {digest[:12]}…)",
            hint="nothing was changed; restore an older backup (`flashfit backup list`)",
        )
