"""The keeper step of a plan (see flashfit_ops/execute/keeper_main.py). Pure."""

from __future__ import annotations

from flashfit_ops.config.model import Config
from flashfit_ops.labels import ROLE_KEEPER
from flashfit_ops.plan.common import proxy_name, project_labels, state_dir
from flashfit_ops.plan.steps import EnsureKeeper

# Where the keeper sees the sockets and proxy folders, writable (the rest of .flashfit is read-only).
KEEPER_SOCKETS = "/flashfit/sockets"
KEEPER_PROXY_DIR = "/flashfit/proxy"
# With monitoring on, the folder of Prometheus's scrape targets file, writable: a failover rewrites it.
SCRAPE_TARGETS_DIR = "monitoring/prometheus/targets"  # under the state folder (monitoring/targets.py)
KEEPER_TARGETS_DIR = f"/flashfit/{SCRAPE_TARGETS_DIR}"
TARGETS_FILE = "backend.json"


def keeper_name(project: str) -> str:
    return f"{project}-keeper"


def engine_socket(docker_host: str | None) -> str | None:
    """The engine's Unix socket on this host; None for a remote (tcp://, ssh://) engine, which
    the keeper cannot reach by a bind mount."""
    if not docker_host:
        return "/var/run/docker.sock"
    if docker_host.startswith("unix://"):
        return docker_host[len("unix://") :]
    return None


def keeper_step(config: Config, image: str | None, docker_host: str | None) -> list[EnsureKeeper]:
    socket = engine_socket(docker_host)
    if not image or socket is None or not config.deploy.keeper:
        return []
    return [
        EnsureKeeper(
            name=keeper_name(config.project),
            image=image,
            proxy=proxy_name(config.project),
            state_dir=str(state_dir(config)),
            engine_socket=socket,
            labels=dict(sorted(project_labels(config, ROLE_KEEPER).items())),
            ready_path=config.healthcheck.readiness_path,
            targets_dir=str(state_dir(config) / SCRAPE_TARGETS_DIR) if config.monitoring.enabled else "",
        )
    ]
