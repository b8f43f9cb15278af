"""Zero-downtime benchmark on Swarm: constant keep-alive load through the nginx service during a
rolling update of 3 backend replicas (`target: swarm`), against the real server image.

A single-node swarm is created for the run (and left again) when this engine is not in one. This
kernel has no IPVS, so ports are published in host mode with DNS round-robin endpoints; nginx
resolves the service name per request, so no reload happens during the update.

Reports total requests, non-2xx, connection errors, the deploy's wall time, and the time Swarm
took per replica. Goal: zero failed requests. Load goes only to 127.0.0.1, bounded in time.

With --nodes 3 it runs on a throwaway 3-node cluster (Docker-in-Docker nodes and a registry, see
tests/integration/ops/cluster/) instead of this engine: images are pushed to the cluster's
registry and pulled by every node, flashfit drives the manager through DOCKER_HOST, and after the
rolling update one worker node is stopped under load (node loss: failed requests, the time until
Swarm marks it down, and the time until the backend runs its full replica count again). The
backend there is the small test server (--server-image real: the real one, slower to pull).

  .venv/bin/python benchmarks/bench_swarm_zero_downtime.py [--clients 8] [--nodes 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_zero_downtime import Load, free_port, run_flashfit  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8, help="concurrent keep-alive clients")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--nodes", type=int, default=1, help="1: this engine (single-node swarm); 3: a throwaway cluster")
    parser.add_argument("--server-image", choices=["small", "real"], default="small", help="backend image on the cluster")
    args = parser.parse_args()
    if args.nodes > 1:
        return multinode(args)

    import docker

    sys.path.insert(0, str(REPO))
    from tests.integration.ops.fake_backend.harness import real_server_image

    client = docker.from_env(version="auto", timeout=120)
    server_image = real_server_image()
    joined = client.info()["Swarm"]["LocalNodeState"] != "active"
    if joined:
        subprocess.run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], check=True, capture_output=True)
    project = f"swbench{secrets.token_hex(3)}"
    repo = f"flashfit-bench/{project}"
    folder = Path(tempfile.mkdtemp(prefix="flashfit-swarm-bench-"))
    port = free_port()
    try:
        models, data = folder / "models", folder / "data"
        subprocess.run([str(Path(sys.executable).parent / "flashfit-server"), "models", "make-tiny", str(models)], check=True, capture_output=True)
        data.mkdir()
        os.chown(data, 1000, 1000)
        for version in ("v1", "v2"):
            client.images.get(server_image).tag(repo, version)
        config = {
            "project": project,
            "target": "swarm",
            "replicas": 3,
            "server": {"image": repo},
            "ports": {"http": port},
            "services": {"nginx": {"image": "flashfit/nginx:bookworm"}},
            "volumes": {"models": str(models), "data": str(data)},
            "resources": {"limits": {"memory": "2G", "cpus": 2}, "reservations": {"memory": "256M", "cpus": 0.5}},
            "healthcheck": {"interval": "1s", "timeout": "3s", "start_period": "120s"},
            "deploy": {"deadline": "300s", "drain_timeout": "5s", "monitor_window": "5s", "parallelism": 1},
            "swarm": {"endpoint_mode": "dnsrr", "publish_mode": "host", "proxy_replicas": 1},
        }
        (folder / "flashfit.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        env = folder / ".env"
        env.write_text(f"JWT_SECRET_KEY={secrets.token_hex(24)}\n")
        env.chmod(0o600)
        code, _doc, wall, stderr = run_flashfit(folder, "deploy", "--version", "v1")
        if code != 0:
            raise SystemExit(f"setup deploy failed ({code}):\n{stderr}")
        with Load(f"http://127.0.0.1:{port}/health", args.clients) as load:
            code, doc, wall, stderr = run_flashfit(folder, "deploy", "--version", "v2")
        if code != 0:
            raise SystemExit(f"rolling update failed ({code}):\n{stderr}")
        result = {
            "scenario": "swarm rolling update, 3 replicas",
            "server_image": server_image,
            "clients": args.clients,
            **load.summary(),
            "deploy_wall_s": round(wall, 2),
            "per_replica_s": round(wall / 3, 2),
        }
        result["zero_failed"] = result["non_2xx"] == 0 and result["connection_errors"] == 0
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"server image {server_image}; {args.clients} keep-alive clients; {os.cpu_count()} CPUs")
            print(f"{result['scenario']}: {result['requests']} requests, {result['non_2xx']} non-2xx, "
                  f"{result['connection_errors']} connection errors; deploy {wall:.1f}s ({wall / 3:.1f}s per replica)")
            print(f"goal zero failed requests: {'met' if result['zero_failed'] else 'MISSED'}")
        return 0
    finally:
        label = {"label": f"com.docker.stack.namespace={project}"}
        for service in client.services.list(filters=label):
            service.remove()
        deadline = time.monotonic() + 60
        while client.containers.list(all=True, ignore_removed=True, filters=label) and time.monotonic() < deadline:
            time.sleep(0.5)
        for obj in [*client.secrets.list(filters=label), *client.configs.list(filters=label)]:
            obj.remove()
        for version in ("v1", "v2"):
            try:
                client.images.remove(f"{repo}:{version}", noprune=True)
            except docker.errors.APIError:
                pass
        if joined:
            subprocess.run(["docker", "swarm", "leave", "--force"], check=False, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def multinode(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO))
    from tests.integration.ops.cluster.cluster import app_image, ready_nodes, running
    from tests.integration.ops.fake_backend.harness import real_server_image

    image = real_server_image() if args.server_image == "real" else app_image()
    started = time.monotonic()
    with running(args.nodes) as cluster:
        up_s = time.monotonic() - started
        folder = cluster.shared_dir / "project"
        models, data = cluster.shared_dir / "models", cluster.shared_dir / "data"  # the same path on every node
        for path in (folder, models, data):
            path.mkdir()
        os.chown(data, 1000, 1000)
        if args.server_image == "real":
            subprocess.run([str(Path(sys.executable).parent / "flashfit-server"), "models", "make-tiny", str(models)], check=True, capture_output=True)
        project = f"swbench{secrets.token_hex(3)}"
        local_repo = f"{cluster.prefix}/local"
        config = {
            "project": project,
            "target": "swarm",
            "replicas": args.nodes,
            "server": {"image": local_repo},
            "registry": {"server": cluster.registry, "repository": f"{cluster.prefix}/backend"},
            "ports": {"http": cluster.http_port},
            "services": {"nginx": {"image": cluster.push("flashfit/nginx:bookworm", f"{cluster.prefix}/nginx", "bookworm")}},
            "volumes": {"models": str(models), "data": str(data)},
            "resources": {"limits": {"memory": "2G", "cpus": 2}, "reservations": {"memory": "64M", "cpus": 0.1}},
            "healthcheck": {"interval": "1s", "timeout": "3s", "start_period": "120s"},
            "deploy": {"deadline": "300s", "drain_timeout": "5s", "monitor_window": "5s", "parallelism": 1},
            "swarm": {"endpoint_mode": "dnsrr", "publish_mode": "host", "proxy_replicas": 1},
        }
        (folder / "flashfit.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        env = folder / ".env"
        env.touch(mode=0o600)
        env.write_text(f"JWT_SECRET_KEY={secrets.token_hex(24)}\n"
                       f"REGISTRY_USERNAME={cluster.registry_user}\nREGISTRY_PASSWORD={cluster.registry_password}\n")
        pushed = time.monotonic()
        for version in ("v1", "v2"):
            subprocess.run(["docker", "tag", image, f"{local_repo}:{version}"], check=True)
            code, _doc, _wall, stderr = run_flashfit(folder, "images", "push", "--version", version)
            if code != 0:
                raise SystemExit(f"push failed ({code}):\n{stderr}")
        push_s = time.monotonic() - pushed
        os.environ["DOCKER_HOST"] = cluster.docker_host  # flashfit drives the manager from here on
        try:
            code, _doc, first_wall, stderr = run_flashfit(folder, "deploy", "--version", "v1")
            if code != 0:
                raise SystemExit(f"setup deploy failed ({code}):\n{stderr}")
            url = f"http://127.0.0.1:{cluster.http_port}/health"
            with Load(url, args.clients) as load:
                code, _doc, wall, stderr = run_flashfit(folder, "deploy", "--version", "v2")
            if code != 0:
                raise SystemExit(f"rolling update failed ({code}):\n{stderr}")
            update = {**load.summary(), "deploy_wall_s": round(wall, 2), "per_replica_s": round(wall / args.nodes, 2)}
            loss = node_loss(cluster, project, url, args, ready_nodes)
        finally:
            os.environ.pop("DOCKER_HOST", None)
        for version in ("v1", "v2"):
            subprocess.run(["docker", "rmi", "--no-prune", f"{local_repo}:{version}"], capture_output=True)
    result = {
        "scenario": f"swarm on {args.nodes} nodes, images from the cluster registry",
        "server_image": image,
        "clients": args.clients,
        "cluster_up_s": round(up_s, 1),
        "push_s": round(push_s, 1),
        "first_deploy_s": round(first_wall, 1),
        "rolling_update": update,
        "node_loss": loss,
    }
    result["zero_failed"] = update["non_2xx"] == 0 and update["connection_errors"] == 0
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{image}; {args.clients} keep-alive clients; {os.cpu_count()} CPUs; cluster up in {up_s:.1f}s, "
              f"push {push_s:.1f}s, first deploy {first_wall:.1f}s")
        print(f"rolling update of {args.nodes} replicas: {update['requests']} requests, {update['non_2xx']} non-2xx, "
              f"{update['connection_errors']} connection errors; deploy {update['deploy_wall_s']:.1f}s")
        print(f"node loss: {loss['requests']} requests, {loss['non_2xx']} non-2xx, {loss['connection_errors']} connection "
              f"errors, slowest {loss['slowest_s']:.1f}s; node down after {loss['node_marked_down_s']}s, "
              f"full capacity after {loss['full_capacity_s']}s")
        print(f"goal zero failed requests (rolling update): {'met' if result['zero_failed'] else 'MISSED'}")
    return 0


def node_loss(cluster, project: str, url: str, args: argparse.Namespace, ready_nodes) -> dict:
    """Stop a worker under load; wait (bounded) for Swarm to mark it down and to run the full
    replica count on the nodes left. Requests keep going through nginx on the manager."""
    client = cluster.client()
    service = client.services.get(f"{project}_backend")
    victim = cluster.nodes[-1]

    def running_on_ready_nodes() -> int:
        ready = {n.id for n in client.nodes.list() if n.attrs["Status"]["State"] == "ready"}
        tasks = service.tasks(filters={"desired-state": "running"})
        return sum(1 for t in tasks if t["Status"]["State"] == "running" and t.get("NodeID") in ready)

    timed = TimedLoad(url, args.clients)
    with timed:
        stopped = time.monotonic()
        cluster.stop_node(victim)  # on the host engine (DOCKER_HOST names the manager here)
        marked_down = full = None
        deadline = stopped + 180
        while time.monotonic() < deadline and full is None:
            now = time.monotonic() - stopped
            if marked_down is None and ready_nodes(cluster) == len(cluster.nodes) - 1:
                marked_down = round(now, 1)
            if marked_down is not None and running_on_ready_nodes() >= args.nodes:
                full = round(now, 1)
            time.sleep(0.5)
        time.sleep(3)  # and a moment at full capacity
    cluster.start_node(victim)
    return {**timed.summary(), "slowest_s": round(timed.slowest, 2), "node_marked_down_s": marked_down, "full_capacity_s": full}


class TimedLoad(Load):
    """Load that also keeps the slowest request (a request to a lost task waits for nginx's
    connect timeout, then nginx tries the next address)."""

    def __init__(self, url: str, clients: int):
        super().__init__(url, clients)
        self.slowest = 0.0

    def run(self) -> None:
        import httpx

        client = httpx.Client(timeout=30.0)
        deadline = time.monotonic() + 300
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                began = time.monotonic()
                try:
                    status = client.get(self.url).status_code
                except httpx.HTTPError as error:
                    with self.lock:
                        key = type(error).__name__
                        self.errors[key] = self.errors.get(key, 0) + 1
                    client.close()
                    client = httpx.Client(timeout=30.0)
                    continue
                with self.lock:
                    self.slowest = max(self.slowest, time.monotonic() - began)
                    if 200 <= status < 300:
                        self.ok += 1
                    else:
                        self.non_2xx += 1
        finally:
            client.close()


if __name__ == "__main__":
    sys.exit(main())
