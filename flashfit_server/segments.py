"""Immutable segment files: the vectors of one store added by one commit (or merged by one
compaction), with their item ids, written once and never changed.

File layout (little endian):
  bytes 0..7    magic b"FFSEG\\x00\\x01\\x00"
  bytes 8..15   count (uint64)
  bytes 16..23  dim (uint64)
  bytes 24..63  zero padding (vectors then start 64-byte aligned after the ids)
  ids           int64[count]
  vectors       float32[count, dim]

Readers map the file (numpy memmap), so every worker of a host shares one copy in the page
cache. The file name carries the store, the commit sequence and a hash prefix
(`segments/clip-0000000042-<sha16>.seg`), so a name can never be reused for other bytes.
No faiss or torch here: the restore path validates folders with this module.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flashfit_server.atomic import fault_point, sha256_bytes, write_bytes_atomic

MAGIC = b"FFSEG\x00\x01\x00"
HEADER = 64
SEGMENTS_DIR = "segments"


class SegmentError(ValueError):
    """A segment file is malformed or does not match what the manifest records."""


def encode(ids: np.ndarray, vectors: np.ndarray) -> bytes:
    ids = np.ascontiguousarray(ids, dtype="<i8")
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise ValueError(f"expected {len(ids)} vectors, got shape {vectors.shape}")
    header = MAGIC + struct.pack("<QQ", len(ids), vectors.shape[1])
    return header.ljust(HEADER, b"\x00") + ids.tobytes() + vectors.tobytes()


def segment_name(store: str, seq: int, sha: str) -> str:
    return f"{SEGMENTS_DIR}/{store}-{seq:010d}-{sha[:16]}.seg"


def write_segment(folder: Path, store: str, seq: int, ids: np.ndarray, vectors: np.ndarray, sync_dir: bool = True,
                  sync: bool = True) -> dict:
    """Write (atomically renamed; fsynced unless `sync=False`) and return the manifest entry
    naming it. With `sync_dir=False` the caller fsyncs segments/ before a manifest names it."""
    data = encode(ids, vectors)
    sha = sha256_bytes(data)
    name = segment_name(store, seq, sha)
    (folder / SEGMENTS_DIR).mkdir(exist_ok=True)
    write_bytes_atomic(folder / name, data, sync_dir=sync_dir, sync=sync)
    fault_point(f"between-segment-and-manifest:{store}")
    return {"file": name, "seq": seq, "count": len(ids), "size": len(data), "sha256": sha}


def read_header(path: Path) -> tuple[int, int]:
    with open(path, "rb") as handle:
        head = handle.read(HEADER)
    if len(head) < HEADER or head[:8] != MAGIC:
        raise SegmentError(f"{path.name} is not a segment file")
    count, dim = struct.unpack("<QQ", head[8:24])
    return int(count), int(dim)


@dataclass(frozen=True)
class Segment:
    """One mapped segment. Immutable: states built from one manifest share these objects."""

    file: str
    seq: int
    ids: np.ndarray  # int64[count], memory-mapped
    vectors: np.ndarray  # float32[count, dim], memory-mapped
    order: np.ndarray  # argsort of ids, for id lookups
    folder: Path | None = None  # the data folder it was mapped from (None: built in memory)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def open(cls, folder: Path, entry: dict, dim: int, data: bytes | None = None) -> Segment:
        """Map a segment whose size and sha256 the caller has verified (see datafolder), or parse
        `data`, its verified bytes (small segments: read, not mapped)."""
        path = folder / entry["file"]
        if data is not None:
            head = data[:HEADER]
            if len(head) < HEADER or head[:8] != MAGIC:
                raise SegmentError(f"{path.name} is not a segment file")
            count, file_dim = (int(v) for v in struct.unpack("<QQ", head[8:24]))
            size = len(data)
        else:
            count, file_dim = read_header(path)
            size = path.stat().st_size
        if count != entry["count"] or file_dim != dim:
            raise SegmentError(f"{entry['file']} holds {count}x{file_dim}, the manifest says {entry['count']}x{dim}")
        if size != HEADER + count * 8 + count * dim * 4:
            raise SegmentError(f"{entry['file']} has the wrong length for {count}x{dim}")
        if count == 0:
            ids = np.zeros(0, np.int64)
            vectors = np.zeros((0, dim), np.float32)
        elif data is not None:
            ids = np.frombuffer(data, dtype="<i8", count=count, offset=HEADER)
            vectors = np.frombuffer(data, dtype="<f4", count=count * dim, offset=HEADER + 8 * count).reshape(count, dim)
        else:
            ids = np.memmap(path, dtype="<i8", mode="r", offset=HEADER, shape=(count,))
            vectors = np.memmap(path, dtype="<f4", mode="r", offset=HEADER + 8 * count, shape=(count, dim))
        order = np.argsort(ids, kind="stable")
        if count and np.any(np.diff(ids[order]) == 0):
            raise SegmentError(f"{entry['file']} lists an item id twice")
        return cls(entry["file"], int(entry["seq"]), ids, vectors, order, folder)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id in this segment, -1 where absent."""
        if len(self.ids) == 0:
            return np.full(len(ids), -1, np.int64)
        pos = np.searchsorted(self.ids, ids, sorter=self.order)
        pos = np.minimum(pos, len(self.ids) - 1)
        rows = self.order[pos]
        return np.where(self.ids[rows] == ids, rows, -1)
