"""Time until every other node serves a new item, through the shared catalogue log (S3: moto in
server mode over HTTP), at several catalogue sizes, in one run.

Three real servers (`flashfit-server serve`, tiny checkpoints, one worker each) on separate data
folders follow one log. The catalogue is grown to each size by a bulk writer (synthetic vectors,
one shared image, 2,000 items per commit), the followers catch up, then an item is added through
node A `--rounds` times: for each, the time from A's 201 until B and C list it (GET by id, polled
every 20 ms by a thread per node); then a recommend by that item id must answer 200 on both.
Goal: <= 2 s. Also printed: how long the bulk load took and how far behind it the followers
finished, and how many races for a seq were lost.

Data folders go under --root (default /dev/shm: the bulk load writes one image file per item with
an fsync each, which on a disk would take minutes at 100k and measure the disk, not the log).

  .venv/bin/python benchmarks/bench_catalog_sync.py                       # 1k and 100k items
  .venv/bin/python benchmarks/bench_catalog_sync.py --sizes 1000 --root /tmp --rounds 5

--joiner-commits 1000,10000 measures instead how long an EMPTY node takes to catch up with a log
of that many commits (one item each, written straight to the log), without and with checkpoints,
side by side in one run: a writer replays the log and writes the checkpoint at N, then --tail
more commits follow (a checkpoint is never at the head), then one fresh replica replays the whole
log and another loads the checkpoint and replays the tail. What is timed is Replica.catch_up(),
which is what a server's /ready waits on (model loading, the same either way, is left out).

  .venv/bin/python benchmarks/bench_catalog_sync.py --joiner-commits 1000,10000 --tail 100
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flashfit_server.datastore import NewItem  # noqa: E402
from tests.integration.ops.test_backup_helpers import CREDENTIALS, start_moto, stop  # noqa: E402
from tests.server.conftest import image_bytes  # noqa: E402
from tests.server.integration.conftest import LiveServer, start_server  # noqa: E402
from tests.server.integration.sync_helpers import new_bucket, server_env  # noqa: E402

TINY_DIMS = {"clip": 32, "blip": 32, "fashion": 24}  # flashfit_server.models.tiny
BULK_BATCH = 2_000
POLL = 0.02


def bulk_items(first_seed: int, count: int) -> list[NewItem]:
    rng = np.random.default_rng(first_seed)
    image = image_bytes(0)
    return [
        NewItem(image, "png", {n: rng.standard_normal(d).astype(np.float32) for n, d in TINY_DIMS.items()},
                name=f"bulk {first_seed + i}", caption="")
        for i in range(count)
    ]


def applied(server: LiveServer) -> int:
    return int(httpx.get(server.url + "/health", timeout=10).json()["catalog_sync"]["applied_seq"])


def wait_applied(servers: list[LiveServer], seq: int) -> None:
    while any(applied(s) < seq for s in servers):
        time.sleep(0.1)


def listed(server: LiveServer, item_id: int) -> bool:
    return httpx.get(f"{server.url}/api/items/{item_id}", timeout=10).status_code == 200


def recommendable(server: LiveServer, item_id: int) -> bool:
    response = httpx.post(server.url + "/api/fusion/recommend", json={"item_id": item_id, "limit": 5}, timeout=30)
    return response.status_code == 200


def one_round(a: LiveServer, followers: list[LiveServer], seed: int) -> list[float]:
    """Each follower is watched by its own thread with a cheap GET of the item (a state that lists
    it also ranks it; a recommend per poll would itself take long at 100k and blur the figure);
    then a recommend by the item's id must answer 200 on every follower."""
    with a.client() as client:
        response = client.post("/api/items", files={"image": ("x.png", image_bytes(seed), "image/png")}, headers=a.auth)
    acked = time.perf_counter()
    if response.status_code != 201:
        raise SystemExit(f"add through A failed: {response.status_code} {response.text[:200]}")
    item_id = response.json()["id"]
    seen: dict[int, float] = {}

    def watch(index: int, server: LiveServer) -> None:
        while not listed(server, item_id):
            time.sleep(POLL)
        seen[index] = time.perf_counter() - acked

    watchers = [threading.Thread(target=watch, args=(i, s)) for i, s in enumerate(followers)]
    for t in watchers:
        t.start()
    for t in watchers:
        t.join()
    if not all(recommendable(s, item_id) for s in followers):
        raise SystemExit(f"item {item_id} is listed but not recommendable on a follower")
    return [seen[i] for i in range(len(followers))]


def write_commits(shared, first: int, count: int) -> None:  # noqa: ANN001 - a SharedLog
    """`count` one-item commits straight to the log (seq = item id), 8 at a time: the history a
    long-running catalogue leaves (its writers' replicas are not needed to measure a joiner)."""
    from concurrent.futures import ThreadPoolExecutor

    from flashfit_server.segments import encode
    from flashfit_server.sharedlog import ItemRecord, Record

    image = shared.put_blob("images", image_bytes(0))
    rng = np.random.default_rng(first)
    vectors = {n: rng.standard_normal((count, d)).astype(np.float32) for n, d in TINY_DIMS.items()}

    def commit(row: int) -> None:
        seq = first + row
        segments = {n: shared.put_blob("segments", encode(np.array([seq], np.int64), vectors[n][row:row + 1]))
                    for n in TINY_DIMS}
        item = ItemRecord(id=seq, name=f"item {seq}", caption="", created_at="2026-01-01T00:00:00+00:00",
                          image=image, image_extension="png")
        if not shared.append(Record(seq, "add", "bench", dims=TINY_DIMS, items=(item,), segments=segments)):
            raise SystemExit(f"log record {seq} exists already")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(commit, range(count)))


