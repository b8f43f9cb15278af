"""Consistent copies of the data folder for backups (`POST /api/admin/snapshot`).

A snapshot is taken under the shared data lock, so no writer commits while it is made: the store
manifest, the segments it names (immutable files: hard-linked when the file system allows, so a
snapshot costs no copy), a consistent copy of the SQLite catalogue (SQLite's online backup) and
the images the catalogue names. Because segments are immutable and named by content, a backup
store that deduplicates by hash uploads only the segments added since the previous backup.

Destinations are confined to their own folder: `dest` must be `_snapshots/<name>` (plain names),
so a snapshot can never land on or inside a store file (manifest.json, segments/, the catalogue,
images/). snapshot.json is written last: a folder without one is an interrupted snapshot. The
folder's other files form a data folder as they are (its manifest.json is the store manifest), so
a backup restores them in place.

Snapshot manifest (snapshot.json, also the endpoint's answer; UTF-8 JSON):
  {
    "format": "flashfit-snapshot/1",
    "created_at": "2025-01-01T00:00:00+00:00",   ISO 8601, UTC
    "generation": 42,                             store manifest generation the copy reflects
    "app_version": "1.2.3",
    "item_count": 1000,
    "files": [                                    every file of the snapshot except snapshot.json
      {"path": "catalog.sqlite3", "size": 8192, "sha256": "<hex>"},
      {"path": "images/1.png", "size": 5120, "sha256": "<hex>"},
      {"path": "manifest.json", "size": 312, "sha256": "<hex>"},
      {"path": "segments/clip-0000000001-<sha16>.seg", "size": 2112, "sha256": "<hex>"},
      ...
    ]
  }
Paths are relative to the snapshot folder, "/" separators, sorted.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from flashfit_server.atomic import file_lock, fsync_dir, write_json_atomic
from flashfit_contract.datafolder import CATALOG_NAME, MANIFEST_NAME, DataFolderError, check_image_file, read_manifest
from flashfit_server.datastore import DataStore

SNAPSHOT_MANIFEST = "snapshot.json"
MANIFEST_FORMAT = "flashfit-snapshot/1"
SNAPSHOT_ROOT = "_snapshots"
_PLAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class SnapshotError(ValueError):
    def __init__(self, message: str, conflict: bool = False):
        super().__init__(message)
        self.conflict = conflict


def resolve_dest(data_dir: Path, dest: str) -> Path:
    """`<data dir>/_snapshots/<name>[/<name>...]`, plain names only, and nowhere else."""
    dest = dest.strip().rstrip("/") if dest else ""
    if dest.startswith("/"):
        raise SnapshotError("dest must be relative to the data dir, not an absolute path")
    parts = dest.split("/") if dest else []
    if len(parts) < 2 or parts[0] != SNAPSHOT_ROOT or len(dest) > 200:
        raise SnapshotError(f"dest must be a folder under {SNAPSHOT_ROOT}/, e.g. {SNAPSHOT_ROOT}/2025-01-01")
    if not all(_PLAIN.match(p) and p not in (".", "..") for p in parts[1:]):
        raise SnapshotError("dest must be made of plain names (letters, digits, . _ -)")
    root = (data_dir / SNAPSHOT_ROOT).resolve()
    target = (data_dir / dest).resolve()
    if root != data_dir.resolve() / SNAPSHOT_ROOT or root not in target.parents:
        raise SnapshotError(f"dest must stay inside {SNAPSHOT_ROOT}/ of the data dir")
    return target


def _hash(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as reader:
        for block in iter(lambda: reader.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # immutable files: a second name is as good as a copy
        return
    except OSError:
        pass
    with open(src, "rb") as reader, open(dst, "wb") as writer:
        for block in iter(lambda: reader.read(1 << 20), b""):
            writer.write(block)
        writer.flush()
        os.fsync(writer.fileno())


def take_snapshot(store: DataStore, dest: str, app_version: str) -> dict:
    target = resolve_dest(store.folder, dest)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise SnapshotError(f"{dest} already exists and is not empty", conflict=True)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where a folder of the path should be
        raise SnapshotError(f"cannot make {dest}: {exc.strerror}", conflict=True) from None
    files: list[dict] = []
    with file_lock(store.lock_path, shared=True):
        manifest = read_manifest(store.folder)  # what is on disk now (this worker may lag behind)
        if manifest is None:
            raise SnapshotError("the data folder has no manifest yet")
        write_json_atomic(target / MANIFEST_NAME, manifest.to_json())
        for entry in manifest.entries():
            _copy(store.folder / entry.file, target / entry.file)
            files.append({"path": entry.file, "size": entry.size, "sha256": entry.sha256})
        source = sqlite3.connect(store.folder / CATALOG_NAME)
        copy = sqlite3.connect(target / CATALOG_NAME)
        try:
            source.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        finally:
            copy.close()
            source.close()
        rows = sqlite3.connect(f"{(target / CATALOG_NAME).as_uri()}?mode=ro", uri=True)
        try:
            images = [r[0] for r in rows.execute("SELECT image_file FROM items WHERE image_file != ''")]
            item_count = int(rows.execute("SELECT COUNT(*) FROM items").fetchone()[0])
        finally:
            rows.close()
        for name in images:
            try:
                src = check_image_file(store.folder, name, "image_file")
            except DataFolderError:
                continue  # refused on open already; never copied
            if src.is_file():
                _copy(src, target / "images" / name)
    for rel in (MANIFEST_NAME, CATALOG_NAME, *(f"images/{n}" for n in images if (target / "images" / n).is_file())):
        size, sha = _hash(target / rel)
        files.append({"path": rel, "size": size, "sha256": sha})
    for folder in (target, target / "images", target / "segments"):
        if folder.is_dir():
            fsync_dir(folder)
    result = {
        "format": MANIFEST_FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "generation": manifest.generation,
        "app_version": app_version,
        "item_count": item_count,
        "files": sorted(files, key=lambda f: f["path"]),
    }
    write_json_atomic(target / SNAPSHOT_MANIFEST, result)
    return result
