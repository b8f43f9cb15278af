"""Zero-downtime benchmark on Swarm: constant keep-alive load through the nginx service during a
rolling update of 3 backend replicas (`target: swarm`), against the real server image.

A single-node swarm is created for the run (and left again) when this engine is not in one. This
kernel has no IPVS, so ports are published in host mode with DNS round-robin endpoints; nginx
resolves the service name per request, so no reload happens during the update.

Reports total requests, non-2xx, connection errors, the deploy's wall time, and the time Swarm
took per replica. Goal: zero failed requests. Load goes only to 127.0.0.1, bounded in time.

  .venv/bin/python benchmarks/bench_swarm_zero_downtime.py [--clients 8] [--json]
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
    args = parser.parse_args()

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


if __name__ == "__main__":
    sys.exit(main())
