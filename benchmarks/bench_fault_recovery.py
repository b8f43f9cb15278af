"""Fault-recovery benchmark (issue 11): constant keep-alive load through nginx, no client retries,
6 clients on GET /ready and 6 on POST /api/fusion/recommend, against the real server image on the
local engine, while
  (1) the proxy is killed (`docker kill`),
  (2) the only live backend is stopped (`docker stop`), then killed (`docker kill`), first with no
      spare (deploy.spare_replicas: 0: the keeper starts it again, a cold model load), then, side
      by side in the same run, with one warm spare (deploy.spare_replicas: 1: nginx falls over to
      it and the keeper relinks the slots to it),
and nobody runs flashfit: the figure is the time from the fault to the last failed request (the
time to serving again; goal <= 3 s) and the failed requests; then
  (3-5) a deploy is SIGKILLed at three points (during its gate, right after its switch, in its
monitor window once the old version has drained) and `flashfit repair` runs: the failed requests from the deploy's start to
the repair's end (goal 0: something healthy remained each time).

  .venv/bin/python benchmarks/bench_fault_recovery.py [--clients 6] [--json] [--backend-only]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_zero_downtime import FLASHFIT, free_port, run_flashfit  # noqa: E402

MAX_SECONDS = 300  # a hard bound on any one load phase


class TwoEndpointLoad:
    """`clients` keep-alive clients on GET /ready and as many on POST recommend; every failure
    (non-2xx or connection error) is kept with its time."""

    def __init__(self, base: str, clients: int):
        self.base = base
        self.ok = 0
        self.failures: list[tuple[float, str]] = []
        self.successes: list[tuple[float, str]] = []  # (time, endpoint) of the recent ones
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(kind,), daemon=True) for kind in ("ready", "recommend") for _ in range(clients)]

    def run(self, kind: str) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        client = httpx.Client(timeout=10.0)
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                if kind == "ready":
                    response = client.get(self.base + "/ready")
                else:
                    response = client.post(self.base + "/api/fusion/recommend", json={"text": "a red summer dress", "limit": 5})
                failure = None if 200 <= response.status_code < 300 else f"{kind} HTTP {response.status_code}"
            except httpx.HTTPError as error:
                failure = f"{kind} {type(error).__name__}"
                client.close()
                client = httpx.Client(timeout=10.0)
            with self.lock:
                if failure:
                    self.failures.append((time.monotonic(), failure))
                else:
                    self.ok += 1
                    self.successes = [*self.successes[-50:], (time.monotonic(), kind)]
        client.close()

    def __enter__(self) -> "TwoEndpointLoad":
        for thread in self.threads:
            thread.start()
        time.sleep(1.0)
        return self

    def __exit__(self, *_exc: object) -> None:
        time.sleep(1.0)
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def failed_since(self, moment: float) -> list[tuple[float, str]]:
        with self.lock:
            return [f for f in self.failures if f[0] >= moment]

    def summary(self) -> dict:
        kinds: dict[str, int] = {}
        for _, kind in self.failures:
            kinds[kind] = kinds.get(kind, 0) + 1
        return {"requests": self.ok + len(self.failures), "failed": len(self.failures), "failure_kinds": kinds}


def recovered(load: TwoEndpointLoad, moment: float) -> bool:
    """Serving again: 2 s without a failure since the last one (5 s without any), and answers
    from both endpoints in that time (a host too busy to answer is not serving)."""
    with load.lock:
        failed = [t for t, _ in load.failures if t >= moment]
        since = failed[-1] if failed else moment
        answered = {kind for t, kind in load.successes if t > since}
    return time.monotonic() - since > (2.0 if failed else 5.0) and answered == {"ready", "recommend"}


def ready_directly(base: str) -> bool:
    try:
        return httpx.get(base + "/ready", timeout=5.0).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=6, help="keep-alive clients per endpoint")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--backend-only", action="store_true", help="only the proxy and backend rows (no killed deploys)")
    parser.add_argument("--server-image", default=os.environ.get("FLASHFIT_IT_SERVER_IMAGE"))
    args = parser.parse_args()

    import docker

    engine = docker.from_env(version="auto", timeout=120)
    image = args.server_image
    if not image:
        servers = sorted((i for i in engine.images.list(name="flashfit/backend") if i.tags), key=lambda i: i.attrs["Created"], reverse=True)
        if not servers:
            raise SystemExit("no flashfit/backend image: run `flashfit build` first")
        image = servers[0].tags[0]
    project = f"benchf{secrets.token_hex(3)}"
    repo = f"flashfit-bench/{project}"
    folder = Path(tempfile.mkdtemp(prefix="flashfit-bench-"))
    port = free_port()
    tags: list[str] = []
    base = f"http://127.0.0.1:{port}"

    def log(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr, flush=True)

    def flashfit(*command: str) -> dict:
        code, doc, wall, stderr = run_flashfit(folder, *command)
        if code != 0:
            raise SystemExit(f"`flashfit {' '.join(command)}` failed ({code}):\n{stderr}")
        log(f"  flashfit {' '.join(command)} ({wall:.1f}s)")
        return doc

    def containers(**labels: str) -> list:
        filters = [f"io.flashfit.project={project}"] + [f"io.flashfit.{k}={v}" for k, v in labels.items()]
        return engine.containers.list(all=True, ignore_removed=True, filters={"label": filters})

    def slot_target() -> str:
        try:
            return os.readlink(folder / ".flashfit" / "sockets" / "slot-1.sock").removesuffix(".sock")
        except OSError:
            return ""

    try:
        models = folder / "models"
        subprocess.run([str(Path(sys.executable).parent / "flashfit-server"), "models", "make-tiny", str(models)], check=True, capture_output=True)
        for path in [models, *models.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        for version in ("v1", "v2"):
            engine.images.get(image).tag(repo, version)
            tags.append(f"{repo}:{version}")
        config = {
            "project": project,
            "server": {"image": repo},
            "ports": {"http": port},
            "services": {"nginx": {"image": "flashfit/nginx:bookworm"}},
            "rate_limit": {"enabled": False},  # 12 clients in a loop exceed 10 r/s: 429s are not faults
            "volumes": {"models": str(models)},
            "resources": {"limits": {"memory": "2G", "cpus": 2}, "reservations": {"memory": "256M", "cpus": 0.5}},
            "healthcheck": {"interval": "500ms", "timeout": "2s", "start_period": "60s"},
            "deploy": {"strategy": "blue-green", "deadline": "300s", "drain_timeout": "10s", "monitor_window": "10s"},
        }
        (folder / "flashfit.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        (folder / ".env").write_text(f"JWT_SECRET_KEY={secrets.token_hex(24)}\n")
        (folder / ".env").chmod(0o600)
        flashfit("deploy", "--version", "v1")
        results = []

        def fault(name: str, inject) -> None:
            log(f"{name}: under load, no operator")
            wait_for(lambda: ready_directly(base), 300, "a ready service before the fault")
            with TwoEndpointLoad(base, args.clients) as load:
                if load.failures:
                    raise SystemExit(f"{name}: requests fail before the fault: {load.summary()['failure_kinds']}")
                moment = time.monotonic()
                inject()
                wait_for(lambda: recovered(load, moment), 300, "serving again")
                failed = load.failed_since(moment)
            recovery = round(failed[-1][0] - moment, 2) if failed else 0.0
            results.append({"scenario": name, **load.summary(), "time_to_serving_s": recovery, "goal_met": recovery <= 3.0})
            log(f"  {json.dumps(results[-1])}")

        def live_backend():
            return engine.containers.get(slot_target())

        def settled(spares: int) -> bool:
            """Every backend runs and is healthy, one live plus `spares` (after a failover the dead
            one comes back as the spare)."""
            running = [c for c in containers(role="backend") if c.status == "running"]
            return len(running) == 1 + spares and all(c.attrs["State"].get("Health", {}).get("Status") == "healthy" for c in running)

        def backend_faults(spares: int) -> None:
            label = "no spare" if spares == 0 else f"{spares} warm spare"
            wait_for(lambda: settled(spares), 300, f"the backends settled ({label})")
            fault(f"live backend stopped, {label} (docker stop)", lambda: live_backend().stop(timeout=10))
            wait_for(lambda: settled(spares), 300, f"the backends settled ({label})")
            fault(f"live backend killed, {label} (docker kill)", lambda: live_backend().kill())

        fault("proxy killed (docker kill)", lambda: containers(role="proxy")[0].kill())
        backend_faults(0)
        config["deploy"]["spare_replicas"] = 1
        (folder / "flashfit.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        flashfit("repair")  # starts the spare of the live version, out of rotation
        backend_faults(1)
        config["deploy"]["spare_replicas"] = 0
        (folder / "flashfit.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        flashfit("repair")  # the killed-deploy rows below run as before, without a spare

        version = ["v2"]

        def killed_deploy(name: str, when) -> None:
            log(f"{name}: deploy SIGKILLed, then flashfit repair, under load")
            target = version[0]
            wait_for(lambda: ready_directly(base), 300, "a ready service before the deploy")
            with TwoEndpointLoad(base, args.clients) as load:
                if load.failures:
                    raise SystemExit(f"{name}: requests fail before the deploy: {load.summary()['failure_kinds']}")
                deploy = subprocess.Popen([*FLASHFIT, "deploy", "--version", target, "-c", str(folder / "flashfit.yml")],
                                          cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                def reached() -> bool:
                    if deploy.poll() is not None:
                        raise SystemExit(f"{name}: the deploy ended (exit {deploy.returncode}) before its kill point")
                    return when(target)

                wait_for(reached, 400, f"the kill point of {name}")
                deploy.send_signal(signal.SIGKILL)
                deploy.wait()
                repair = flashfit("repair")
            routed = engine.containers.get(slot_target()).labels.get("io.flashfit.version") if slot_target() else None
            version[0] = "v1" if routed == "v2" else "v2"
            results.append({"scenario": name, **load.summary(), "repair_steps": [s["kind"] for s in repair.get("plan", [])],
                            "serving_version": routed, "goal_met": not load.failures})
            log(f"  {json.dumps(results[-1])}")

        def new_running(target: str) -> bool:
            return any(c.status == "running" for c in containers(role="backend", version=target))

        def switched(target: str) -> bool:
            found = slot_target()
            return bool(found) and any(c.name == found for c in containers(role="backend", version=target))

        def draining(target: str) -> bool:
            return switched(target) and any(c.status != "running" for c in containers(role="backend") if c.name != slot_target())

        if not args.backend_only:
            killed_deploy("deploy SIGKILLed during its gate", new_running)
            killed_deploy("deploy SIGKILLed right after its switch", switched)
            killed_deploy("deploy SIGKILLed in its monitor window", draining)

        report = {"server_image": image, "clients_per_endpoint": args.clients, "cpus": os.cpu_count(),
                  "load_average": [round(x, 2) for x in os.getloadavg()], "scenarios": results}
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(f"server image {image}; {args.clients}+{args.clients} keep-alive clients (/ready, recommend); {os.cpu_count()} CPUs; "
                  f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            print(f"{'scenario':52} {'requests':>8} {'failed':>6} {'to serving s':>12}  goal")
            for r in results:
                serving = f"{r['time_to_serving_s']:.2f}" if "time_to_serving_s" in r else "-"
                print(f"{r['scenario']:52} {r['requests']:>8} {r['failed']:>6} {serving:>12}  {'met' if r['goal_met'] else 'MISSED'}")
                for kind, count in r["failure_kinds"].items():
                    print(f"    {count} x {kind}")
                if "repair_steps" in r:
                    print(f"    repair: {', '.join(r['repair_steps']) or 'nothing to do'}; serving {r['serving_version']}")
        return 0
    finally:
        for container in engine.containers.list(all=True, ignore_removed=True, filters={"label": f"io.flashfit.project={project}"}):
            container.remove(force=True)
        for network in engine.networks.list(names=[f"{project}_net"]):
            network.remove()
        for volume in engine.volumes.list(filters={"label": f"io.flashfit.project={project}"}):
            volume.remove(force=True)
        for tag in tags:
            try:
                engine.images.remove(tag, noprune=True)
            except Exception:
                pass


if __name__ == "__main__":
    sys.exit(main())
