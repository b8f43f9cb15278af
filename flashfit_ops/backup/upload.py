"""Upload of one backup's files as content-addressed blobs: a blob already in the store is
reused (never uploaded twice), small files go up from memory, large ones are compressed on disk
when that pays, encrypted files go up as their ciphertext. Progress is credited as bytes go out."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from flashfit_ops.backup import blobs
from flashfit_ops.backup.common import Progress
from flashfit_ops.backup.manifest import BLOB_PREFIX, FileEntry, blob_key, parse_blob_key
from flashfit_ops.backup.sources import Item
from flashfit_ops.backup.store import Store, with_retries
from flashfit_ops.errors import OperationFailed

StoredBlob = tuple[str, int]  # (compression, stored size)


@dataclass
class UploadStats:
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


def existing_blobs(store: Store) -> dict[str, StoredBlob]:
    """blob id -> (compression, stored size) for every blob already in the store."""
    found: dict[str, StoredBlob] = {}
    for key, size in store.list(BLOB_PREFIX).items():
        parsed = parse_blob_key(key)
        if parsed:
            found[parsed[0]] = (parsed[1], size)
    return found


def hash_item(item: Item) -> tuple[str, int]:
    """(sha256, size) of an item's local file; its disappearing midway is an OperationFailed."""
    assert item.local is not None
    try:
        return blobs.sha256_file(item.local)
    except FileNotFoundError:
        raise OperationFailed(f"{item.local} disappeared while it was being backed up",
                              hint="something is writing the data folder; take the backup through the server") from None


class Uploader:
    def __init__(self, store: Store, existing: dict[str, StoredBlob], scratch: Path, progress: Progress,
                 stats: UploadStats):
        self.store, self.existing, self.scratch, self.progress, self.stats = store, existing, scratch, progress, stats
        self._lock = threading.Lock()

    hash_item = staticmethod(hash_item)

    def store_item(self, item: Item, hashed: Future[tuple[str, int]] | None = None) -> FileEntry:
        if item.data is not None:
            return self._store_bytes(item)
        assert item.local is not None
        sha, size = hashed.result() if hashed is not None else hash_item(item)
        if item.expected_sha256 is not None and (sha != item.expected_sha256 or size != item.expected_size):
            raise OperationFailed(f"{item.path} does not match the server's snapshot manifest (sha256 or size)",
                                  hint="the snapshot changed after the server wrote it; run the backup again")
        found = self._reuse(sha, size, False)
        if found:
            return FileEntry(item.path, size, sha, sha, found[0], found[1], item.mode)
        if size <= blobs.SMALL:
            return self._store_bytes(item, item.local.read_bytes())
        compression, stored = self._upload_file(item.local, sha, size)
        return FileEntry(item.path, size, sha, sha, compression, stored, item.mode)

    def _reuse(self, blob: str, size: int, encrypted: bool) -> StoredBlob | None:
        """The stored blob to reuse, counted and credited to the progress; None to upload it."""
        found = self._reusable(blob, size, encrypted)
        if found:
            self.stats.add(new=False, stored=found[1])
            self.progress.advance(size)
        return found

    def _reusable(self, blob: str, size: int, encrypted: bool) -> StoredBlob | None:
        with self._lock:
            found = self.existing.get(blob)
            if found is None:
                return None
            compression, stored = found
            if compression == "none" and not encrypted and stored != size:
                return None  # a truncated raw blob in the store: write it again
            return found

    def _upload_file(self, local: Path, sha: str, size: int) -> StoredBlob:
        """Upload a large file, zstd-compressed through a scratch file when that pays."""
        compression, upload_path, stored = "none", local, size
        tmp = None
        if blobs.sample_pays(local, size):
            tmp = self.scratch / f"{sha}.zst"
            packed = blobs.compress_file(local, tmp)
            if blobs.pays(size, packed):
                compression, upload_path, stored = "zstd", tmp, packed
        try:
            self._put(blob_key(sha, compression), path=upload_path, credit=size)
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        self._record(sha, compression, stored)
        return compression, stored

    def _store_bytes(self, item: Item, data: bytes | None = None) -> FileEntry:
        data = item.data if data is None else data
        assert data is not None
        sha = blobs.sha256_bytes(data)
        if item.local is not None and item.expected_sha256 is not None and sha != item.expected_sha256:
            raise OperationFailed(f"{item.path} does not match the server's snapshot manifest")
        encrypted = item.encryption is not None
        plain_size = len(data)  # for an encrypted file: the ciphertext, so nothing about the secret leaks
        found = self._reuse(sha, len(data), encrypted) or self._upload_bytes(sha, data, encrypted)
        return FileEntry(item.path, plain_size, None if encrypted else sha, sha, found[0], found[1], item.mode,
                         item.encryption)

    def _upload_bytes(self, sha: str, data: bytes, encrypted: bool) -> StoredBlob:
        """Upload from memory, zstd-compressed when that pays (never ciphertext: it does not)."""
        compression, payload = "none", data
        if not encrypted and data:
            packed = blobs.compress_bytes(data)
            if blobs.pays(len(data), len(packed)):
                compression, payload = "zstd", packed
        self._put(blob_key(sha, compression), data=payload, credit=len(data))
        self._record(sha, compression, len(payload))
        return compression, len(payload)

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

    def _record(self, blob: str, compression: str, stored: int) -> None:
        with self._lock:
            self.existing[blob] = (compression, stored)
        self.stats.add(new=True, stored=stored)
