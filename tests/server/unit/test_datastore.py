from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from flashfit_server import atomic
from flashfit_server.datastore import STORE_NAMES, DataStore, FusionState, NewItem, NotFound
from flashfit_server.storebench import random_unit_vectors

DIMS = {"clip": 8, "blip": 8, "fashion": 4}


def new_item(seed: int, user: str | None = None) -> NewItem:
    vectors = {name: random_unit_vectors(1, dim, seed)[0] for name, dim in DIMS.items()}
    return NewItem(b"\x89PNG fake", "png", vectors, name=f"item{seed}", caption=f"caption {seed}", user_id=user)


def open_store(folder: Path, refresh: float = 0.0) -> DataStore:
    store = DataStore(folder, refresh_interval=refresh)
    store.open(DIMS)
    return store


def assert_consistent(folder: Path) -> DataStore:
    """A fresh reader loads every pair (sha verified) and sees every listed item in every store."""
    store = open_store(folder)
    with store.read() as state:
        for item_id in state.catalog.items:
            assert all(item_id in state.stores[n] for n in STORE_NAMES)
    return store


def test_items_get_stable_increasing_ids_and_survive_a_restart(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    first = store.add_items([new_item(1), new_item(2)])
    second = store.add_items([new_item(3)])
    assert [i.id for i in first + second] == [1, 2, 3]
    reopened = assert_consistent(tmp_path)
    assert reopened.sizes() == {"clip": 3, "blip": 3, "fashion": 3}
    with reopened.read() as state:
        assert state.catalog.items[3].caption == "caption 3"


def test_delete_removes_item_vectors_and_image(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    [item] = store.add_items([new_item(1)])
    assert (tmp_path / "images" / item.image_file).exists()
    store.delete_item(item.id)
    assert store.sizes() == {"clip": 0, "blip": 0, "fashion": 0}
    assert not (tmp_path / "images" / item.image_file).exists()
    with pytest.raises(NotFound):
        store.delete_item(item.id)


def test_a_change_by_one_worker_is_seen_by_another(tmp_path: Path) -> None:
    writer, reader = open_store(tmp_path, refresh=0.2), open_store(tmp_path, refresh=0.2)
    with reader.read() as state:
        assert not state.catalog.items
    writer.add_items([new_item(1)])
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        with reader.read() as state:
            if 1 in state.catalog.items:
                break
        time.sleep(0.05)
    with reader.read() as state:
        assert 1 in state.catalog.items and 1 in state.stores["clip"]


def test_two_writers_never_lose_each_others_items(tmp_path: Path) -> None:
    a, b = open_store(tmp_path, refresh=10.0), open_store(tmp_path, refresh=10.0)
    a.add_items([new_item(1)])
    b.add_items([new_item(2)])  # b had not refreshed: the transaction must catch up first
    a.add_items([new_item(3)])
    store = assert_consistent(tmp_path)
    with store.read() as state:
        assert sorted(state.catalog.items) == [1, 2, 3]


def test_fusion_weights_persist(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.update_fusion(lambda f: FusionState({"clip": 0.5, "blip": 0.25, "fashion": 0.25}, f.liked + 1, 0))
    with open_store(tmp_path).read() as state:
        assert state.fusion.weights["clip"] == pytest.approx(0.5) and state.fusion.liked == 1


# Every step of an add in the segmented store: image, each store's segment, the manifest (the
# vectors' commit point), the catalogue row (the item's commit point), and after it.
FAULT_POINTS = [
    "before-rename:1.png",
    "before-rename:clip-",
    "between-segment-and-manifest:blip",
    "before-rename:fashion-",
    "before-rename:manifest.json",
    "before-commit:catalog",
    "after-commit:catalog",
]


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_a_crash_at_any_step_of_an_add_leaves_a_consistent_folder(tmp_path: Path, point: str) -> None:
    open_store(tmp_path).add_items([new_item(0)])  # item 0 -> id 1
    crashing = open_store(tmp_path)

    def crash(step: str) -> None:
        if step.startswith(point.replace("1.png", "2.png")):
            raise KeyboardInterrupt(step)

    atomic.set_fault_hook(crash)
    try:
        with pytest.raises(KeyboardInterrupt):
            crashing.add_items([new_item(1)])
    finally:
        atomic.set_fault_hook(None)
    survivor = assert_consistent(tmp_path)
    with survivor.read() as state:
        visible = sorted(state.catalog.items)
    # Only a crash after the catalogue row was committed may keep the new item; it is complete if so.
    assert visible == ([1, 2] if point == "after-commit:catalog" else [1])
    [after] = survivor.add_items([new_item(2)])
    assert after.id == visible[-1] + 1
    assert_consistent(tmp_path)


def test_vectors_of_an_uncommitted_add_are_pruned_before_the_next_write(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.add_items([new_item(0)])
    atomic.set_fault_hook(lambda step: (_ for _ in ()).throw(KeyboardInterrupt()) if step == "before-commit:catalog" else None)
    try:
        with pytest.raises(KeyboardInterrupt):
            store.add_items([new_item(1)])
    finally:
        atomic.set_fault_hook(None)
    fresh = open_store(tmp_path)
    assert fresh.sizes()["clip"] == 2  # the orphan vector is on disk, invisible
    with fresh.read() as state:
        assert sorted(state.catalog.items) == [1]
    fresh.add_items([new_item(5)])  # reuses id 2 after pruning the orphan
    with open_store(tmp_path).read() as state:
        assert sorted(state.catalog.items) == [1, 2] and len(state.stores["clip"]) == 2
        np.testing.assert_allclose(state.stores["fashion"].vectors([2])[0], new_item(5).vectors["fashion"], atol=1e-6)
