"""The segmented data folder: what a commit writes, what a compaction does, what a tampered or
old-format folder gives."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from flashfit_server import atomic, compaction, graphs, segmented
from flashfit_server.catalog import Item
from flashfit_contract.datafolder import DataFolderError, validate_data_folder
from flashfit_server.datastore import STORE_NAMES, DataStore, NewItem
from flashfit_server.storebench import random_unit_vectors

DIMS = {"clip": 8, "blip": 8, "fashion": 4}


def new_item(seed: int) -> NewItem:
    vectors = {name: random_unit_vectors(1, dim, seed)[0] for name, dim in DIMS.items()}
    return NewItem(b"\x89PNG fake", "png", vectors, name=f"item{seed}", caption=f"caption {seed}")


def open_store(folder: Path, kind: str = "flat") -> DataStore:
    store = DataStore(folder, kind=kind, refresh_interval=0.0, compact_in_background=False)
    store.open(DIMS, background=False)
    return store


def files(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in (folder / "segments").iterdir()}


def top(store: DataStore, name: str, query: np.ndarray, k: int = 5) -> list[int]:
    with store.read() as state:
        return state.stores[name].search(query, k)[0].ids.tolist()


def test_a_commit_writes_one_small_segment_per_store_and_touches_no_other(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    for seed in range(5):
        store.add_items([new_item(seed)])
    before = files(tmp_path)
    store.add_items([new_item(99)])
    after = files(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing rewritten
    added = sorted(set(after) - set(before))
    assert [a.split("-")[0] for a in added] == ["segments/blip", "segments/clip", "segments/fashion"]
    assert all((tmp_path / a).stat().st_size < 200 for a in added)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["generation"] == 6 and len(manifest["stores"]["clip"]) == 6


def test_delete_is_a_tombstone_that_hides_the_vector_everywhere(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.add_items([new_item(s) for s in range(4)])
    store.delete_item(2)
    assert json.loads((tmp_path / "manifest.json").read_text())["tombstones"] == [[2, 2]]
    reader = open_store(tmp_path)
    for name in STORE_NAMES:
        with reader.read() as state:
            assert 2 not in state.stores[name] and len(state.stores[name]) == 3
            assert 2 not in top(reader, name, new_item(1).vectors[name], 4)


def test_compaction_merges_segments_drops_tombstones_and_keeps_every_answer(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    for seed in range(12):
        store.add_items([new_item(seed)])
    for item_id in (3, 7):
        store.delete_item(item_id)
    reader = open_store(tmp_path)
    query = new_item(5).vectors["clip"]
    expected = top(store, "clip", query, 10)
    old_files = set(files(tmp_path))
    assert store.compact(full=True)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert {name: len(manifest["stores"][name]) for name in STORE_NAMES} == {"clip": 1, "blip": 1, "fashion": 1}
    assert manifest["tombstones"] == []
    assert not (old_files & set(files(tmp_path)))  # replaced segments are gone from disk
    assert top(store, "clip", query, 10) == expected
    assert reader.refresh() and top(reader, "clip", query, 10) == expected  # the mapped old files still answer
    with open_store(tmp_path).read() as state:
        assert sorted(state.catalog.items) == [i for i in range(1, 13) if i not in (3, 7)]
        assert len(state.stores["fashion"]) == 10


def test_the_policy_leaves_a_big_base_alone_and_merges_the_small_ones() -> None:
    def index(sizes: list[int]) -> segmented.SegmentedIndex:
        segs = tuple(type("S", (), {"__len__": lambda self, n=n: n, "ids": np.zeros(n)})() for n in sizes)
        return segmented.SegmentedIndex("clip", 4, "flat", segs, tuple(None for _ in sizes))  # type: ignore[arg-type]

    assert compaction.choose(index([100] * 8)) == []
    assert compaction.choose(index([1000] + [1] * 8)) == list(range(1, 9))
    assert compaction.choose(index([10] * 9)) == list(range(9))


@pytest.mark.parametrize("point", ["compaction-before-swap", "before-rename:manifest.json", "before-rename:clip-"])
def test_a_crash_during_compaction_loses_nothing(tmp_path: Path, point: str) -> None:
    store = open_store(tmp_path)
    for seed in range(6):
        store.add_items([new_item(seed)])
    store.delete_item(4)
    atomic.set_fault_hook(lambda step: (_ for _ in ()).throw(KeyboardInterrupt()) if step.startswith(point) else None)
    try:
        with pytest.raises(KeyboardInterrupt):
            store.compact(full=True)
    finally:
        atomic.set_fault_hook(None)
    validate_data_folder(tmp_path)
    fresh = open_store(tmp_path)
    with fresh.read() as state:
        assert sorted(state.catalog.items) == [1, 2, 3, 5, 6]
        assert all(len(state.stores[n]) == 5 for n in STORE_NAMES)
    assert fresh.compact(full=True)  # and the debris of the crash is cleaned up
    validate_data_folder(tmp_path)
    assert len(list((tmp_path / "segments").iterdir())) == 3


def test_hnsw_serves_new_vectors_from_flat_side_segments_until_compaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segmented, "HNSW_MIN_ROWS", 50)
    store = open_store(tmp_path, kind="hnsw")
    store.add_items([new_item(s) for s in range(60)])  # one segment of 60: gets a graph
    [late] = store.add_items([new_item(1000)])  # a small side segment: scanned exactly
    with store.read() as state:
        assert len(state.stores["clip"].graphs()) == 1
    assert top(store, "clip", new_item(1000).vectors["clip"], 1) == [late.id]
    store.compact(full=True)
    with store.read() as state:
        assert len(state.stores["clip"].segments) == 1
    assert top(store, "clip", new_item(1000).vectors["clip"], 1) == [late.id]
    assert top(store, "clip", new_item(10).vectors["clip"], 1) == [11]


# --- untrusted folders -------------------------------------------------------------------------


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _write_manifest(folder: Path, data: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(data))


def _tampered(tmp_path: Path, change) -> str:  # noqa: ANN001
    store = open_store(tmp_path)
    store.add_items([new_item(1), new_item(2)])
    store.close()
    change(tmp_path)
    with pytest.raises(DataFolderError) as first:
        validate_data_folder(tmp_path)
    with pytest.raises((DataFolderError, ValueError)) as second:
        open_store(tmp_path)
    assert str(first.value) == str(second.value)
    return str(first.value)


def test_a_segment_whose_bytes_changed_is_refused(tmp_path: Path) -> None:
    def flip(folder: Path) -> None:
        path = folder / _manifest(folder)["stores"]["blip"][0]["file"]
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))

    assert "does not match the sha256" in _tampered(tmp_path, flip)


@pytest.mark.parametrize("bad_file", ["../../etc/passwd", "/etc/passwd", "segments/../../x.seg",
                                      "segments/clip-0000000001-0123456789abcdef.seg/../../../x"])
def test_a_manifest_naming_a_path_outside_the_folder_is_refused(tmp_path: Path, bad_file: str) -> None:
    def point_outside(folder: Path) -> None:
        data = _manifest(folder)
        data["stores"]["clip"][0]["file"] = bad_file
        _write_manifest(folder, data)

    reason = _tampered(tmp_path, point_outside)
    assert "stores.clip[0].file" in reason


@pytest.mark.parametrize("link", ["file", "folder"])
def test_a_segment_reached_through_a_link_leaving_the_folder_is_refused(tmp_path: Path, link: str) -> None:
    outside = tmp_path / "outside"
    data = tmp_path / "data"

    def link_out(folder: Path) -> None:
        outside.mkdir()
        if link == "file":  # the same bytes, so only the link itself is wrong
            path = folder / _manifest(folder)["stores"]["clip"][0]["file"]
            (outside / path.name).write_bytes(path.read_bytes())
            path.unlink()
            path.symlink_to(outside / path.name)
        else:
            (folder / "segments").rename(outside / "segments")
            (folder / "segments").symlink_to(outside / "segments")

    reason = _tampered(data, link_out)
    assert "stores.clip[0].file" in reason and ("link" in reason or "leaves the data folder" in reason)


@pytest.mark.parametrize(("field", "value"), [("generation", "1"), ("generation", True), ("tombstones", {"1": 2}),
                                               ("dims", {"clip": 8}), ("stores", [])])
def test_a_manifest_field_of_the_wrong_type_is_refused(tmp_path: Path, field: str, value: object) -> None:
    def set_field(folder: Path) -> None:
        data = _manifest(folder)
        data[field] = value
        _write_manifest(folder, data)

    assert field in _tampered(tmp_path, set_field)


@pytest.mark.parametrize("image_file", ["../../../etc/passwd", "/etc/shadow", "..", "a/../../b.png"])
def test_a_catalogue_naming_an_image_outside_images_is_refused(tmp_path: Path, image_file: str) -> None:
    def point_outside(folder: Path) -> None:
        with sqlite3.connect(folder / "catalog.sqlite3") as conn:
            conn.execute("UPDATE items SET image_file = ? WHERE id = 1", (image_file,))

    assert "items[1].image_file" in _tampered(tmp_path, point_outside)


def test_an_image_link_leaving_the_folder_is_refused(tmp_path: Path) -> None:
    def link_out(folder: Path) -> None:
        (folder / "images" / "1.png").unlink()
        (folder / "images" / "1.png").symlink_to("/etc/hostname")

    assert "leaves the data folder" in _tampered(tmp_path, link_out)


def test_the_image_path_of_a_hostile_row_is_refused_at_serve_time(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    [item] = store.add_items([new_item(1)])
    item.image_file = "../../../etc/passwd"
    with pytest.raises(DataFolderError):
        store.image_path(item)


def test_a_bad_manifest_arriving_while_open_keeps_the_old_state_and_names_the_problem(tmp_path: Path) -> None:
    writer, reader = open_store(tmp_path), open_store(tmp_path)
    writer.add_items([new_item(1)])
    data = _manifest(tmp_path)
    data["stores"]["clip"][0]["file"] = "../escape"
    _write_manifest(tmp_path, data)
    assert not reader.refresh()
    assert "leaves the data folder" in (reader.problem or "")
    with reader.read() as state:
        assert state.generation == 0  # still the state it had
    with pytest.raises(Exception, match="refusing to write"):
        reader.add_items([new_item(2)])


# --- the previous format -----------------------------------------------------------------------


def test_a_folder_of_the_previous_format_opens_and_migrates(tmp_path: Path) -> None:
    from flashfit_server.vector_store import VectorStore

    ids = np.array([1, 2, 4], dtype=np.int64)
    vectors = {name: random_unit_vectors(3, dim, seed=7) for name, dim in DIMS.items()}
    for name, dim in DIMS.items():
        store = VectorStore(name, dim)
        store.add(ids, vectors[name])
        store.save(tmp_path, 5)
    items = [Item(id=int(i), name=f"old{i}", caption=f"c{i}", image_file=f"{i}.png", tags=["a"]) for i in ids]
    (tmp_path / "items.json").write_text(json.dumps(
        {"format": 1, "next_id": 5, "items": [item.__dict__ for item in items]}))
    (tmp_path / "fusion.json").write_text(json.dumps({"weights": {"clip": 0.5, "blip": 0.25, "fashion": 0.25}, "liked": 3, "disliked": 1}))
    store = open_store(tmp_path)
    with store.read() as state:
        assert sorted(state.catalog.items) == [1, 2, 4]
        assert state.catalog.items[4].tags == ["a"] and state.fusion.liked == 3
        np.testing.assert_allclose(state.stores["fashion"].vectors([2, 4]), vectors["fashion"][1:], atol=1e-6)
    [new] = store.add_items([new_item(9)])
    assert new.id == 5
    validate_data_folder(tmp_path)


def test_a_previous_format_folder_naming_an_index_outside_is_refused(tmp_path: Path) -> None:
    (tmp_path / "clip.json").write_text(json.dumps({"index_file": "../../etc/passwd", "sha256": "0" * 64, "size": 1}))
    with pytest.raises(DataFolderError, match="clip.json: index_file"):
        open_store(tmp_path)


# --- refresh ---------------------------------------------------------------------------------------


def test_a_refresh_hashes_and_maps_only_the_new_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import flashfit_server.datastore as datastore_module

    writer, reader = open_store(tmp_path), open_store(tmp_path)
    for seed in range(10):
        writer.add_items([new_item(seed)])
    assert reader.refresh()
    writer.add_items([new_item(77)])
    writer.delete_item(3)
    verified: list[str] = []
    real = datastore_module.verify_segment
    monkeypatch.setattr(datastore_module, "verify_segment", lambda folder, entry: (verified.append(entry.file), real(folder, entry))[1])
    assert reader.refresh()
    assert sorted(f.split("-")[0] for f in verified) == ["segments/blip", "segments/clip", "segments/fashion"]
    with reader.read() as state:
        assert 11 in state.catalog.items and 3 not in state.stores["clip"] and len(state.stores["clip"]) == 10


def test_requests_never_wait_for_a_refresh_in_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    writer, reader = open_store(tmp_path), open_store(tmp_path)
    writer.add_items([new_item(1)])
    entered, release = threading.Event(), threading.Event()
    real_build = reader._build

    def slow_build(manifest, previous):  # noqa: ANN001, ANN202
        entered.set()
        release.wait(30)
        return real_build(manifest, previous)

    monkeypatch.setattr(reader, "_build", slow_build)
    refresher = threading.Thread(target=reader.refresh)
    refresher.start()
    assert entered.wait(30)
    with reader.read() as state:  # answered from the state it has, while the refresh is stuck
        assert state.generation == 0 and len(state.catalog.items) == 0
    release.set()
    refresher.join(30)
    with reader.read() as state:
        assert state.generation == 1 and sorted(state.catalog.items) == [1]


# --- HNSW graphs: stored once, mapped by every worker --------------------------------------------


def _graph_files(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "segments").glob("*.hnsw"))


def _mapped(path_part: str) -> bool:
    return any(path_part in line for line in Path("/proc/self/maps").read_text().splitlines())


def test_an_hnsw_graph_is_built_once_stored_beside_its_segment_and_mapped_by_every_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segmented, "HNSW_MIN_ROWS", 50)
    writer = open_store(tmp_path, kind="hnsw")
    writer.add_items([new_item(s) for s in range(60)])
    assert len(_graph_files(tmp_path)) == 3  # one per store, beside the segment it indexes
    builds: list[str] = []
    real_build = graphs.build
    monkeypatch.setattr(graphs, "build", lambda segment, dim: (builds.append(segment.file), real_build(segment, dim))[1])
    reader = open_store(tmp_path, kind="hnsw")  # another worker: maps the stored graphs
    assert builds == []
    assert all(_mapped(name) for name in _graph_files(tmp_path))
    query = new_item(7).vectors["clip"]
    assert top(reader, "clip", query, 3) == top(writer, "clip", query, 3) and top(reader, "clip", query, 1) == [8]
    writer.compact(full=True)  # a new merged segment: its graph replaces the old one
    names = _graph_files(tmp_path)
    with writer.read() as state:
        live = {e.file.split("/")[1][: -len(".seg")] for e in state.manifest.entries()}
    assert len(names) == 3 and {n[: -len(".hnsw")] for n in names} <= live


def _corrupt_neighbour(path: Path) -> None:
    """Point one neighbour id far outside the graph (found by its bytes in the file)."""
    import faiss

    graph = faiss.read_index(str(path))
    neighbours = faiss.vector_to_array(graph.hnsw.neighbors)
    data = bytearray(path.read_bytes())
    at = data.find(neighbours[:16].astype("<i4").tobytes())
    assert at > 0
    data[at : at + 4] = np.array([10**6], "<i4").tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["neighbour out of range", "another segment's graph", "not an index"])
def test_a_damaged_graph_file_is_rebuilt_never_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    monkeypatch.setattr(segmented, "HNSW_MIN_ROWS", 50)
    writer = open_store(tmp_path, kind="hnsw")
    writer.add_items([new_item(s) for s in range(60)])
    path = next((tmp_path / "segments").glob("clip-*.hnsw"))
    if damage == "neighbour out of range":
        _corrupt_neighbour(path)
    elif damage == "another segment's graph":
        import faiss

        other = faiss.IndexHNSWFlat(8, 32, faiss.METRIC_INNER_PRODUCT)
        other.add(random_unit_vectors(60, 8, seed=999))
        faiss.write_index(other, str(path))
    else:
        path.write_bytes(b"\x00" * 4096)
    with pytest.raises(graphs.GraphFileError):
        graphs.load(path, next(s for s in writer._state.stores["clip"].segments), 8)  # type: ignore[union-attr]
    reader = open_store(tmp_path, kind="hnsw")  # refuses the file, builds and stores a good one
    query = new_item(7).vectors["clip"]
    assert top(reader, "clip", query, 1) == [8]
    graphs.load(path, next(s for s in reader._state.stores["clip"].segments), 8)  # type: ignore[union-attr]
