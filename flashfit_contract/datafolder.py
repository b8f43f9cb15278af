"""The data folder is untrusted input: a restore can bring any folder. This module parses and
checks what its files say, with no heavy imports (the ops CLI calls `validate_data_folder` before
a restore replaces live data), and names the first thing that is wrong.

Rules: every path a data file names is a plain relative path that resolves inside the folder
(segments under segments/, images under images/, no links out); every field has its type and
range; every segment matches the size and sha256 the manifest records.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

MANIFEST_NAME = "manifest.json"
SEGMENTS_DIR = "segments"
MANIFEST_FORMAT = "flashfit-store/2"
CATALOG_NAME = "catalog.sqlite3"
STORE_NAMES = ("clip", "blip", "fashion")
MAX_ID = 2**62
MAX_DIM = 65_536
_SEGMENT_FILE = re.compile(r"^segments/(clip|blip|fashion)-[0-9]{10}-[0-9a-f]{16}\.seg$")
_IMAGE_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


class DataFolderError(ValueError):
    """The data folder is malformed; the message says which file and field."""


def _int(value: object, where: str, low: int = 0, high: int = MAX_ID) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DataFolderError(f"{where} must be an integer in [{low}, {high}], got {value!r:.60}")
    return value


def inside(folder: Path, relative: str, where: str) -> Path:
    """`folder/relative`, refused unless it resolves (links followed) inside the folder."""
    if not isinstance(relative, str) or not relative or relative.startswith("/") or "\\" in relative or "\x00" in relative:
        raise DataFolderError(f"{where} is not a plain relative path: {relative!r:.80}")
    if any(part in ("", ".", "..") for part in relative.split("/")):
        raise DataFolderError(f"{where} leaves the data folder: {relative!r:.80}")
    root = folder.resolve()
    target = (root / relative).resolve()
    if root not in target.parents:
        raise DataFolderError(f"{where} leaves the data folder: {relative!r:.80}")
    return target


def check_image_file(folder: Path, name: object, where: str) -> Path:
    if not isinstance(name, str) or not _IMAGE_FILE.match(name):
        raise DataFolderError(f"{where} is not a plain image file name: {name!r:.80}")
    return inside(folder, f"images/{name}", where)


@dataclass(frozen=True)
class SegmentEntry:
    file: str
    seq: int
    count: int
    size: int
    sha256: str

    def to_json(self) -> dict:
        return {"file": self.file, "seq": self.seq, "count": self.count, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    """The commit point: which segments are live, which ids are deleted (id -> the commit that
    deleted it; a tombstone hides the id in segments of earlier commits only)."""

    generation: int = 0
    dims: dict[str, int] = field(default_factory=dict)
    stores: dict[str, tuple[SegmentEntry, ...]] = field(default_factory=dict)
    tombstones: dict[int, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "format": MANIFEST_FORMAT,
            "generation": self.generation,
            "dims": dict(self.dims),
            "stores": {name: [e.to_json() for e in entries] for name, entries in self.stores.items()},
            "tombstones": sorted([item_id, seq] for item_id, seq in self.tombstones.items()),
        }

    def entries(self) -> Iterator[SegmentEntry]:
        for entries in self.stores.values():
            yield from entries


def parse_manifest(data: object, folder: Path) -> Manifest:
    if not isinstance(data, dict):
        raise DataFolderError(f"{MANIFEST_NAME} is not a JSON object")
    if data.get("format") != MANIFEST_FORMAT:
        raise DataFolderError(f"{MANIFEST_NAME}: format must be {MANIFEST_FORMAT!r}, got {data.get('format')!r:.40}")
    generation = _int(data.get("generation"), f"{MANIFEST_NAME}: generation")
    dims_raw, stores_raw, tombs_raw = data.get("dims"), data.get("stores"), data.get("tombstones")
    if not isinstance(dims_raw, dict) or set(dims_raw) != set(STORE_NAMES):
        raise DataFolderError(f"{MANIFEST_NAME}: dims must name exactly {', '.join(STORE_NAMES)}")
    dims = {n: _int(dims_raw[n], f"{MANIFEST_NAME}: dims.{n}", 1, MAX_DIM) for n in STORE_NAMES}
    if not isinstance(stores_raw, dict) or set(stores_raw) != set(STORE_NAMES):
        raise DataFolderError(f"{MANIFEST_NAME}: stores must name exactly {', '.join(STORE_NAMES)}")
    stores: dict[str, tuple[SegmentEntry, ...]] = {}
    seen: set[str] = set()
    segments_checked = False
    for name in STORE_NAMES:
        if not isinstance(stores_raw[name], list):
            raise DataFolderError(f"{MANIFEST_NAME}: stores.{name} must be a list")
        entries = []
        for index, raw in enumerate(stores_raw[name]):
            where = f"{MANIFEST_NAME}: stores.{name}[{index}]"
            if not isinstance(raw, dict):
                raise DataFolderError(f"{where} must be an object")
            file = raw.get("file")
            if not isinstance(file, str) or not _SEGMENT_FILE.match(file) or not file.startswith(f"segments/{name}-"):
                inside(folder, cast(str, file), f"{where}.file")  # names the worst first (a non-string too)
                raise DataFolderError(f"{where}.file is not a segment name of store {name}: {file!r:.80}")
            # The pattern admits only segments/<plain name>: what could still lead out is a link,
            # the folder (resolved once per manifest, not per entry: refreshes parse it per
            # commit, and realpath per entry cost ~70 ms of GIL at 100 segments) or the file.
            if not segments_checked:
                inside(folder, SEGMENTS_DIR, f"{where}.file")
                segments_checked = True
            if (folder / file).is_symlink():
                raise DataFolderError(f"{where}.file is a link, which could lead out of the data folder: {file!r:.80}")
            if file in seen:
                raise DataFolderError(f"{where}.file is listed twice")
            seen.add(file)
            sha = raw.get("sha256")
            if not isinstance(sha, str) or not _SHA.match(sha) or not file.endswith(f"-{sha[:16]}.seg"):
                raise DataFolderError(f"{where}.sha256 is not the 64-hex digest its name starts with")
            entries.append(SegmentEntry(
                file, _int(raw.get("seq"), f"{where}.seq", 0, generation), _int(raw.get("count"), f"{where}.count"),
                _int(raw.get("size"), f"{where}.size"), sha,
            ))
        stores[name] = tuple(entries)
    if not isinstance(tombs_raw, list):
        raise DataFolderError(f"{MANIFEST_NAME}: tombstones must be a list of [id, generation] pairs")
    tombstones: dict[int, int] = {}
    for index, pair in enumerate(tombs_raw):
        where = f"{MANIFEST_NAME}: tombstones[{index}]"
        if not isinstance(pair, list) or len(pair) != 2:
            raise DataFolderError(f"{where} must be an [id, generation] pair")
        tombstones[_int(pair[0], where, 1)] = _int(pair[1], where, 0, generation)
    return Manifest(generation, dims, stores, tombstones)


def read_manifest(folder: Path) -> Manifest | None:
    """The committed manifest, None if the folder has none (new, or of the old format)."""
    path = folder / MANIFEST_NAME
    if not path.exists():
        return None
    if path.is_symlink() or not path.is_file():
        raise DataFolderError(f"{MANIFEST_NAME} is not a regular file")
    try:
        data = json.loads(path.read_bytes()[: 64 << 20])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFolderError(f"{MANIFEST_NAME} is not valid JSON: {exc}") from None
    return parse_manifest(data, folder)


SMALL_SEGMENT_BYTES = 1 << 20  # read whole (one commit's delta) rather than mapped


def verify_segment(folder: Path, entry: SegmentEntry) -> bytes | None:
    """Size and sha256 of one segment against its manifest entry. A small segment's bytes, read
    once for the hash, are returned so the caller parses them instead of mapping the file (two
    mmaps per store per commit cost more than the read); None for a large one."""
    import hashlib

    path = inside(folder, entry.file, entry.file)
    if not path.is_file():
        raise DataFolderError(f"{MANIFEST_NAME} names {entry.file}, which is missing")
    if path.stat().st_size != entry.size:
        raise DataFolderError(f"{entry.file} is {path.stat().st_size} bytes, the manifest records {entry.size}")
    digest = hashlib.sha256()
    blocks = []
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            if entry.size <= SMALL_SEGMENT_BYTES:
                blocks.append(block)
    if digest.hexdigest() != entry.sha256:
        raise DataFolderError(f"{entry.file} does not match the sha256 its manifest records")
    return b"".join(blocks) if entry.size <= SMALL_SEGMENT_BYTES else None


def check_catalog(folder: Path) -> int:
    """Every row of the SQLite catalogue well-typed, every image name inside images/."""
    path = folder / CATALOG_NAME
    if not path.exists():
        return 0
    if path.is_symlink() or not path.is_file():
        raise DataFolderError(f"{CATALOG_NAME} is not a regular file")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT id, image_file, seq, name, caption, tags FROM items").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise DataFolderError(f"{CATALOG_NAME} is not a readable catalogue: {exc}") from None
    for item_id, image_file, seq, name, caption, tags in rows:
        _int(item_id, f"{CATALOG_NAME}: items.id", 1)
        where = f"{CATALOG_NAME}: items[{item_id}]"
        _int(seq, f"{where}.seq")
        if not isinstance(name, str) or not isinstance(caption, str):
            raise DataFolderError(f"{where}: name and caption must be text")
        try:
            tag_list = json.loads(tags)
        except (TypeError, ValueError):
            tag_list = None
        if not isinstance(tag_list, list) or not all(isinstance(t, str) for t in tag_list):
            raise DataFolderError(f"{where}.tags must be a JSON list of strings")
        if image_file:
            check_image_file(folder, image_file, f"{where}.image_file")
    return len(rows)


def _legacy_json(path: Path) -> object:
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFolderError(f"{path.name} is not valid JSON: {exc}") from None


def check_legacy_items(folder: Path) -> None:
    """items.json of the format before manifests (migrated on open): the same path rules."""
    path = folder / "items.json"
    if not path.exists():
        return
    data = _legacy_json(path)
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise DataFolderError("items.json: items must be a list")
    for index, raw in enumerate(items):
        if not isinstance(raw, dict):
            raise DataFolderError(f"items.json: items[{index}] must be an object")
        _int(raw.get("id"), f"items.json: items[{index}].id")
        if raw.get("image_file"):
            check_image_file(folder, raw["image_file"], f"items.json: items[{index}].image_file")


def check_legacy_stores(folder: Path) -> None:
    """<store>.json of the previous format names its index file: a plain name in the folder."""
    for name in STORE_NAMES:
        path = folder / f"{name}.json"
        if not path.exists():
            continue
        meta = _legacy_json(path)
        index_file = meta.get("index_file") if isinstance(meta, dict) else None
        where = f"{name}.json: index_file"
        if not isinstance(index_file, str) or "/" in index_file:
            raise DataFolderError(f"{where} must be a plain file name, got {index_file!r:.80}")
        inside(folder, index_file, where)


def validate_data_folder(folder: Path, verify_hashes: bool = True) -> Manifest | None:
    """Raise DataFolderError naming the first problem; the manifest (if any) when all is well."""
    manifest = read_manifest(folder)
    if manifest is not None and verify_hashes:
        for entry in manifest.entries():
            verify_segment(folder, entry)
    check_catalog(folder)
    check_legacy_items(folder)
    check_legacy_stores(folder)
    return manifest


def problems(folder: Path) -> list[str]:
    """For callers that report rather than raise (restore verification)."""
    try:
        validate_data_folder(folder)
    except DataFolderError as exc:
        return [str(exc)]
    except OSError as exc:
        return [f"data folder unreadable: {exc}"]
    return []