def joiner_main(args: argparse.Namespace) -> int:
    from flashfit_server.datastore import DataStore
    from flashfit_server.replica import Replica
    from flashfit_server.sharedlog import SharedLog, SyncTarget

    proc, endpoint = start_moto()
    root = Path(tempfile.mkdtemp(dir=args.root))
    folders = iter(range(1000))

    def replica(bucket: str, **options: object) -> Replica:
        store = DataStore(root / f"node-{next(folders)}", compact_in_background=False)
        store.open(TINY_DIMS, background=False)
        return Replica(store, SharedLog(SyncTarget(f"s3://{bucket}/shop", endpoint, "us-east-1")), **options)

    def timed_catch_up(node: Replica) -> float:
        started = time.perf_counter()
        node.catch_up()
        seconds = time.perf_counter() - started
        node.store.close()
        return seconds

    try:
        print(f"late joiner: one-item commits in moto's S3 server at {endpoint}, folders under {args.root}, "
              f"{args.tail} commits after the checkpoint; {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"{'commits':>8} {'write log':>10} {'ckpt write':>10} {'ready, full replay':>19} "
              f"{'ready, checkpoint':>18} {'ratio':>6} {'records read':>13}")
        for commits in sorted(int(c) for c in args.joiner_commits.split(",")):
            bucket = new_bucket(endpoint)
            shared = SharedLog(SyncTarget(f"s3://{bucket}/shop", endpoint, "us-east-1"))
            started = time.perf_counter()
            write_commits(shared, 1, commits)
            written = time.perf_counter() - started
            writer = replica(bucket, load_checkpoints=False)
            writer.catch_up()
            started = time.perf_counter()
            if writer.write_checkpoint() is None:
                raise SystemExit("no checkpoint written")
            checkpointed = time.perf_counter() - started
            writer.store.close()
            write_commits(shared, commits + 1, args.tail)
            full = replica(bucket, load_checkpoints=False)
            full_seconds = timed_catch_up(full)
            joiner = replica(bucket)
            joiner_seconds = timed_catch_up(joiner)
            if (full.applied_seq, joiner.applied_seq, joiner.checkpoint_loaded) != (commits + args.tail,) * 2 + (commits,):
                raise SystemExit(f"unexpected: {full.status()} {joiner.status()}")
            print(f"{commits:>8} {written:>9.1f}s {checkpointed:>9.1f}s {full_seconds:>18.2f}s {joiner_seconds:>17.2f}s "
                  f"{full_seconds / joiner_seconds:>5.1f}x {commits + args.tail:>6} vs {args.tail:<5} "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        stop(proc)
        shutil.rmtree(root, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,100000")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--root", default="/dev/shm")
    parser.add_argument("--poll-interval", default="0.5", help="CATALOG_SYNC_POLL_INTERVAL of the servers")
    parser.add_argument("--joiner-commits", default="", help="e.g. 1000,10000: time a late joiner instead")
    parser.add_argument("--tail", type=int, default=100, help="commits after the checkpoint (--joiner-commits)")
    args = parser.parse_args()
    if args.joiner_commits:
        os.environ.update(CREDENTIALS)
        return joiner_main(args)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    os.environ.update(CREDENTIALS)

    from flashfit_server.models.tiny import make_checkpoints
    from flashfit_server.replica import Replica
    from flashfit_server.sharedlog import SharedLog, SyncTarget

    proc, endpoint = start_moto()
    servers: list[LiveServer] = []
    root: Path | None = None
    try:
        root = Path(tempfile.mkdtemp(dir=args.root))
        make_checkpoints(root / "models", seed=0)
        bucket = new_bucket(endpoint)
        env = {**server_env(endpoint, bucket), "CATALOG_SYNC_POLL_INTERVAL": args.poll_interval}
        servers = [start_server(root / name, root / "models", env=env) for name in ("a", "b", "c")]
        a, followers = servers[0], servers[1:]
        from flashfit_server.datastore import DataStore

        store = DataStore(root / "bulk-writer", compact_in_background=False)
        store.open(TINY_DIMS, background=False)
        writer = Replica(store, SharedLog(SyncTarget(f"s3://{bucket}/shop", endpoint, "us-east-1")))
        writer.catch_up()
        print(f"catalogue sync: 3 servers (1 worker each), log s3://{bucket}/shop at {endpoint} (moto server), "
              f"poll {args.poll_interval}s, folders under {args.root}; {args.rounds} rounds per size; "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
        print(f"{'items':>8} {'bulk load':>10} {'followers behind':>16} {'seen p50':>9} {'seen p95':>9} {'seen max':>9} "
              f"{'goal':>6}")
        total = 0
        for size in sizes:
            started = time.perf_counter()
            while total < size:
                count = min(BULK_BATCH, size - total)
                writer.add_items(bulk_items(total, count))
                total += count
            loaded = time.perf_counter()
            wait_applied(servers, writer.applied_seq)
            caught = time.perf_counter() - loaded
            times = [t for r in range(args.rounds) for t in one_round(a, followers, 10_000 + size + r)]
            p50 = statistics.median(times)
            p95 = sorted(times)[max(0, int(len(times) * 0.95) - 1)]
            print(f"{size:>8} {loaded - started:>9.1f}s {caught:>15.1f}s {p50:>8.3f}s "
                  f"{p95:>8.3f}s {max(times):>8.3f}s {'ok' if max(times) <= 2.0 else 'MISS':>6}  "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
        lost = [httpx.get(s.url + "/health", timeout=10).json()["catalog_sync"]["races_lost"] for s in servers]
        print(f"races for a seq lost (A, B, C): {lost}; bulk writer: {writer.races_lost}")
        store.close()
    finally:
        for server in servers:
            server.stop()
        stop(proc)
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
