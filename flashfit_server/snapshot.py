"""Consistent copies of the data folder for backups (`POST /api/admin/snapshot`).

A snapshot is taken under the shared data lock, so no writer commits while files are copied; it
holds every committed store (json + the index file it names), items.json, fusion.json and the
item images, and is written into <data dir>/<dest>. manifest.json is written last: a folder
without one is an interrupted snapshot and must not be trusted.

Manifest format (manifest.json, UTF-8 JSON):
  {
    "format": "flashfit-snapshot/1",
    "created_at": "2025-01-01T00:00:00+00:00",   ISO 8601, UTC
    "generation": 42,                             data generation the copy reflects
    "app_version": "1.2.3",
    "item_count": 1000,
    "files": [                                    every file of the snapshot except manifest.json
      {"path": "clip.json", "size": 312, "sha256": "<hex>"},
      {"path": "images/1.png", "size": 5120, "sha256": "<hex>"},
      ...
    ]
  }
Paths are relative to the snapshot folder and use "/" separators; sorted by path.
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import UTC, datetime
from pathlib import Path

from flashfit_server.atomic import file_lock, fsync_dir, read_json, write_json_atomic
from flashfit_server.datastore import STORE_NAMES, DataStore
from flashfit_server.vector_store import committed_files

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "flashfit-snapshot/1"
_SAFE_DEST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$")
_RESERVED = {"images"}


class SnapshotError(ValueError):
    def __init__(self, message: str, conflict: bool = False):
        super().__init__(message)
        self.conflict = conflict


def resolve_dest(data_dir: Path, dest: str) -> Path:
    """A folder strictly inside the data dir, named with plain path segments only."""
    dest = dest.strip().rstrip("/") if dest else ""
    if dest.startswith("/"):
        raise SnapshotError("dest must be relative to the data dir, not an absolute path")
    if not dest or len(dest) > 200 or not _SAFE_DEST.match(dest) or ".." in dest.split("/"):
        raise SnapshotError("dest must be a relative folder of plain names (letters, digits, . _ -)")
    if dest.split("/")[0] in _RESERVED:
        raise SnapshotError(f"dest may not be inside {dest.split('/')[0]}/")
    target = (data_dir / dest).resolve()
    if data_dir.resolve() not in target.parents:
        raise SnapshotError("dest must stay inside the data dir")
    return target


def _copy_with_hash(src: Path, dst: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as reader, open(dst, "wb") as writer:
        for block in iter(lambda: reader.read(1 << 20), b""):
            digest.update(block)
            writer.write(block)
            size += len(block)
        writer.flush()
        os.fsync(writer.fileno())
    return size, digest.hexdigest()


def take_snapshot(store: DataStore, dest: str, app_version: str) -> dict:
    target = resolve_dest(store.folder, dest)
    if target.exists() and any(target.iterdir()):
        raise SnapshotError(f"{dest} already exists and is not empty", conflict=True)
    with file_lock(store.lock_path, shared=True):
        sources: list[Path] = []
        for name in STORE_NAMES:
            sources += committed_files(store.folder, name)
        for extra in (store.items_path, store.fusion_path):
            if extra.exists():
                sources.append(extra)
        items = read_json(store.items_path)["items"] if store.items_path.exists() else []
        sources += [store.images_dir / item["image_file"] for item in items if item.get("image_file")]
        generation = int(store.generation_path.read_text().strip() or 0) if store.generation_path.exists() else 0
        files = []
        target.mkdir(parents=True, exist_ok=True)
        for src in sources:
            if not src.exists():
                continue  # an image missing from a hand-edited folder; the manifest tells the truth
            rel = src.relative_to(store.folder).as_posix()
            size, sha = _copy_with_hash(src, target / rel)
            files.append({"path": rel, "size": size, "sha256": sha})
    for folder in (target, target / "images"):
        if folder.is_dir():
            fsync_dir(folder)
    manifest = {
        "format": MANIFEST_FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "generation": generation,
        "app_version": app_version,
        "item_count": len(items),
        "files": sorted(files, key=lambda f: f["path"]),
    }
    write_json_atomic(target / MANIFEST_NAME, manifest)
    return manifest

