"""Writes to the segmented data folder against catalogue size, side by side in one run.

For each size N (synthetic unit vectors, d=512 in all three stores, written as one base segment
per store and N catalogue rows in one transaction, as a compacted store holds them):
  add      p50/p99 of adding one item (store time: image, segments, manifest, catalogue row; no
           embedding) as the server commits (no fsync: SIGKILL-safe), the same adds with
           fsync_commits=True (power-loss durable) beside it, and for N <= 100k the previous
           format (every index serialised whole and items.json rewritten)
  seen     time until a second process (a worker, REFRESH_INTERVAL 0.2 s as the server's default)
           serves the new item (background refresh)
  reads    p99 of one recommend-style ranking (three searches, then scoring) in the worker, with
           no writes and while the first process adds 5 items/s, in alternating one-second
           windows (ratio: goal <= 1.5x)
  compact  a full compaction (the worst case: the base is rewritten too) in the writer while the
           worker ranks: failed rankings, p99 during
  pss      proportional set size (/proc/<pid>/smaps_rollup: a page shared by two processes counts
           half in each) of one worker holding
           the mapped stores, alone and with a second one: summed PSS of two / PSS of one (these
           workers hold no models, so the ratio is of the store-serving processes alone), and the
           PSS of the mapped segment files, which two workers share instead of doubling

  .venv/bin/python benchmarks/bench_store_writes.py                  # 1k, 10k, 100k, 1M
  .venv/bin/python benchmarks/bench_store_writes.py --sizes 1000,10000,100000
  .venv/bin/python benchmarks/bench_store_writes.py --quick          # 1k, 10k
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flashfit_server.catalog import CatalogDB, Item  # noqa: E402
from flashfit_contract.datafolder import CATALOG_NAME  # noqa: E402
from flashfit_server.datastore import STORE_NAMES, DataStore, NewItem  # noqa: E402
from flashfit_server.recommend import rank  # noqa: E402
from flashfit_server.storebench import percentile_ms, random_unit_vectors  # noqa: E402

DIM = 512
DIMS = dict.fromkeys(STORE_NAMES, DIM)
WEIGHTS = {"clip": 0.4, "blip": 0.3, "fashion": 0.3}
REFRESH_INTERVAL = 0.2  # the server's default (REFRESH_INTERVAL)


def bulk_load(folder: Path, n: int) -> None:
    """The catalogue a grown, compacted store has: one base segment per store (written straight
    to disk in one commit, fsynced so no dirty pages are left to slow the timed writes) and n
    catalogue rows inserted in one transaction."""
    from flashfit_server.atomic import write_json_atomic
    from flashfit_contract.datafolder import MANIFEST_NAME, Manifest, SegmentEntry
    from flashfit_server.segments import write_segment

    store = DataStore(folder, compact_in_background=False)
    store.open(DIMS, background=False)
    store.close()
    ids = np.arange(1, n + 1, dtype=np.int64)
    stores = {}
    for i, name in enumerate(STORE_NAMES):
        vectors = np.empty((n, DIM), np.float32)
        for first in range(0, n, 100_000):
            count = min(100_000, n - first)
            vectors[first : first + count] = random_unit_vectors(count, DIM, seed=first + i)
        stores[name] = (SegmentEntry(**write_segment(folder, name, 1, ids, vectors)),)
        del vectors
    db = CatalogDB(folder / CATALOG_NAME)
    conn = db.connect()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO items VALUES (?,?,?,?,?,?,?,?,?,?)",
                     (Item(id=i, name=f"item {i}", caption="", image_file=f"{i}.png").row(1) for i in range(1, n + 1)))
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('next_id', ?)", (str(n + 1),))
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('committed_seq', '1')")
    conn.execute("COMMIT")
    db.close()
    write_json_atomic(folder / MANIFEST_NAME, Manifest(1, dict(DIMS), stores, {}).to_json())


def new_item(seed: int) -> NewItem:
    return NewItem(b"\x89PNG" + bytes(2000), "png", {n: random_unit_vectors(1, DIM, seed)[0] for n in STORE_NAMES},
                   name=f"new {seed}", caption="")


def time_adds(folder: Path, count: int, fsync_commits: bool = False) -> list[float]:
    store = DataStore(folder, compact_in_background=False, fsync_commits=fsync_commits)
    store.open(DIMS, background=False)
    samples = []
    for seed in range(count):
        started = time.perf_counter()
        store.add_items([new_item(10_000_000 + seed)])
        samples.append(time.perf_counter() - started)
    store.close()
    return samples


def time_legacy_add(n: int, folder: Path) -> float:
    """The previous format's add: every faiss index serialised and written, items.json rewritten."""
    from flashfit_server.atomic import write_json_atomic
    from flashfit_server.vector_store import VectorStore

    stores = {}
    for i, name in enumerate(STORE_NAMES):
        stores[name] = VectorStore(name, DIM)
        stores[name].add(np.arange(1, n + 1), random_unit_vectors(n, DIM, seed=i))
    items = {"format": 1, "next_id": n + 1, "items": [{"id": i, "name": f"item {i}", "caption": "", "image_file": f"{i}.png",
                                                      "tags": [], "category": None, "color": None, "user_id": None,
                                                      "created_at": ""} for i in range(1, n + 1)]}
    started = time.perf_counter()
    for name, store in stores.items():
        store.add(np.array([n + 1]), random_unit_vectors(1, DIM, seed=99))
        store.save(folder, 2)
    items["items"].append({"id": n + 1, "name": "new"})
    write_json_atomic(folder / "items.json", items)
    return time.perf_counter() - started


