"""Carries out Swarm plans through the Docker SDK, observes the cluster, waits for convergence,
and asks Swarm for its own rollback. The only module of flashfit.swarm that talks to Docker."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from flashfit_ops.errors import OperationFailed
from flashfit_ops.labels import LABEL_PROJECT, LABEL_SOURCE
from flashfit_ops.plan.steps import Step
from flashfit_ops.swarm.plan import (
    AwaitConvergence,
    CreateSwarmObject,
    EnsureSwarmNetwork,
    ObservedService,
    ProbeThroughProxy,
    PruneSwarmObjects,
    SwarmObserved,
    UpsertService,
)
from flashfit_ops.swarm.sdk import SPEC_DIGEST_LABEL, STACK_LABEL, service_kwargs
from flashfit_ops.swarm.spec import StackDefinition

# Update states in which Swarm has given up on the new version.
FAILED_UPDATE_STATES = frozenset({"paused", "rollback_started", "rollback_paused", "rollback_completed"})


def observe(client: Any, project: str) -> SwarmObserved:
    info = client.info()
    swarm = info.get("Swarm", {})
    active = swarm.get("LocalNodeState") == "active"
    manager = bool(swarm.get("ControlAvailable"))
    if not (active and manager):
        return SwarmObserved(swarm_active=active, is_manager=manager)
    label = {"label": f"{STACK_LABEL}={project}"}
    services = {}
    for service in client.services.list(filters=label):
        spec = service.attrs["Spec"]
        key = spec["Name"].removeprefix(f"{project}_")
        services[key] = ObservedService(
            name=spec["Name"],
            image=spec["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0],
            replicas=spec.get("Mode", {}).get("Replicated", {}).get("Replicas", 0),
            update_state=(service.attrs.get("UpdateStatus") or {}).get("State"),
            spec_digest=spec.get("Labels", {}).get(SPEC_DIGEST_LABEL),
        )
    return SwarmObserved(
        swarm_active=True,
        is_manager=True,
        services=services,
        secrets=frozenset(s.name for s in client.secrets.list(filters=label)),
        configs=frozenset(c.name for c in client.configs.list(filters=label)),
        networks=frozenset(n.name for n in client.networks.list(filters=label)),
    )


@dataclass
class Materials:
    """What a plan refers to by name but never holds: object contents and the service definitions."""

    stack: StackDefinition
    version: str
    contents: dict[str, bytes] = field(default_factory=dict)  # object name -> content
    object_names: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, source) -> name
    # Secrets that are not set are left out, with the *_FILE variables that point at them.
    dropped_env: dict[str, tuple[str, ...]] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)  # service key -> spec digest


@dataclass
class ServiceHealth:
    name: str
    desired: int
    running: int
    update_state: str | None
    update_message: str
    tasks: list[dict[str, Any]]


class SwarmEngine:
    def __init__(self, client: Any, project: str, *, on_status: Callable[[str], None] | None = None):
        self.client = client
        self.project = project
        self.on_status = on_status or (lambda _message: None)

    # --- steps -------------------------------------------------------------------------------
    def apply(self, step: Step, materials: Materials) -> None:
        handler = getattr(self, f"_apply_{step.kind}")
        handler(step, materials)

    def _labels(self) -> dict[str, str]:
        return {STACK_LABEL: self.project, LABEL_PROJECT: self.project}

    def _apply_ensure_swarm_network(self, step: EnsureSwarmNetwork, _materials: Materials) -> None:
        self.client.networks.create(step.name, driver="overlay", attachable=True, labels=self._labels())

    def _apply_create_swarm_object(self, step: CreateSwarmObject, materials: Materials) -> None:
        data = materials.contents[step.name]
        collection = self.client.secrets if step.object_kind == "secret" else self.client.configs
        collection.create(name=step.name, data=data, labels={**self._labels(), LABEL_SOURCE: step.source})

    def _service_kwargs(self, key: str, materials: Materials) -> dict[str, Any]:
        definition = materials.stack.services[key]
        refs = {kind: {} for kind in ("secret", "config")}
        for (kind, source), name in materials.object_names.items():
            obj = (self.client.secrets if kind == "secret" else self.client.configs).get(name)
            refs[kind][source] = (obj.id, name)
        # Only the backend carries the version: a label that changes on every deploy would make
        # Swarm replace the proxy's tasks too.
        version = materials.version if key == "backend" else None
        kwargs = service_kwargs(self.project, definition, version=version, secret_ids=refs["secret"], config_ids=refs["config"])
        dropped = materials.dropped_env.get(key, ())
        kwargs["env"] = [item for item in kwargs["env"] if item.split("=", 1)[0] not in dropped]
        kwargs["labels"][SPEC_DIGEST_LABEL] = materials.digests[key]
        return kwargs

    def _apply_upsert_service(self, step: UpsertService, materials: Materials) -> None:
        kwargs = self._service_kwargs(step.key, materials)
        if step.action == "create":
            self.client.services.create(**kwargs)
            return
        service = self.client.services.get(step.name)
        kwargs.pop("name")
        service.update(**kwargs)

    def _apply_await_convergence(self, step: AwaitConvergence, materials: Materials) -> None:
        health = self.await_convergence(step.name, step.replicas, step.deadline)
        if health.update_state in FAILED_UPDATE_STATES:
            raise OperationFailed(
                f"Swarm rolled {step.name} back: {health.update_message or health.update_state}",
                hint="the previous version keeps serving; `flashfit logs` and `flashfit status` show why the new one failed",
                details={"update_state": health.update_state},
            )

    def _apply_probe_through_proxy(self, step: ProbeThroughProxy, _materials: Materials) -> None:
        import httpx

        deadline = time.monotonic() + step.deadline
        last = ""
        while time.monotonic() < deadline:
            try:
                response = httpx.get(step.url, timeout=5.0)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as error:
                last = type(error).__name__
            self.on_status(f"proxy: {last}")
            time.sleep(0.5)
        raise OperationFailed(f"{step.url} did not answer 200 through the proxy ({last})")

    def _apply_prune_swarm_objects(self, step: PruneSwarmObjects, _materials: Materials) -> None:
        from docker.errors import APIError

        label = {"label": f"{STACK_LABEL}={self.project}"}
        for obj in [*self.client.secrets.list(filters=label), *self.client.configs.list(filters=label)]:
            if obj.name in step.keep:
                continue
            try:
                obj.remove()
            except APIError:
                pass  # still used by a task that is shutting down: removed by a later deploy

    # --- waiting -----------------------------------------------------------------------------
    def service_health(self, name: str) -> ServiceHealth:
        service = self.client.services.get(name)
        spec = service.attrs["Spec"]
        image = spec["TaskTemplate"]["ContainerSpec"]["Image"]
        desired = spec.get("Mode", {}).get("Replicated", {}).get("Replicas", 0)
        status = service.attrs.get("UpdateStatus") or {}
        tasks = service.tasks(filters={"desired-state": "running"})
        running = [
            t for t in tasks if t["Status"]["State"] == "running" and t["Spec"]["ContainerSpec"]["Image"] == image
        ]
        return ServiceHealth(name, desired, len(running), status.get("State"), status.get("Message", ""), tasks)

    def await_convergence(self, name: str, replicas: int, deadline: float) -> ServiceHealth:
        """Until every desired task runs the service's current image and is healthy (Swarm reports
        a task with a health check as running only once it is healthy), or Swarm gives up."""
        end = time.monotonic() + deadline
        delay = 0.1
        while True:
            health = self.service_health(name)
            if health.update_state in FAILED_UPDATE_STATES and health.update_state != "rollback_started":
                return health
            settled = health.update_state in (None, "completed", "rollback_completed")
            if settled and health.running >= replicas:
                return health
            self.on_status(f"{name}: {health.running}/{replicas} running, update {health.update_state or 'n/a'}")
            if time.monotonic() >= end:
                raise OperationFailed(
                    f"{name} did not converge within {deadline:g}s ({health.running}/{replicas} tasks running, "
                    f"update {health.update_state or 'n/a'})",
                    hint="`flashfit rollback` returns to the previous version; `flashfit status` lists the tasks",
                )
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    # --- rollback ----------------------------------------------------------------------------
    def rollback(self, name: str) -> None:
        """Swarm's own rollback to the service's previous spec (what `docker service rollback` does)."""
        service = self.client.services.get(name)
        if not service.attrs.get("PreviousSpec"):
            raise OperationFailed(f"{name} has no previous version to roll back to")
        api = self.client.api
        url = api._url("/services/{0}/update", service.id)
        response = api._post_json(
            url, data=service.attrs["Spec"], params={"version": service.version, "rollback": "previous"}
        )
        api._raise_for_status(response)
