"""One FAISS index per model with stable int64 item ids, persisted as an index/metadata pair.

On disk, for a store named `clip` in folder F:
  F/clip-<generation>-<sha>.index   the serialised faiss IndexIDMap2 (a new name for every save)
  F/clip.json                 the commit point: {"index_file", "sha256", "size", "count", "dim", ...}
The index file is written and fsynced first, then clip.json is atomically replaced. A kill at any
moment leaves clip.json naming a complete index file whose sha256 it records, so the pair always
matches; an index file no json names is debris from an interrupted save and is deleted by the
next save. Loading verifies size and sha256 and refuses a mismatch instead of serving garbage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import faiss
import numpy as np

from flashfit_server.atomic import (
    fault_point,
    read_json,
    sha256_bytes,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
)

IndexKind = Literal["flat", "hnsw"]
Inner = TypeVar("Inner", bound=faiss.Index)
FORMAT_VERSION = 1
HNSW_M = 32


class StoreError(RuntimeError):
    """A store on disk is unreadable or does not match its metadata."""


FAISS_DEFAULT_BLAS_THRESHOLD = int(faiss.cvar.distance_compute_blas_threshold)
# Below this many queries a flat store is scanned by one matrix-vector product in torch instead
# of faiss: faiss scans a lone query on one core (20 ms at 100k x 512 here), torch's mv uses its
# intra-op threads (10 ms), the same pool the encoders use, so no third thread pool competes
# (numpy's BLAS did: it slowed the encoders down more than it saved). From this many queries up,
# faiss' own BLAS path is as fast.
FEW_QUERIES = 4
# ... and only for stores this large (floats scanned): below it faiss' loop beats torch's fixed
# cost (0.14 against 0.34 ms at 1k x 512; they cross near 4k x 512).
TORCH_SCAN_FLOATS = 1 << 21


def configure_faiss(threads: int) -> None:
    """Thread count for faiss, and BLAS for query batches: faiss-cpu 1.15's threshold (128000
    queries) keeps every realistic batch on the slower one-query-at-a-time path."""
    faiss.omp_set_num_threads(max(1, threads))
    faiss.cvar.distance_compute_blas_threshold = FEW_QUERIES


@dataclass(frozen=True)
class SearchHits:
    ids: np.ndarray  # int64, best first, no -1 padding
    scores: np.ndarray  # float32 inner products


def _new_index(dim: int, kind: IndexKind) -> faiss.IndexIDMap2:
    inner: faiss.Index
    if kind == "hnsw":
        graph = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = 80
        inner = graph
    else:
        inner = faiss.IndexFlatIP(dim)
    return faiss.IndexIDMap2(inner)


class VectorStore:
    """An id-addressed set of L2-normalised vectors with inner-product search."""

    def __init__(self, name: str, dim: int, kind: IndexKind = "flat", index: faiss.Index | None = None):
        self.name = name
        self.dim = dim
        self.kind: IndexKind = kind
        index = index if index is not None else _new_index(dim, kind)
        if not isinstance(index, faiss.IndexIDMap2):  # faiss hands loaded indexes back as their own class
            raise StoreError(f"store {name!r}: the index file holds class {type(index).__name__}, not an id-mapped index")
        self.index = index
        self._ids = set(faiss.vector_to_array(self.index.id_map).tolist())
        self.ef_search = 64

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def __contains__(self, item_id: int) -> bool:
        return item_id in self._ids

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def add(self, ids: np.ndarray | list[int], vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (len(ids), self.dim):
            raise ValueError(f"{self.name}: expected {len(ids)}x{self.dim} vectors, got {vectors.shape}")
        clashes = self._ids.intersection(ids.tolist())
        if clashes or len(set(ids.tolist())) != len(ids):
            raise ValueError(f"{self.name}: duplicate item ids {sorted(clashes)[:5]}")
        self.index.add_with_ids(vectors, ids)
        self._ids.update(ids.tolist())

    def remove(self, ids: list[int]) -> int:
        present = [i for i in ids if i in self._ids]
        if not present:
            return 0
        if self.kind == "hnsw":
            # HNSW graphs cannot drop nodes; rebuild from the vectors that stay.
            keep = np.array([i for i in self.ids().tolist() if i not in set(present)], dtype=np.int64)
            vectors = self.vectors(keep) if len(keep) else np.zeros((0, self.dim), np.float32)
            self.index = _new_index(self.dim, self.kind)
            self._ids = set()
            if len(keep):
                self.add(keep, vectors)
        else:
            self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(present, dtype=np.int64)))
            self._ids.difference_update(present)
        return len(present)

    def vectors(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """Stored vectors for ids that are all present (callers check membership)."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.index.reconstruct_batch(ids)

    def search(self, queries: np.ndarray, k: int) -> list[SearchHits]:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k, len(self))
        if k <= 0:
            empty = SearchHits(np.zeros(0, np.int64), np.zeros(0, np.float32))
            return [empty for _ in range(len(queries))]
        if self.kind == "hnsw":
            self._inner(faiss.IndexHNSW).hnsw.efSearch = max(self.ef_search, k)
        if self.kind == "flat" and len(queries) < FEW_QUERIES and len(self) * self.dim >= TORCH_SCAN_FLOATS:
            scores, ids = self._flat_search_torch(queries, k)
        else:
            scores, ids = self.index.search(queries, k)
        hits = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            found = row_ids >= 0
            hits.append(SearchHits(row_ids[found], row_scores[found]))
        return hits

    def _inner(self, kind: type[Inner]) -> Inner:
        """The index behind the id map, as the class its kind makes (a file of another kind is refused)."""
        inner = faiss.downcast_index(self.index.index)
        if not isinstance(inner, kind):
            raise StoreError(f"store {self.name!r} is recorded as {self.kind} but its index is of class {type(inner).__name__}")
        return inner

    def _flat_search_torch(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner-product top-k over the flat index's own storage (views, no copies), best
        first, equal scores in storage order. Callers hold the store steady (DataStore.read)."""
        import torch

        flat = self._inner(faiss.IndexFlat)
        count = int(flat.ntotal)
        vectors = torch.from_numpy(faiss.rev_swig_ptr(flat.get_xb(), count * self.dim).reshape(count, self.dim))
        ids = faiss.rev_swig_ptr(self.index.id_map.data(), count)
        with torch.inference_mode():
            products = torch.from_numpy(queries) @ vectors.T
            top = torch.topk(products, k, dim=1).indices.numpy()
            scores = products.numpy()
        top.sort(axis=1)  # storage order, then a stable sort by score keeps it among equals
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        return np.take_along_axis(scores, top, axis=1), ids[top].astype(np.int64)

    # --- persistence -------------------------------------------------------------------------

    def save(self, folder: Path, generation: int) -> dict:
        """Write the index file, then commit the json that names it; returns the json payload."""
        folder.mkdir(parents=True, exist_ok=True)
        data = faiss.serialize_index(self.index)
        sha = sha256_bytes(data.data)  # the array's buffer, no copy
        # Content in the name: rewriting the same generation can never alter a committed file.
        index_file = f"{self.name}-{generation:010d}-{sha[:16]}.index"
        write_bytes_atomic(folder / index_file, data.data)
        fault_point(f"between-index-and-json:{self.name}")
        meta = {
            "format": FORMAT_VERSION,
            "name": self.name,
            "dim": self.dim,
            "kind": self.kind,
            "count": len(self),
            "generation": generation,
            "index_file": index_file,
            "size": int(data.nbytes),
            "sha256": sha,
        }
        write_json_atomic(folder / f"{self.name}.json", meta)
        self._remove_unreferenced(folder, keep=index_file)
        return meta

    def _remove_unreferenced(self, folder: Path, keep: str) -> None:
        """Debris of interrupted saves (callers hold the writer lock, so none is in progress)."""
        for path in folder.glob(f"{self.name}-*.index"):
            if path.name != keep:
                path.unlink(missing_ok=True)
        for path in [*folder.glob(f".{self.name}-*.tmp"), *folder.glob(f".{self.name}.json.*.tmp")]:
            path.unlink(missing_ok=True)

    @classmethod
    def load(cls, folder: Path, name: str, dim: int | None = None, kind: IndexKind = "flat") -> VectorStore:
        """Open the committed store, or an empty one if none was ever saved.

        `dim` is what the model produces now; a stored index of another dimension is an error
        (a changed checkpoint needs a re-ingest, not silently wrong scores)."""
        meta_path = folder / f"{name}.json"
        if not meta_path.exists():
            if dim is None:
                raise StoreError(f"store {name!r} does not exist in {folder}")
            return cls(name, dim, kind)
        meta = read_json(meta_path)
        index_path = folder / meta["index_file"]
        if not index_path.is_file():
            raise StoreError(f"{meta_path} names {meta['index_file']}, which is missing")
        if index_path.stat().st_size != meta["size"] or sha256_file(index_path) != meta["sha256"]:
            raise StoreError(f"{index_path} does not match the size/sha256 recorded in {meta_path}")
        if dim is not None and meta["dim"] != dim:
            raise StoreError(
                f"store {name!r} holds {meta['dim']}-d vectors but the model makes {dim}-d ones; "
                "re-ingest the catalogue after changing checkpoints"
            )
        index = faiss.deserialize_index(np.fromfile(index_path, dtype=np.uint8))
        store = cls(name, int(meta["dim"]), meta.get("kind", "flat"), index=index)
        if kind != store.kind:
            store = store.converted(kind)
        return store

    def converted(self, kind: IndexKind) -> VectorStore:
        """The same vectors under another index kind (VECTOR_INDEX changed between runs)."""
        other = VectorStore(self.name, self.dim, kind)
        ids = self.ids()
        if len(ids):
            other.add(ids, self.vectors(ids))
        return other


def committed_files(folder: Path, name: str) -> list[Path]:
    """The json and the index file it names, for snapshots; empty if never saved."""
    meta_path = folder / f"{name}.json"
    if not meta_path.exists():
        return []
    return [meta_path, folder / read_json(meta_path)["index_file"]]


def remove_store_files(folder: Path, name: str) -> None:
    for path in [folder / f"{name}.json", *folder.glob(f"{name}-*.index")]:
        if path.exists():
            os.unlink(path)
