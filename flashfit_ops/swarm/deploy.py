"""`flashfit deploy|rollback|status` for `target: swarm`: the same plan -> execute flow as local
deploys, with Swarm doing the rolling update (start-first, rollback on failure) and flashfit
gating on convergence and on the proxy answering."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from flashfit_ops.config.model import Config
from flashfit_ops.config.secrets import load_secrets
from flashfit_ops.engine.protocol import EngineClient
from flashfit_ops.errors import FlashFitError, OperationFailed
from flashfit_ops.plan.steps import Step
from flashfit_ops.render import render_stack, render_swarm_nginx
from flashfit_ops.swarm.address import proxy_host
from flashfit_ops.swarm.engine import Materials, SwarmEngine, observe
from flashfit_ops.swarm.plan import UpsertService, object_name, plan_swarm_deploy, spec_digest
from flashfit_ops.swarm.sdk import service_name
from flashfit_ops.swarm.spec import StackDefinition, parse_stack

NGINX_CONFIG = "nginx_config"


def prepare(config: Config, version: str, environ: dict[str, str] | None = None) -> Materials:
    """Render the stack for this version and gather what its secrets and configs hold."""
    stack = _pinned(config, parse_stack(render_stack(config, version)), version, environ)
    project = config.project
    materials = Materials(stack=stack, version=version)

    def add(kind: str, source: str, content: bytes) -> None:
        name = object_name(project, source, content)
        materials.contents[name] = content
        materials.object_names[(kind, source)] = name

    secrets = load_secrets(config, environ)
    for source in stack.external_secrets:
        value = secrets.get(source.upper())
        if value:
            add("secret", source, value.encode())
        else:
            for key, service in stack.services.items():
                if any(ref.source == source for ref in service.secrets):
                    materials.dropped_env[key] = (*materials.dropped_env.get(key, ()), f"{source.upper()}_FILE")
    for source, file in stack.secret_files.items():
        add("secret", source, Path(file).read_bytes())
    add("config", NGINX_CONFIG, render_swarm_nginx(config).encode())
    for key, definition in stack.services.items():
        mounted = {ref.source for ref in (*definition.secrets, *definition.configs)}
        names = {k: v for k, v in materials.object_names.items() if k[1] in mounted}
        materials.digests[key] = spec_digest((definition, materials.dropped_env.get(key)), names)
    return materials


def _pinned(config: Config, stack: StackDefinition, version: str, environ: dict[str, str] | None) -> StackDefinition:
    """With a registry, the backend runs repo:version@sha256:... so every node runs the same bytes
    (a tag pushed again later cannot change what a node pulls mid-update)."""
    from flashfit_ops.images import registry

    if not registry.is_configured(config):
        return stack
    backend = replace(stack.services["backend"], image=registry.pinned(config, version, environ))
    return replace(stack, services={**stack.services, "backend": backend})


def plan(client: EngineClient, config: Config, materials: Materials) -> list[Step]:
    return plan_swarm_deploy(
        config, observe(client, config.project), materials.stack, object_names=materials.object_names, digests=materials.digests,
        proxy_host=proxy_host(),
    )


def deploy(
    client: EngineClient,
    config: Config,
    version: str,
    *,
    dry_run: bool = False,
    on_step: Callable[[Step], None] = lambda _step: None,
    on_status: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    materials = prepare(config, version)
    steps = plan(client, config, materials)
    result: dict[str, Any] = {"target": "swarm", "version": version, "plan": [s.to_dict() for s in steps]}
    if dry_run:
        return {**result, "result": "planned"}
    from flashfit_ops.images import registry

    if registry.is_configured(config):
        registry.login(client, config)  # service updates then carry the credentials to the nodes
    engine = SwarmEngine(client, config.project, on_status=on_status)
    started = time.monotonic()
    backend_updated = False
    try:
        for step in steps:
            on_step(step)
            engine.apply(step, materials)
            if isinstance(step, UpsertService) and step.key == "backend" and step.action == "update":
                backend_updated = True
    except FlashFitError as error:
        if backend_updated and not _swarm_rolled_back(engine, config):
            engine.rollback(service_name(config.project, "backend"))
            error.details["rolled_back_by"] = "flashfit"
        raise
    return {**result, "result": "success", "duration_s": round(time.monotonic() - started, 2)}


def _swarm_rolled_back(engine: SwarmEngine, config: Config) -> bool:
    state = engine.service_health(service_name(config.project, "backend")).update_state
    return state in ("rollback_started", "rollback_completed")


def live_version(client: EngineClient, config: Config) -> str | None:
    backend = observe(client, config.project).services.get("backend")
    return backend.image.rsplit(":", 1)[-1] if backend else None


def rollback_options(client: EngineClient, config: Config, successful: list[str]) -> dict[str, Any]:
    """Earlier versions that deployed successfully (newest first), the live one excluded; the one
    Swarm itself can roll back to (the service's previous spec) is marked."""
    live = live_version(client, config)
    previous = _previous_spec_version(client, config)
    versions = [
        {"version": v, "how": "swarm rollback (previous spec)" if v == previous else "rolling update to the image"}
        for v in successful
        if v != live
    ][: config.deploy.keep_versions]
    return {"target": "swarm", "live_version": live, "versions": versions}


def _previous_spec_version(client: EngineClient, config: Config) -> str | None:
    from flashfit_ops.engine.errors import NotFound

    try:
        service = client.services.get(service_name(config.project, "backend"))
    except NotFound:
        return None
    previous = service.attrs.get("PreviousSpec")
    if not previous:
        return None
    return previous["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0].rsplit(":", 1)[-1]


def rollback(
    client: EngineClient,
    config: Config,
    version: str,
    *,
    on_step: Callable[[Step], None] = lambda _step: None,
    on_status: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Back to `version`: Swarm's own rollback when it is the service's previous spec (after a
    normal update), else a rolling update to its image (after Swarm already rolled a failed update
    back, the previous spec is the failed version, never a place to go)."""
    name = service_name(config.project, "backend")
    started = time.monotonic()
    if _previous_spec_version(client, config) == version:
        engine = SwarmEngine(client, config.project, on_status=on_status)
        engine.rollback(name)
        health = engine.await_convergence(name, config.replicas, config.deploy.deadline)
        if health.update_state not in ("rollback_completed", "completed"):
            raise OperationFailed(f"the rollback of {name} did not complete ({health.update_state})")
        how = "swarm rollback"
    else:
        deploy(client, config, version, on_step=on_step, on_status=on_status)
        how = "rolling update"
    return {"target": "swarm", "version": version, "how": how, "result": "success", "duration_s": round(time.monotonic() - started, 2)}


def status(client: EngineClient, config: Config) -> dict[str, Any]:
    """Services and their tasks per node, with container health where the task runs here."""
    observed = observe(client, config.project)
    if not observed.swarm_active:
        return {"target": "swarm", "swarm": "inactive", "serving": False, "services": []}
    nodes: dict[Any, Any] = {node.id: node.attrs["Description"]["Hostname"] for node in client.nodes.list()}
    services: list[dict[str, Any]] = []
    for key, svc in sorted(observed.services.items()):
        service = client.services.get(svc.name)
        tasks = []
        for task in service.tasks(filters={"desired-state": "running"}):
            container_id = task["Status"].get("ContainerStatus", {}).get("ContainerID")
            tasks.append(
                {
                    "slot": task.get("Slot"),
                    "node": nodes.get(task.get("NodeID"), task.get("NodeID")),
                    "state": task["Status"]["State"],
                    "image": task["Spec"]["ContainerSpec"]["Image"].split("@")[0],
                    "health": _container_health(client, container_id),
                    "error": task["Status"].get("Err"),
                }
            )
        services.append(
            {
                "service": svc.name,
                "role": key,
                "image": svc.image,
                "replicas": svc.replicas,
                "update_state": svc.update_state,
                "tasks": sorted(tasks, key=lambda t: (t["slot"] or 0)),
            }
        )
    backend = next((s for s in services if s["role"] == "backend"), None)
    serving = backend is not None and any(t["state"] == "running" for t in backend["tasks"])
    return {
        "target": "swarm",
        "swarm": "active",
        "serving": serving,
        "live_version": backend["image"].rsplit(":", 1)[-1] if backend else None,
        "url": f"http://{proxy_host()}:{config.ports.http}/",
        "services": services,
    }


def _container_health(client: EngineClient, container_id: str | None) -> str | None:
    if not container_id:
        return None
    from flashfit_ops.engine.errors import NotFound

    try:
        state = client.containers.get(container_id).attrs["State"]
    except NotFound:
        return "elsewhere"  # the task runs on another node
    return (state.get("Health") or {}).get("Status", state.get("Status"))
