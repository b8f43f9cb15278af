"""Kill a real writer process at random moments and check the folder it leaves behind."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from flashfit_server.datastore import STORE_NAMES, DataStore
from flashfit_contract.datafolder import validate_data_folder

DIMS = {"clip": 64, "blip": 64, "fashion": 32}

WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from pathlib import Path
    from flashfit_server.datastore import DataStore, NewItem
    from flashfit_server.storebench import random_unit_vectors

    dims = {"clip": 64, "blip": 64, "fashion": 32}
    store = DataStore(Path(sys.argv[1]), refresh_interval=0.0)
    store.open(dims)
    seed = int(sys.argv[2])
    while True:
        batch = []
        for _ in range(200):  # big saves widen the window a kill can land in
            seed += 1
            vectors = {n: random_unit_vectors(1, d, seed)[0] for n, d in dims.items()}
            batch.append(NewItem(b"x", "png", vectors, name=str(seed), caption=""))
        items = store.add_items(batch)
        if items[0].id % 3 == 0:
            store.delete_item(items[0].id)
        print(items[-1].id, flush=True)
    """
)


def test_random_kills_never_leave_a_mismatched_pair(tmp_path: Path) -> None:
    rng = random.Random(1234)
    total_seen = 0
    for round_number in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(round_number * 1_000_000)],
            stdout=subprocess.PIPE, text=True,
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # at least one commit happened in this round
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        validate_data_folder(tmp_path)  # every segment the manifest names matches its size and sha256
        store = DataStore(tmp_path, refresh_interval=0.0)
        store.open(DIMS)
        with store.read() as state:
            listed = set(state.catalog.items)
            for name in STORE_NAMES:
                assert listed <= set(state.stores[name].ids().tolist())
            assert len(listed) >= total_seen
            total_seen = len(listed)
    assert total_seen > 0


COMPACTING_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from flashfit_server.datastore import DataStore, NewItem
    from flashfit_server.storebench import random_unit_vectors

    dims = {"clip": 64, "blip": 64, "fashion": 32}
    store = DataStore(Path(sys.argv[1]), refresh_interval=0.0, compact_in_background=False)
    store.open(dims, background=False)
    seed = int(sys.argv[2])
    while True:
        for _ in range(4):
            seed += 1
            vectors = {n: random_unit_vectors(1, d, seed)[0] for n, d in dims.items()}
            [item] = store.add_items([NewItem(b"x", "png", vectors, name=str(seed), caption="")])
            print("acked", item.id, flush=True)
            if item.id % 3 == 0:
                print("deleting", item.id - 1, flush=True)
                store.delete_item(item.id - 1)
        store.compact(full=True)
        print("compacted", flush=True)
    """
)


def test_random_kills_during_compaction_lose_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(99)
    acked: set[int] = set()
    deleted: set[int] = set()
    for round_number in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", COMPACTING_WRITER, str(tmp_path), str(round_number * 1_000_000)],
            stdout=subprocess.PIPE, text=True,
        )
        assert proc.stdout is not None
        lines = []
        while not lines or lines[-1] != "compacted":  # at least one compaction per round
            lines.append(proc.stdout.readline().strip())
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        for line in lines + proc.stdout.read().splitlines():
            if line.startswith("acked "):
                acked.add(int(line.split()[1]))
            elif line.startswith("deleting "):
                deleted.add(int(line.split()[1]))
        validate_data_folder(tmp_path)
        store = DataStore(tmp_path, refresh_interval=0.0, compact_in_background=False)
        store.open(DIMS, background=False)
        with store.read() as state:
            listed = set(state.catalog.items)
            for name in STORE_NAMES:
                assert listed <= set(state.stores[name].ids().tolist())
        assert acked - deleted <= listed  # every acknowledged add that was not deleted survived
        store.close()
    assert len(acked) > 20


SINGLE_ADDS = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from flashfit_server.datastore import DataStore, NewItem
    from flashfit_server.storebench import random_unit_vectors

    dims = {"clip": 64, "blip": 64, "fashion": 32}
    store = DataStore(Path(sys.argv[1]), refresh_interval=0.0, compact_in_background=False)  # no fsync per commit
    store.open(dims, background=False)
    seed = int(sys.argv[2])
    while True:
        seed += 1
        vectors = {n: random_unit_vectors(1, d, seed)[0] for n, d in dims.items()}
        [item] = store.add_items([NewItem(seed.to_bytes(8, "big"), "png", vectors, name=str(seed), caption="")])
        print(item.id, seed, flush=True)
    """
)


def test_random_kills_of_unsynced_single_adds_lose_nothing_acknowledged(tmp_path: Path) -> None:
    """The server's commit path (one item per commit, no fsync): a SIGKILL right after an
    acknowledgement keeps that item, its vectors and its image bytes, and shows no partial one."""
    rng = random.Random(7)
    acked: dict[int, int] = {}
    for round_number in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", SINGLE_ADDS, str(tmp_path), str(round_number * 1_000_000)],
            stdout=subprocess.PIPE, text=True,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline().split()
        acked[int(first[0])] = int(first[1])
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        for line in proc.stdout.read().splitlines():
            item_id, seed = line.split()
            acked[int(item_id)] = int(seed)
        validate_data_folder(tmp_path)
        store = DataStore(tmp_path, refresh_interval=0.0, compact_in_background=False)
        store.open(DIMS, background=False)
        with store.read() as state:
            listed = set(state.catalog.items)
            assert set(acked) <= listed
            for name in STORE_NAMES:
                assert listed <= set(state.stores[name].ids().tolist())
            for item_id in listed:
                item = state.catalog.items[item_id]
                assert store.image_path(item).read_bytes() == int(item.name).to_bytes(8, "big")
        store.close()
    assert len(acked) > 6
