"""The Swarm service definitions, read from the rendered docker-stack.yml.

The stack template is the one source of truth: `flashfit render` writes it for people who run
`docker stack deploy`, and `flashfit deploy --target swarm` parses the same rendered text into
these plain dataclasses, which sdk.py turns into Docker SDK arguments. Nothing here talks to Docker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from flashfit_ops.config.model import parse_duration
from flashfit_ops.config.rules import memory_bytes


@dataclass(frozen=True)
class MountSpec:
    source: str
    target: str
    kind: str  # volume | bind
    read_only: bool = False


@dataclass(frozen=True)
class FileRef:
    """A secret or config: its name in the stack, and where it appears inside the container."""

    source: str
    target: str


@dataclass(frozen=True)
class PortSpec:
    published: int
    target: int
    protocol: str = "tcp"
    mode: str = "ingress"


@dataclass(frozen=True)
class UpdatePolicy:
    parallelism: int = 1
    delay: float = 0.0
    order: str = "stop-first"
    failure_action: str = "pause"
    monitor: float = 0.0


@dataclass(frozen=True)
class ServiceDefinition:
    key: str  # the service's name in the stack (backend, nginx): its DNS alias on the network
    image: str
    replicas: int
    env: dict[str, str] = field(default_factory=dict)
    mounts: tuple[MountSpec, ...] = ()
    secrets: tuple[FileRef, ...] = ()
    configs: tuple[FileRef, ...] = ()
    ports: tuple[PortSpec, ...] = ()
    healthcheck: dict[str, Any] | None = None
    endpoint_mode: str = "vip"
    update: UpdatePolicy = UpdatePolicy()
    rollback: UpdatePolicy = UpdatePolicy()
    restart: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)  # nano_cpus, memory_bytes
    reservations: dict[str, int] = field(default_factory=dict)
    # Reserved generic resources as (kind, count), e.g. ("gpu", 1) on nodes labelled for GPUs.
    generic_resources: tuple[tuple[str, int], ...] = ()
    constraints: tuple[str, ...] = ()
    max_replicas_per_node: int | None = None
    stop_grace_period: float | None = None
    networks: tuple[str, ...] = ()
    # The tasks' log driver and its options (the backend's rotation, see service_spec.py).
    log_driver: str | None = None
    log_options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StackDefinition:
    services: dict[str, ServiceDefinition]
    named_volumes: tuple[str, ...]
    config_files: dict[str, str]  # config name -> file path (relative to the stack file)
    secret_files: dict[str, str]  # secret name -> file path, for secrets the stack ships itself
    external_secrets: tuple[str, ...]


def _mount(text: str, named: set[str]) -> MountSpec:
    parts = text.split(":")
    source, target = parts[0], parts[1]
    read_only = len(parts) > 2 and "ro" in parts[2].split(",")
    kind = "volume" if source in named else "bind"
    return MountSpec(source, target, kind, read_only)


def _file_refs(entries: list[Any] | None) -> tuple[FileRef, ...]:
    refs = []
    for entry in entries or []:
        if isinstance(entry, str):
            refs.append(FileRef(entry, entry))
        else:
            refs.append(FileRef(entry["source"], entry.get("target", entry["source"])))
    return tuple(refs)


def _policy(data: dict[str, Any] | None) -> UpdatePolicy:
    data = data or {}
    return UpdatePolicy(
        parallelism=int(data.get("parallelism", 1)),
        delay=parse_duration(data.get("delay", 0)),
        order=data.get("order", "stop-first"),
        failure_action=data.get("failure_action", "pause"),
        monitor=parse_duration(data.get("monitor", 0)),
    )


def _resources(data: dict[str, Any] | None) -> dict[str, int]:
    data = data or {}
    out = {}
    if "cpus" in data:
        out["nano_cpus"] = int(float(data["cpus"]) * 1e9)
    if "memory" in data:
        out["memory_bytes"] = memory_bytes(str(data["memory"]))
    return out


def _generic_resources(data: dict[str, Any] | None) -> tuple[tuple[str, int], ...]:
    # Stack files allow only discrete (counted) generic resources.
    entries = (data or {}).get("generic_resources") or []
    return tuple((str(e["discrete_resource_spec"]["kind"]), int(e["discrete_resource_spec"]["value"])) for e in entries)


def _healthcheck(data: dict[str, Any] | None) -> dict[str, Any] | None:
    if not data:
        return None
    return {
        "test": list(data["test"]),
        "interval": parse_duration(data.get("interval", 30)),
        "timeout": parse_duration(data.get("timeout", 30)),
        "retries": int(data.get("retries", 3)),
        "start_period": parse_duration(data.get("start_period", 0)),
    }


def _service(key: str, data: dict[str, Any], named: set[str]) -> ServiceDefinition:
    deploy = data.get("deploy", {})
    placement = deploy.get("placement", {})
    resources = deploy.get("resources", {})
    ports = tuple(
        PortSpec(int(p["published"]), int(p["target"]), p.get("protocol", "tcp"), p.get("mode", "ingress"))
        for p in data.get("ports", [])
    )
    grace = data.get("stop_grace_period")
    logging = data.get("logging") or {}
    return ServiceDefinition(
        key=key,
        image=data["image"],
        replicas=int(deploy.get("replicas", 1)),
        env={str(k): str(v) for k, v in (data.get("environment") or {}).items()},
        mounts=tuple(_mount(v, named) for v in data.get("volumes", [])),
        secrets=_file_refs(data.get("secrets")),
        configs=_file_refs(data.get("configs")),
        ports=ports,
        healthcheck=_healthcheck(data.get("healthcheck")),
        endpoint_mode=deploy.get("endpoint_mode", "vip"),
        update=_policy(deploy.get("update_config")),
        rollback=_policy(deploy.get("rollback_config")),
        restart=dict(deploy.get("restart_policy", {})),
        limits=_resources(resources.get("limits")),
        reservations=_resources(resources.get("reservations")),
        generic_resources=_generic_resources(resources.get("reservations")),
        constraints=tuple(placement.get("constraints", [])),
        max_replicas_per_node=placement.get("max_replicas_per_node"),
        stop_grace_period=parse_duration(grace) if grace is not None else None,
        networks=tuple(data.get("networks", [])),
        log_driver=logging.get("driver"),
        log_options={str(k): str(v) for k, v in (logging.get("options") or {}).items()},
    )


def parse_stack(text: str) -> StackDefinition:
    document = yaml.safe_load(text)
    named = set((document.get("volumes") or {}).keys())
    services = {key: _service(key, body, named) for key, body in document["services"].items()}
    secrets = document.get("secrets") or {}
    return StackDefinition(
        services=services,
        named_volumes=tuple(sorted(named)),
        config_files={name: body["file"] for name, body in (document.get("configs") or {}).items()},
        secret_files={name: body["file"] for name, body in secrets.items() if "file" in body},
        external_secrets=tuple(sorted(name for name, body in secrets.items() if body.get("external"))),
    )
