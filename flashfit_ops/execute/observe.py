"""Engine (labels) + proxy folder -> Observed. The engine is the source of truth for containers;
the proxy folder says which of them nginx serves."""

from __future__ import annotations

from typing import Any

from flashfit_ops.config.model import Config
from flashfit_ops.engine.protocol import Engine
from flashfit_ops.execute.proxy import ProxyController, read_files
from flashfit_ops.plan.common import (
    LABEL_COLOR,
    LABEL_DEPLOY,
    LABEL_REPLICA,
    LABEL_ROLE,
    LABEL_VERSION,
    ROLE_BACKEND,
    SOCKET_DIR,
    proxy_dir,
    proxy_name,
)
from flashfit_ops.plan.keeper import keeper_name
from flashfit_ops.plan.observed import ContainerState, Observed, ProxyState


def observe(backend: Engine, config: Config, *, check_proxy_config: bool = True) -> Observed:
    infos = backend.list_containers(config.project)
    containers = []
    proxy_info = None
    pname = proxy_name(config.project)
    keeper_state = "missing"
    for info in infos:
        role = info.labels.get(LABEL_ROLE)
        if info.name == pname:
            proxy_info = info
            continue
        if info.name == keeper_name(config.project):
            keeper_state = info.state
            continue
        if role != ROLE_BACKEND:
            continue
        try:
            replica = int(info.labels.get(LABEL_REPLICA, "0"))
        except ValueError:
            replica = 0
        containers.append(
            ContainerState(
                name=info.name,
                color=info.labels.get(LABEL_COLOR, ""),
                version=info.labels.get(LABEL_VERSION, ""),
                replica=replica,
                deploy_id=info.labels.get(LABEL_DEPLOY, ""),
                state=info.state,
                image=info.image,
                exit_code=info.exit_code,
            )
        )
    files = read_files(proxy_dir(config))
    config_names = files.config
    if proxy_info is not None and proxy_info.state == "running" and files.config_present and check_proxy_config:
        # An invalid nginx.conf (edited by hand, or a bug) counts as absent: the next switch
        # rewrites it. The file the last switch left needs no `nginx -t`: nginx runs it.
        if not files.config_unchanged and not ProxyController(backend, config).config_is_valid():
            config_names = ()
    applied = files.applied if files.applied_present else config_names
    proxy = ProxyState(
        name=pname,
        exists=proxy_info is not None,
        state=proxy_info.state if proxy_info is not None else "missing",
        applied=applied,
        config=config_names,
        config_present=files.config_present and bool(config_names),
        stray_files=files.stray,
        served=files.served,
        legacy=proxy_info is not None and SOCKET_DIR not in proxy_info.mount_targets,
        slot_count=files.slot_count,
        standby=files.standby,
        settings_current=files.text is not None and files.text == ProxyController(backend, config).render(files.slot_count or 1),
    )
    containers.sort(key=lambda c: (c.deploy_id, c.replica, c.name))
    return Observed(
        project=config.project,
        containers=tuple(containers),
        proxy=proxy,
        network_exists=backend.network_exists(config.network_name),
        keeper_state=keeper_state,
    )


def probe_container(backend: Engine, config: Config, name: str) -> dict:
    """Readiness (and liveness when not ready) of one backend, reached on its own address."""
    from flashfit_ops.execute.health import http_probe
    from flashfit_ops.plan.common import BACKEND_PORT

    address = backend.ip_address(name, config.network_name)
    if not address:
        return {"ready": False, "alive": False, "detail": "no address"}
    probe = http_probe(f"http://{address}:{BACKEND_PORT}")
    ready = probe(config.healthcheck.readiness_path, 2.0)
    alive = ready if ready.ok else probe(config.healthcheck.liveness_path, 2.0)
    out: dict[str, Any] = {"ready": ready.ok, "alive": alive.ok, "ready_status": ready.status, "health_status": alive.status}
    if ready.failed:
        out["failed"] = ready.failed
    return out


def with_health(backend: Engine, config: Config, observed: Observed, names: tuple[str, ...] | None = None) -> Observed:
    """`observed` with the health of the running containers nginx routes to (or `names`) probed,
    so a repair never routes to a container that runs but does not answer."""
    import dataclasses
    from concurrent.futures import ThreadPoolExecutor

    wanted = set(names if names is not None else (*observed.proxy.config, *observed.proxy.applied))
    running = [c for c in observed.containers if c.running and c.name in wanted]
    if not running:
        return observed
    with ThreadPoolExecutor(max_workers=min(8, len(running))) as pool:
        probes = dict(zip([c.name for c in running], pool.map(lambda c: probe_container(backend, config, c.name), running)))
    containers = tuple(
        dataclasses.replace(c, health=health_of(probes[c.name])) if c.name in probes else c for c in observed.containers
    )
    return dataclasses.replace(observed, containers=containers)


def health_of(probe: dict) -> str:
    """ready; unready when it answers nothing or says it failed; unknown while alive but loading."""
    if probe["ready"]:
        return "ready"
    return "unready" if probe.get("failed") or not probe["alive"] else "unknown"
