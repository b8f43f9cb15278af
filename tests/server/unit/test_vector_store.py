from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flashfit_server import atomic, vector_store
from flashfit_server.storebench import random_unit_vectors
from flashfit_server.vector_store import StoreError, VectorStore


@pytest.fixture(params=["flat", "hnsw"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def _filled(kind: str, n: int = 200, dim: int = 16) -> tuple[VectorStore, np.ndarray, np.ndarray]:
    store = VectorStore("clip", dim, kind)  # type: ignore[arg-type]
    vectors = random_unit_vectors(n, dim, seed=3)
    ids = np.arange(1, n + 1, dtype=np.int64) * 7  # sparse, stable ids
    store.add(ids, vectors)
    return store, ids, vectors


def test_search_finds_the_vector_itself_first(kind: str) -> None:
    store, ids, vectors = _filled(kind)
    hits = store.search(vectors[10], 5)[0]
    assert hits.ids[0] == ids[10]
    assert hits.scores[0] == pytest.approx(1.0, abs=1e-5)
    assert list(hits.scores) == sorted(hits.scores, reverse=True)


def test_vectors_come_back_by_id(kind: str) -> None:
    store, ids, vectors = _filled(kind)
    np.testing.assert_allclose(store.vectors(ids[[5, 0, 99]]), vectors[[5, 0, 99]], atol=1e-6)


def test_remove_deletes_the_vector_and_keeps_other_ids(kind: str) -> None:
    store, ids, vectors = _filled(kind)
    assert store.remove([int(ids[10]), 999_999]) == 1
    assert len(store) == len(ids) - 1
    assert int(ids[10]) not in store
    assert int(ids[10]) not in store.search(vectors[10], 20)[0].ids
    np.testing.assert_allclose(store.vectors([ids[11]]), vectors[[11]], atol=1e-6)


def test_duplicate_ids_are_refused(kind: str) -> None:
    store, ids, vectors = _filled(kind, n=5)
    with pytest.raises(ValueError):
        store.add(ids[:1], vectors[:1])


def test_save_and_load_round_trip(tmp_path: Path, kind: str) -> None:
    store, ids, vectors = _filled(kind)
    meta = store.save(tmp_path, generation=1)
    loaded = VectorStore.load(tmp_path, "clip", 16, kind)  # type: ignore[arg-type]
    assert len(loaded) == len(store) and loaded.kind == kind
    assert meta["index_file"] in {p.name for p in tmp_path.glob("*.index")}
    np.testing.assert_allclose(loaded.vectors(ids[:3]), vectors[:3], atol=1e-6)


def test_kind_can_change_between_runs(tmp_path: Path) -> None:
    store, ids, _ = _filled("flat")
    store.save(tmp_path, 1)
    loaded = VectorStore.load(tmp_path, "clip", 16, "hnsw")
    assert loaded.kind == "hnsw" and sorted(loaded.ids().tolist()) == sorted(ids.tolist())


def test_a_tampered_index_file_is_refused(tmp_path: Path) -> None:
    store, _, _ = _filled("flat")
    meta = store.save(tmp_path, 1)
    path = tmp_path / meta["index_file"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="sha256"):
        VectorStore.load(tmp_path, "clip", 16)


def _replace_index(folder: Path, index: object, **meta_changes: object) -> None:
    """Write `index` as the committed file, with a size and sha256 that match it (not tampered)."""
    import faiss

    meta_path = folder / "clip.json"
    meta = json.loads(meta_path.read_text())
    data = faiss.serialize_index(index).tobytes()
    (folder / meta["index_file"]).write_bytes(data)
    meta.update(size=len(data), sha256=atomic.sha256_bytes(data), **meta_changes)
    meta_path.write_text(json.dumps(meta))


def test_an_index_file_without_an_id_map_is_refused(tmp_path: Path) -> None:
    import faiss

    _filled("flat")[0].save(tmp_path, 1)
    _replace_index(tmp_path, faiss.IndexFlatIP(16))
    with pytest.raises(StoreError, match="not an id-mapped index"):
        VectorStore.load(tmp_path, "clip", 16)


def test_an_index_of_another_kind_than_recorded_is_refused(tmp_path: Path) -> None:
    """A flat index recorded as hnsw: searching names the mismatch instead of an AttributeError."""
    store, _, vectors = _filled("flat")
    store.save(tmp_path, 1)
    _replace_index(tmp_path, store.index, kind="hnsw")
    loaded = VectorStore.load(tmp_path, "clip", 16, "hnsw")
    with pytest.raises(StoreError, match="recorded as hnsw but its index is of class IndexFlatIP"):
        loaded.search(vectors[0], 3)


def test_a_dimension_change_is_refused(tmp_path: Path) -> None:
    _filled("flat")[0].save(tmp_path, 1)
    with pytest.raises(StoreError, match="re-ingest"):
        VectorStore.load(tmp_path, "clip", 32)


@pytest.mark.parametrize("step", ["before-rename:clip-", "between-index-and-json:clip", "before-rename:clip.json"])
def test_a_crash_at_any_step_leaves_the_previous_matching_pair(tmp_path: Path, step: str) -> None:
    store, _, _ = _filled("flat", n=10)
    store.save(tmp_path, 1)

    def crash(point: str) -> None:
        if point.startswith(step):
            raise KeyboardInterrupt(point)  # stands in for a kill: nothing after it runs

    store.add([10_000], random_unit_vectors(1, 16, seed=9))
    atomic.set_fault_hook(crash)
    try:
        with pytest.raises(KeyboardInterrupt):
            store.save(tmp_path, 2)
    finally:
        atomic.set_fault_hook(None)
    loaded = VectorStore.load(tmp_path, "clip", 16)
    assert len(loaded) == 10 and 10_000 not in loaded
    meta = json.loads((tmp_path / "clip.json").read_text())
    assert meta["count"] == 10
    # The next save cleans up what the interrupted one left behind.
    store.save(tmp_path, 3)
    assert [p.name for p in tmp_path.glob("*.index")] == [json.loads((tmp_path / "clip.json").read_text())["index_file"]]
    assert not list(tmp_path.glob(".*.tmp"))


def test_empty_store_search_returns_nothing() -> None:
    store = VectorStore("blip", 8)
    assert len(store.search(np.ones(8, np.float32), 5)[0].ids) == 0


@pytest.mark.parametrize("count", [2, 9, 10, 11, 300])
def test_flat_single_queries_match_faiss_exactly(count: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer than FEW_QUERIES queries take torch's path: same ids, order and scores as faiss."""
    monkeypatch.setattr(vector_store, "TORCH_SCAN_FLOATS", 0)  # every size, not only large stores
    store, ids, vectors = _filled("flat", n=count)
    store.remove([int(ids[0])])  # a removal compacts the storage and the id map together
    queries = random_unit_vectors(3, 16, seed=11)
    for k in (1, 5, 10, 50):
        expected_scores, expected_ids = store.index.search(queries, min(k, len(store)))  # faiss itself
        for row, hits in enumerate(store.search(queries, k)):
            assert hits.ids.tolist() == expected_ids[row].tolist()
            np.testing.assert_allclose(hits.scores, expected_scores[row], rtol=1e-5, atol=1e-6)


def test_flat_ties_keep_storage_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vector_store, "TORCH_SCAN_FLOATS", 0)
    store = VectorStore("clip", 4)
    same = np.array([[1.0, 0.0, 0.0, 0.0]] * 3 + [[0.0, 1.0, 0.0, 0.0]], dtype=np.float32)
    store.add(np.array([30, 10, 20, 40]), same)
    assert store.search(same[0], 3)[0].ids.tolist() == [30, 10, 20]
