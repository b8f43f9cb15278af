"""HNSW graphs of large segments, stored once beside the segment and memory-mapped by every worker.

A graph is derived data: `segments/<store>-<seq>-<sha16>.hnsw` belongs to the segment with the
same stem (immutable, so the graph never goes stale) and is not named in the manifest. The first
worker (or the compaction that made the segment) builds it and writes it; every worker then opens
it with faiss's IO_FLAG_MMAP_IFC, which maps the file's vectors and neighbour lists instead of
copying them, so N workers share one copy in the page cache. (In faiss 1.15.1 IO_FLAG_MMAP and
IO_FLAG_READ_ONLY do not map an HNSW index: they read it into private memory; measured.)

The file is untrusted input like the rest of the folder: before a search touches it, its shape and
every neighbour list are checked against the segment (ids in range, offsets consistent with the
levels, vectors equal to sampled segment rows). A file that fails is rebuilt, never searched.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from flashfit_server.segments import Segment

log = logging.getLogger(__name__)

GRAPH_SUFFIX = ".hnsw"
M = 32
EF_CONSTRUCTION = 80
SAMPLED_ROWS = 16


class GraphFileError(ValueError):
    """A graph file does not fit its segment."""


def graph_path(segment: Segment) -> Path | None:
    if segment.folder is None or not segment.file.endswith(".seg"):
        return None
    return segment.folder / (segment.file[: -len(".seg")] + GRAPH_SUFFIX)


def build(segment: Segment, dim: int) -> Any:  # noqa: ANN401 - a faiss index
    import faiss

    graph = faiss.IndexHNSWFlat(dim, M, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = EF_CONSTRUCTION
    graph.add(np.ascontiguousarray(segment.vectors))
    return graph


def _array(vector: Any, dtype: type) -> np.ndarray:  # noqa: ANN401 - a faiss vector
    import faiss

    return np.asarray(faiss.vector_to_array(vector), dtype=dtype)


def check(graph: Any, segment: Segment, dim: int) -> None:  # noqa: ANN401 - a faiss index
    """Everything a search reads stays in bounds, and the graph holds this segment's vectors."""
    import faiss

    n = len(segment)
    if graph.d != dim or graph.ntotal != n or graph.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise GraphFileError(f"holds {graph.ntotal}x{graph.d} (metric {graph.metric_type}), the segment {n}x{dim}")
    hnsw = graph.hnsw
    cum = _array(hnsw.cum_nneighbor_per_level, np.int64)
    levels = _array(hnsw.levels, np.int64)
    offsets = _array(hnsw.offsets, np.int64)
    neighbors = _array(hnsw.neighbors, np.int64)
    if len(cum) < 2 or cum[0] != 0 or np.any(np.diff(cum) < 0) or len(levels) != n or len(offsets) != n + 1:
        raise GraphFileError("level tables do not match the segment")
    if n and (levels.min() < 1 or levels.max() >= len(cum)):
        raise GraphFileError("a node level is out of range")
    if offsets[0] != 0 or offsets[-1] != len(neighbors) or not np.array_equal(np.diff(offsets), cum[levels]):
        raise GraphFileError("neighbour offsets do not match the levels")
    if len(neighbors) and (neighbors.min() < -1 or neighbors.max() >= n):
        raise GraphFileError("a neighbour id is out of range")
    if n and (not 0 <= hnsw.entry_point < n or hnsw.max_level != levels.max() - 1):
        raise GraphFileError("the entry point is out of range")
    storage = faiss.downcast_index(graph.storage)
    if not isinstance(storage, faiss.IndexFlat) or storage.codes.size() != n * dim * 4:
        raise GraphFileError("the stored vectors do not match the segment")
    rows: np.ndarray = np.random.default_rng(n).choice(n, min(n, SAMPLED_ROWS), replace=False) if n else np.zeros(0, np.int64)
    for row in rows.tolist():
        if not np.array_equal(storage.reconstruct(int(row)), np.asarray(segment.vectors[row])):
            raise GraphFileError(f"vector {row} differs from the segment's")


def load(path: Path, segment: Segment, dim: int) -> Any:  # noqa: ANN401 - a faiss index
    import faiss

    if path.is_symlink() or not path.is_file():
        raise GraphFileError("is not a regular file")
    try:
        graph = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    except RuntimeError as exc:
        raise GraphFileError(f"is not a faiss index: {str(exc)[:200]}") from None
    if not isinstance(graph, faiss.IndexHNSWFlat):
        raise GraphFileError(f"is a {type(graph).__name__}, not an HNSW graph")
    check(graph, segment, dim)
    return graph


def shared_graph(segment: Segment, dim: int) -> Any:  # noqa: ANN401 - a faiss index
    """The segment's graph, mapped from its file (built and written first if there is none or it
    is unusable); a private in-memory graph where the folder cannot be written."""
    import faiss

    path = graph_path(segment)
    if path is None:
        return build(segment, dim)
    if path.exists() or path.is_symlink():
        try:
            return load(path, segment, dim)
        except GraphFileError as exc:
            log.warning("%s %s; building it again", path.name, exc)
    graph = build(segment, dim)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        faiss.write_index(graph, str(tmp))
        os.replace(tmp, path)  # readers see no file or a whole one; two builders write the same
        return load(path, segment, dim)  # mapped: this worker shares the pages too
    except (OSError, RuntimeError, GraphFileError) as exc:
        log.warning("cannot store the graph of %s (%s); keeping it in this worker's memory", segment.file, exc)
        tmp.unlink(missing_ok=True)
        return graph
