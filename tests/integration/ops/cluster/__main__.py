"""`python -m tests.integration.ops.cluster up|down|images`: the test cluster by hand (benchmarks,
debugging). `up` prints the cluster as JSON; `down PREFIX` removes everything it made."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

from tests.integration.ops.cluster.cluster import app_image, node_image, registry_image, remove, up


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.integration.ops.cluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", help="start a cluster and print it as JSON")
    start.add_argument("--nodes", type=int, default=3)
    stop = sub.add_parser("down", help="remove a cluster by its prefix")
    stop.add_argument("prefix")
    sub.add_parser("images", help="build (or reuse) the node, registry and app images")
    args = parser.parse_args()
    if args.command == "images":
        print(json.dumps({"node": node_image(), "registry": registry_image(), "app": app_image()}))
    elif args.command == "up":
        started = time.monotonic()
        cluster = up(args.nodes)
        document = {**asdict(cluster), "shared_dir": str(cluster.shared_dir), "up_s": round(time.monotonic() - started, 1)}
        password = document.pop("registry_password")
        if password:  # never printed: an env file flashfit reads (mode 0600)
            env = cluster.shared_dir / "registry.env"
            env.touch(mode=0o600)
            env.write_text(f"REGISTRY_USERNAME={cluster.registry_user}\nREGISTRY_PASSWORD={password}\n")
            document["registry_env"] = str(env)
        print(json.dumps(document, indent=2))
    else:
        remove(args.prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
