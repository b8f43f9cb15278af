"""One store's live vectors as seen through one manifest: mapped segments minus tombstones.

Immutable: a newer manifest gives a new SegmentedIndex that reuses the Segment objects (and their
mappings and HNSW graphs) of the ones still live, so a refresh costs work in proportion to what
changed. Small segments are scanned exactly (numpy, or torch for large ones, like the flat store);
with kind "hnsw", segments of at least HNSW_MIN_ROWS rows (made by compaction) get a graph (stored
beside the segment and memory-mapped, see graphs.py), and newer vectors stay searchable from the
small flat segments until compaction folds them in.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass

import numpy as np

from flashfit_server.segments import Segment

HNSW_MIN_ROWS = 20_000
# Segments of at most this many rows (the deltas of single commits) are searched as one block:
# their live rows are copied into one small array when the index is built (in the refresh
# thread), so a search costs the same whether 1 or 100 commits arrived since the last compaction.
TAIL_ROWS = 256
TAIL_FILE = "<tail>"
TORCH_SCAN_FLOATS = 1 << 21  # from this many floats torch's threaded matmul wins (see vector_store)
_graph_lock = threading.Lock()


@dataclass(frozen=True)
class SearchHits:
    ids: np.ndarray  # int64, best first
    scores: np.ndarray  # float32 inner products


def live_mask(segment: Segment, tomb_ids: np.ndarray, tomb_seqs: np.ndarray) -> np.ndarray | None:
    """Rows of `segment` not hidden by a tombstone of a later commit; None when all are live."""
    if len(tomb_ids) == 0 or len(segment) == 0:
        return None
    pos = np.minimum(np.searchsorted(tomb_ids, segment.ids), len(tomb_ids) - 1)
    dead = (tomb_ids[pos] == segment.ids) & (tomb_seqs[pos] > segment.seq)
    return ~dead if dead.any() else None


def _scores(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    if vectors.size >= TORCH_SCAN_FLOATS:
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # read-only mapping: torch warns, we never write to it
            matrix = torch.from_numpy(vectors)
        with torch.inference_mode():
            return (torch.from_numpy(queries) @ matrix.T).numpy()
    # Small segments: a plain C loop. numpy's BLAS would start its own thread team, which on a
    # busy host costs tens of milliseconds (measured) and competes with the encoders' threads.
    return np.einsum("qd,nd->qn", queries, vectors)


class SegmentedIndex:
    def __init__(self, name: str, dim: int, kind: str, segments: tuple[Segment, ...],
                 masks: tuple[np.ndarray | None, ...], graphs: dict[str, object] | None = None):
        self.name = name
        self.dim = dim
        self.kind = kind
        self.segments = segments
        self.masks = masks
        self._graphs = graphs if graphs is not None else {}
        self._count = sum(len(s) if m is None else int(m.sum()) for s, m in zip(segments, masks, strict=True))
        self.ef_search = 64
        self._parts_built: tuple[tuple[Segment, np.ndarray | None], ...] | None = None

    @property
    def _parts(self) -> tuple[tuple[Segment, np.ndarray | None], ...]:
        if self._parts_built is None:  # built by prepare(), in the refresh thread; idempotent
            self._parts_built = self._search_parts()
        return self._parts_built

    def _search_parts(self) -> tuple[tuple[Segment, np.ndarray | None], ...]:
        """What searches and lookups walk: the large segments as they are (mapped, shared), and
        the live rows of all small ones merged into one in-memory block."""
        parts: list[tuple[Segment, np.ndarray | None]] = []
        small: list[tuple[Segment, np.ndarray | None]] = []
        for segment, mask in zip(self.segments, self.masks, strict=True):
            merge = len(segment) <= TAIL_ROWS and not self._has_graph(segment)
            (small if merge else parts).append((segment, mask))
        if len(small) == 1:
            parts.extend(small)
        elif small:
            ids = np.concatenate([np.asarray(s.ids) if m is None else np.asarray(s.ids)[m] for s, m in small])
            vectors = np.concatenate([np.asarray(s.vectors) if m is None else np.asarray(s.vectors)[m] for s, m in small])
            vectors = vectors.reshape(len(ids), self.dim)
            # Only live rows are kept, and at most one row per id is live, so ids are unique.
            tail = Segment(TAIL_FILE, max(s.seq for s, _ in small), ids, vectors, np.argsort(ids, kind="stable"))
            parts.append((tail, None))
        return tuple(parts)

    def __len__(self) -> int:
        return self._count

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, int | np.integer) and bool(self._locate(np.array([item_id], np.int64))[0][0] >= 0)

    def ids(self) -> np.ndarray:
        parts = [np.asarray(s.ids) if m is None else np.asarray(s.ids)[m] for s, m in self._parts]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def _locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment index, row) of each live id; -1 where absent. Newer segments win."""
        seg_of = np.full(len(ids), -1, np.int64)
        row_of = np.full(len(ids), -1, np.int64)
        for index, (segment, mask) in enumerate(self._parts):
            rows = segment.rows_of(ids)
            found = rows >= 0
            if mask is not None:
                found &= mask[np.maximum(rows, 0)]
            seg_of[found] = index
            row_of[found] = rows[found]
        return seg_of, row_of

    def vectors(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """Vectors of ids that are all live (callers check membership)."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros((len(ids), self.dim), np.float32)
        seg_of, row_of = self._locate(ids)
        if (seg_of < 0).any():
            raise KeyError(f"{self.name}: ids {ids[seg_of < 0][:5].tolist()} are not stored")
        for index in np.unique(seg_of):
            pick = seg_of == index
            out[pick] = self._parts[index][0].vectors[row_of[pick]]
        return out

    def _graph(self, segment: Segment):  # noqa: ANN202 - faiss index
        graph = self._graphs.get(segment.file)
        if graph is None:
            from flashfit_server.graphs import shared_graph

            with _graph_lock:
                graph = self._graphs.get(segment.file)
                if graph is None:
                    graph = shared_graph(segment, self.dim)  # mapped from segments/*.hnsw, shared
                    self._graphs[segment.file] = graph
        return graph

    def _has_graph(self, segment: Segment) -> bool:
        return self.kind == "hnsw" and len(segment) >= HNSW_MIN_ROWS and segment.file != TAIL_FILE

    def prepare(self) -> None:
        """Build what searches need (the merged small segments, HNSW graphs) before this index
        is swapped in, so no request pays for it."""
        _ = self._parts
        for segment in self.segments:
            if self._has_graph(segment):
                self._graph(segment)

    def search(self, queries: np.ndarray, k: int) -> list[SearchHits]:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k, len(self))
        if k <= 0:
            return [SearchHits(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(len(queries))]
        all_ids, all_scores = [], []
        for segment, mask in self._parts:
            if len(segment) == 0:
                continue
            if self._has_graph(segment):
                ids, scores = self._search_graph(segment, mask, queries, k)
            else:
                scores = _scores(segment.vectors, queries)
                if mask is not None:
                    scores[:, ~mask] = -np.inf
                take = min(k, scores.shape[1])
                rows = np.argpartition(-scores, take - 1, axis=1)[:, :take]
                scores = np.take_along_axis(scores, rows, axis=1)
                ids = np.asarray(segment.ids)[rows]
            all_ids.append(ids)
            all_scores.append(scores)
        ids = np.concatenate(all_ids, axis=1)
        scores = np.concatenate(all_scores, axis=1)
        hits = []
        for row_ids, row_scores in zip(ids, scores, strict=True):
            keep = np.isfinite(row_scores) & (row_ids >= 0)
            row_ids, row_scores = row_ids[keep], row_scores[keep]
            order = np.lexsort((row_ids, -row_scores))[:k]  # best first, equal scores by id
            hits.append(SearchHits(row_ids[order].astype(np.int64), row_scores[order].astype(np.float32)))
        return hits

    def _search_graph(self, segment: Segment, mask: np.ndarray | None, queries: np.ndarray, k: int):  # noqa: ANN202
        graph = self._graph(segment)
        dead = 0 if mask is None else int(len(mask) - mask.sum())
        fetch = min(len(segment), k + dead)
        graph.hnsw.efSearch = max(self.ef_search, fetch)
        scores, rows = graph.search(queries, fetch)
        valid = rows >= 0
        if mask is not None:
            valid &= mask[np.maximum(rows, 0)]
        ids = np.where(valid, np.asarray(segment.ids)[np.maximum(rows, 0)], -1)
        return ids, np.where(valid, scores, -np.inf).astype(np.float32)

    def graphs(self) -> dict[str, object]:
        return self._graphs