# --- the worker process ------------------------------------------------------------------------


def worker(folder: str, commands: mp.Queue, answers: mp.Queue) -> None:
    import torch

    torch.set_num_threads(1)
    store = DataStore(Path(folder), refresh_interval=REFRESH_INTERVAL, compact_in_background=False)
    store.open(DIMS)
    queries = {n: random_unit_vectors(1, DIM, seed=5)[0] for n in STORE_NAMES}
    answers.put(("open", os.getpid()))
    while True:
        command, arg = commands.get()
        if command == "stop":
            return
        if command == "wait_for":  # poll until item `arg` is served; answer the wall-clock time
            while True:
                with store.read() as state:
                    if arg in state.catalog.items:
                        answers.put(("seen", time.time()))
                        break
                time.sleep(0.001)
        elif command == "rank":  # rank for `arg` seconds; answer latencies and failures
            samples, failures, deadline = [], 0, time.monotonic() + arg
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    with store.read() as state:
                        rank(state, queries, WEIGHTS, 10)
                except Exception:  # noqa: BLE001 - counted, that is the measurement
                    failures += 1
                samples.append(time.perf_counter() - started)
            answers.put(("ranked", (samples, failures)))
        elif command == "pss":
            answers.put(("pss", pss_kb(os.getpid())))


