"""Candidate retrieval and fused scoring over one consistent data state.

Candidates are the union of each store's top-K for that store's query vector (or, with a user
filter, all of that user's items, scored exactly). Every candidate then gets all three scores as
exact inner products with its stored vectors, so a candidate found by one model is still judged
by the other two.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from flashfit_server.datastore import STORE_NAMES, DataState
from flashfit_server.fusion import Weights

MIN_CANDIDATES_PER_STORE = 32
# Below this many vectors a search takes well under a millisecond, less than handing it to
# another thread costs; above it, the three searches overlap.
PARALLEL_SEARCH_MIN_VECTORS = 20_000

# faiss releases the GIL, so the three store searches can overlap.
_search_pool = ThreadPoolExecutor(max_workers=len(STORE_NAMES), thread_name_prefix="search")


@dataclass(frozen=True)
class Ranked:
    item_id: int
    scores: dict[str, float]
    fusion_score: float


@dataclass(frozen=True)
class Ranking:
    results: list[Ranked]
    total_candidates: int


def per_store_k(limit: int) -> int:
    return max(2 * limit, MIN_CANDIDATES_PER_STORE)


def gather_candidates(state: DataState, queries: Mapping[str, np.ndarray], k: int, exclude: set[int]) -> np.ndarray:
    def search(name: str) -> np.ndarray:
        return state.stores[name].search(queries[name], k + len(exclude))[0].ids

    if sum(len(store) for store in state.stores.values()) >= PARALLEL_SEARCH_MIN_VECTORS:
        found = list(_search_pool.map(search, STORE_NAMES))
    else:
        found = [search(name) for name in STORE_NAMES]
    union = {int(i) for ids in found for i in ids.tolist()} - exclude
    # Vectors not in the catalogue are uncommitted leftovers of an interrupted add.
    return np.array(sorted(state.catalog.present(union)), dtype=np.int64)


def score_candidates(
    state: DataState, queries: Mapping[str, np.ndarray], ids: np.ndarray, weights: Weights, limit: int
) -> list[Ranked]:
    if len(ids) == 0:
        return []
    per_model = {name: state.stores[name].vectors(ids) @ queries[name] for name in STORE_NAMES}
    fused = sum(weights[name] * per_model[name] for name in STORE_NAMES)
    order = np.lexsort((ids, -fused))[:limit]  # best first; ties broken by id for stable output
    return [
        Ranked(
            item_id=int(ids[i]),
            scores={name: float(per_model[name][i]) for name in STORE_NAMES},
            fusion_score=float(fused[i]),
        )
        for i in order
    ]


def rank(
    state: DataState,
    queries: Mapping[str, np.ndarray],
    weights: Weights,
    limit: int,
    exclude: set[int] | None = None,
    user_id: str | None = None,
) -> Ranking:
    exclude = exclude or set()
    queries = {name: np.asarray(q, dtype=np.float32).reshape(-1) for name, q in queries.items()}
    if user_id is not None:
        ids = np.array(
            sorted(i for i in state.catalog.ids_for_user(user_id) if i not in exclude), dtype=np.int64
        )
    else:
        ids = gather_candidates(state, queries, per_store_k(limit), exclude)
    return Ranking(score_candidates(state, queries, ids, weights, limit), total_candidates=len(ids))
