"""Time until an item added through one node is served by the replicas on the other nodes, on a
real 3-node swarm (the test cluster: Docker-in-Docker nodes, a registry, the real server image
with baked models, a data volume per node, one shared catalogue log in moto's S3 server; see
tests/integration/ops/cluster/catalog_stack.py). Goal: <= 2 s.

Each round: a watcher starts inside the replica on every other node (polling its own /health on
127.0.0.1 every 10 ms for a commit past the one it has), then an item is added through the
replica on node 1; the time from node 1's 201 until each watcher sees the commit applied is the
figure (all nodes share this host's clock). Then a recommend by the new id must answer 200 on
every node. Six keep-alive clients load the proxy the whole time (no retries): failed requests
are counted too. Compare with benchmarks/bench_catalog_sync.py (the same log between processes
on one host, at 1k and 100k items).

  .venv/bin/python benchmarks/bench_catalog_nodes.py [--rounds 20] [--poll-interval 0.5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.integration.ops.cluster.catalog_stack import (  # noqa: E402
    IN_TASK, add_item_spec, catalog_stack, moto_on_gateway, recommendable, run_in_task, sync_status, task_on,
)  # fmt: skip
from tests.integration.ops.cluster.cluster import running  # noqa: E402
from tests.integration.ops.fake_backend.harness import Load, ensure_flashfit_images  # noqa: E402

# Inside a follower's task: say "watching", then poll /health until applied_seq passes `after`;
# print the wall-clock time it did (or "timeout").
WATCH = r"""
import json, sys, time, urllib.request
spec = json.load(sys.stdin)
print("watching", flush=True)
deadline = time.time() + spec["timeout"]
while time.time() < deadline:
    with urllib.request.urlopen("http://127.0.0.1:8080/health", timeout=5) as answer:
        if json.load(answer)["catalog_sync"]["applied_seq"] > spec["after"]:
            print(time.time(), flush=True)
            sys.exit(0)
    time.sleep(0.01)
print("timeout", flush=True)
"""
# Node 1's add, then the wall-clock time its 201 came back.
ADD_TIMED = IN_TASK + "\nimport time\nprint(time.time())\n"


def start_watcher(node, container: str, after: int, timeout: float) -> subprocess.Popen:
    proc = subprocess.Popen(["docker", "exec", "-i", node.name, "docker", "exec", "-i", container, "python3", "-c", WATCH],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdin and proc.stdout
    proc.stdin.write(json.dumps({"after": after, "timeout": timeout}))
    proc.stdin.close()
    if proc.stdout.readline().strip() != "watching":
        raise SystemExit(f"the watcher on {node.name} did not start")
    return proc


def one_round(project, nodes, seed: int, timeout: float) -> tuple[dict[str, float], int]:
    writer, *followers = nodes
    watchers = {}
    for node in followers:
        container = task_on(project, node)
        assert container, f"no backend task on {node.name}"
        watchers[node.name] = start_watcher(node, container, sync_status(project, node)["applied_seq"], timeout)
    out = run_in_task(writer, task_on(project, writer), ADD_TIMED, add_item_spec(project, seed)).splitlines()
    status, body, acknowledged = int(out[0]), json.loads(out[1]), float(out[-1])
    if status != 201:
        raise SystemExit(f"add through {writer.name} answered {status}: {body}")
    seen = {}
    for name, proc in watchers.items():
        assert proc.stdout
        line = proc.stdout.read().strip()  # the watcher ends by itself within `timeout`
        proc.wait()
        if line == "timeout":
            raise SystemExit(f"{name} did not apply the commit within {timeout:g}s")
        seen[name] = float(line) - acknowledged
    return seen, int(body["id"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--poll-interval", type=float, default=0.5, help="catalog.poll_interval of the stack")
    parser.add_argument("--clients", type=int, default=6, help="keep-alive clients on the proxy")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    ensure_flashfit_images()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-catalog-nodes-") as tmp, running(nodes=3, in_memory=True) as cluster, \
            moto_on_gateway(cluster) as endpoint, \
            catalog_stack(cluster, Path(tmp), endpoint, replicas=3, poll_interval=args.poll_interval) as project:  # fmt: skip
        set_up_s = time.monotonic() - started
        delays: dict[str, list[float]] = {node.name: [] for node in cluster.nodes[1:]}
        with Load(project.url + "/api/fusion/recommend", threads=args.clients, json_body={"text": "red summer dress", "limit": 5}) as load:
            for round_ in range(args.rounds):
                seen, item_id = one_round(project, cluster.nodes, 1000 + round_, timeout=30)
                for name, seconds in seen.items():
                    delays[name].append(seconds)
                unserved = [n.name for n in cluster.nodes if not recommendable(project, n, item_id)]
                if unserved:
                    raise SystemExit(f"item {item_id} applied but not recommendable on {unserved}")
        everything = sorted(s for values in delays.values() for s in values)
    result = {
        "nodes": 3, "rounds": args.rounds, "poll_interval_s": args.poll_interval, "set_up_s": round(set_up_s, 1),
        "per_node": {n: {"p50_s": round(statistics.median(v), 3), "max_s": round(max(v), 3)} for n, v in delays.items()},
        "p50_s": round(statistics.median(everything), 3),
        "p95_s": round(everything[max(0, int(len(everything) * 0.95) - 1)], 3),
        "max_s": round(everything[-1], 3),
        "load": {"requests": load.total, "non_2xx": load.non_2xx, "errors": len(load.errors)},
    }
    result["goal_met"] = result["max_s"] <= 2.0 and load.non_2xx == 0 and not load.errors
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"3-node swarm, poll interval {args.poll_interval:g}s, {args.rounds} rounds, set-up {set_up_s:.0f}s")
        for name, figures in result["per_node"].items():
            print(f"  {name}: p50 {figures['p50_s']:.2f}s, max {figures['max_s']:.2f}s after node 1's 201")
        print(f"all followers: p50 {result['p50_s']:.2f}s, p95 {result['p95_s']:.2f}s, max {result['max_s']:.2f}s; "
              f"proxy load: {load.total} requests, {load.non_2xx} non-2xx, {len(load.errors)} errors")
        print(f"goal <= 2 s on every node, no failed request: {'met' if result['goal_met'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