def pss_kb(pid: int) -> tuple[int, int]:
    """(whole process from smaps_rollup, mapped segment files from smaps) proportional set size
    in kB: a page shared by two processes counts half in each."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == "Pss:":
            total = int(fields[1])
    segments = 0
    in_segment = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            in_segment = len(fields) >= 6 and ".seg" in line  # "(deleted)": merged away, still mapped
        elif fields and fields[0] == "Pss:" and in_segment:
            segments += int(fields[1])
    return total, segments


class Worker:
    def __init__(self, folder: Path):
        ctx = mp.get_context("spawn")
        self.commands, self.answers = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(target=worker, args=(str(folder), self.commands, self.answers))
        self.proc.start()
        self.pid = self.ask(None)

    def ask(self, command: tuple | None, timeout: float = 600) -> object:
        if command is not None:
            self.commands.put(command)
        return self.answers.get(timeout=timeout)[1]

    def stop(self) -> None:
        self.commands.put(("stop", None))
        self.proc.join(30)


def adder(folder: Path, per_second: float, stop: threading.Event, writing: threading.Event) -> None:
    store = DataStore(folder, compact_in_background=False)
    store.open(DIMS, background=False)
    seed = 20_000_000
    while not stop.is_set():
        writing.wait()
        if stop.is_set():
            break
        started = time.monotonic()
        seed += 1
        store.add_items([new_item(seed)])
        stop.wait(max(0.0, 1.0 / per_second - (time.monotonic() - started)))
    store.close()


def measure(n: int, root: Path, adds: int, read_seconds: float) -> dict:
    folder = root / f"data-{n}"
    started = time.perf_counter()
    bulk_load(folder, n)
    load_s = time.perf_counter() - started
    row: dict = {"n": n, "load_s": round(load_s, 1)}
    add = time_adds(folder, adds)
    row["add_p50_ms"], row["add_p99_ms"] = percentile_ms(add, 50), percentile_ms(add, 99)
    synced = time_adds(folder, adds, fsync_commits=True)  # the same adds with power-loss fsyncs
    row["add_fsync_p50_ms"], row["add_fsync_p99_ms"] = percentile_ms(synced, 50), percentile_ms(synced, 99)
    if n <= 100_000:
        legacy = root / f"legacy-{n}"
        legacy.mkdir()
        row["legacy_add_ms"] = time_legacy_add(n, legacy) * 1000
    first = Worker(folder)
    try:
        store = DataStore(folder, compact_in_background=False)
        store.open(DIMS, background=False)
        seen = []
        for seed in range(5):
            [item] = store.add_items([new_item(30_000_000 + seed)])
            committed = time.time()
            seen.append(first.ask(("wait_for", item.id)) - committed)  # type: ignore[operator]
        row["seen_p50_ms"], row["seen_max_ms"] = percentile_ms(seen, 50), max(seen) * 1000
        # Quiet and writing windows of one second alternate (ABBA), so a change in the shared
        # host's load over the run falls on both sides alike.
        quiet: list[float] = []
        busy: list[float] = []
        failures = 0
        stop, writing = threading.Event(), threading.Event()
        writer = threading.Thread(target=adder, args=(folder, 5.0, stop, writing))
        writer.start()
        for window in range(2 * max(1, round(read_seconds))):
            busy_window = window % 4 in (1, 2)
            (writing.set if busy_window else writing.clear)()
            samples, failed = first.ask(("rank", 1.0))  # type: ignore[misc]
            (busy if busy_window else quiet).extend(samples)
            failures += failed
        stop.set()
        writing.set()
        writer.join()
        row["rank_p99_ms"], row["rank_p99_writing_ms"] = percentile_ms(quiet, 99), percentile_ms(busy, 99)
        row["rank_failures_writing"] = failures
        store.refresh(force=True)
        done = threading.Event()
        timing: dict[str, float] = {}

        def compact_now() -> None:
            started = time.perf_counter()
            store.compact(full=True)
            timing["s"] = time.perf_counter() - started
            done.set()

        compactor = threading.Thread(target=compact_now)
        compactor.start()
        during, failures = [], 0
        while not done.is_set():  # rank in one-second rounds for as long as the compaction runs
            samples, failed = first.ask(("rank", 1.0))  # type: ignore[misc]
            during += samples
            failures += failed
        compactor.join()
        row["compact_s"] = timing["s"]
        row["rank_p99_compacting_ms"], row["rank_failures_compacting"] = percentile_ms(during, 99), failures
        [item] = store.add_items([new_item(40_000_000)])
        first.ask(("wait_for", item.id))  # the worker has swapped in the compacted state
        store.close()
        first.ask(("rank", 1.0))  # and touched its pages, as serving does
        one_total, one_seg = first.ask(("pss", None))  # type: ignore[misc]
        second = Worker(folder)
        try:
            second.ask(("rank", 1.0))  # touch every mapped page, as serving does
            (a_total, a_seg), (b_total, b_seg) = first.ask(("pss", None)), second.ask(("pss", None))  # type: ignore[misc]
        finally:
            second.stop()
        row["pss_one_mb"], row["pss_two_mb"] = one_total / 1024, (a_total + b_total) / 1024
        row["pss_segments_one_mb"], row["pss_segments_two_mb"] = one_seg / 1024, (a_seg + b_seg) / 1024
    finally:
        first.stop()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--quick", action="store_true", help="1k and 10k only")
    parser.add_argument("--adds", type=int, default=100, help="single adds timed per size (each way)")
    parser.add_argument("--read-seconds", type=float, default=5.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [1000, 10_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-store-writes-") as tmp:
        for n in sizes:
            rows.append(measure(n, Path(tmp), args.adds, args.read_seconds))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    base = rows[0]["add_p50_ms"]
    print(f"{'items':>9} {'add p50':>8} {'p99':>7} {'x 1st':>6} {'fsync p50':>9} {'previous':>9} {'seen p50':>8} {'max':>6} "
          f"{'rank p99':>8} {'writing':>8} {'ratio':>6} {'compact':>7} {'p99 during':>10} {'fails':>5} "
          f"{'PSS 1 MB':>8} {'PSS 2 MB':>8} {'2/1':>5} {'seg MB 1/2 workers':>18}")
    for r in rows:
        legacy = f"{r['legacy_add_ms']:7.0f}ms" if "legacy_add_ms" in r else f"{'-':>9}"
        print(f"{r['n']:>9} {r['add_p50_ms']:6.1f}ms {r['add_p99_ms']:5.1f}ms {r['add_p50_ms'] / base:5.2f}x "
              f"{r['add_fsync_p50_ms']:7.1f}ms {legacy} {r['seen_p50_ms']:6.0f}ms {r['seen_max_ms']:4.0f}ms "
              f"{r['rank_p99_ms']:6.1f}ms {r['rank_p99_writing_ms']:6.1f}ms {r['rank_p99_writing_ms'] / r['rank_p99_ms']:5.2f}x "
              f"{r['compact_s']:6.1f}s {r['rank_p99_compacting_ms']:8.1f}ms "
              f"{r['rank_failures_writing'] + r['rank_failures_compacting']:>5} {r['pss_one_mb']:8.0f} {r['pss_two_mb']:8.0f} "
              f"{r['pss_two_mb'] / r['pss_one_mb']:4.2f}x {r['pss_segments_one_mb']:8.0f} / {r['pss_segments_two_mb']:.0f}")
    print("goals: add p50 <= 20 ms at 1M and within 2x of 1k; seen <= 500 ms; writing ratio <= 1.5x; 0 fails; PSS 2/1 <= 1.3x")


if __name__ == "__main__":
    main()
