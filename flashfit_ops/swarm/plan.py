"""A Swarm deploy as data: (config, observed cluster, version) -> steps. Secret values never
appear in a plan, only the content-addressed names of the Swarm objects that hold them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import ClassVar

from flashfit_ops.config.model import Config
from flashfit_ops.errors import Unavailable
from flashfit_ops.plan.steps import Step
from flashfit_ops.swarm.sdk import network_name, service_name
from flashfit_ops.swarm.spec import StackDefinition

# The service order of a deploy: the backend first, so the proxy never points at nothing.
SERVICE_ORDER = ("backend", "nginx")


@dataclass(frozen=True)
class ObservedService:
    name: str
    image: str
    replicas: int
    update_state: str | None = None
    # What flashfit last asked for (a service label): an unchanged service is left alone, since
    # re-sending even the same definition makes Swarm replace its tasks.
    spec_digest: str | None = None


@dataclass(frozen=True)
class SwarmObserved:
    swarm_active: bool
    is_manager: bool
    services: dict[str, ObservedService] = field(default_factory=dict)
    secrets: frozenset[str] = frozenset()
    configs: frozenset[str] = frozenset()
    networks: frozenset[str] = frozenset()


@dataclass(frozen=True)
class EnsureSwarmNetwork(Step):
    kind: ClassVar[str] = "ensure_swarm_network"
    name: str

    def describe(self) -> str:
        return f"create overlay network {self.name}"


@dataclass(frozen=True)
class CreateSwarmObject(Step):
    """A secret or config, named by a digest of its content: Swarm objects are immutable, so a
    change is a new object and the running version keeps the old one until it is replaced."""

    kind: ClassVar[str] = "create_swarm_object"
    object_kind: str  # secret | config
    source: str  # its name in the stack
    name: str

    def describe(self) -> str:
        return f"create {self.object_kind} {self.name} (for {self.source})"


@dataclass(frozen=True)
class UpsertService(Step):
    kind: ClassVar[str] = "upsert_service"
    key: str
    name: str
    image: str
    action: str  # create | update

    def describe(self) -> str:
        return f"{self.action} service {self.name} with {self.image}"


@dataclass(frozen=True)
class AwaitConvergence(Step):
    kind: ClassVar[str] = "await_convergence"
    name: str
    replicas: int
    deadline: float

    def describe(self) -> str:
        return f"wait until {self.name} runs {self.replicas} healthy task(s) (deadline {self.deadline:g}s)"


@dataclass(frozen=True)
class ProbeThroughProxy(Step):
    kind: ClassVar[str] = "probe_through_proxy"
    url: str
    deadline: float

    def describe(self) -> str:
        return f"check {self.url} answers 200 through the proxy"


@dataclass(frozen=True)
class PruneSwarmObjects(Step):
    kind: ClassVar[str] = "prune_swarm_objects"
    keep: tuple[str, ...]

    def describe(self) -> str:
        return "remove this project's secrets and configs that no service uses any more"


def object_name(project: str, source: str, content: bytes) -> str:
    return f"{project}_{source}_{hashlib.sha256(content).hexdigest()[:12]}"


def spec_digest(definition: object, object_names: dict[tuple[str, str], str]) -> str:
    """A digest of everything that shapes a service: its definition (image, and so version,
    included) and the content-addressed names of the secrets and configs it mounts."""
    text = repr((definition, sorted(object_names.items())))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_swarm_deploy(
    config: Config,
    observed: SwarmObserved,
    stack: StackDefinition,
    *,
    object_names: dict[tuple[str, str], str],
    digests: dict[str, str],
    proxy_host: str = "127.0.0.1",
) -> list[Step]:
    """object_names maps (secret|config, stack name) to the content-addressed object name;
    digests maps each service to the digest of its wanted definition; proxy_host is where the
    proxy's published port answers from here (the manager DOCKER_HOST names)."""
    if not observed.swarm_active:
        raise Unavailable(
            "this Docker engine is not part of a swarm",
            hint="run `docker swarm init --advertise-addr <this host's address>` or join a swarm first",
        )
    if not observed.is_manager:
        raise Unavailable("this Docker engine is a swarm worker", hint="run flashfit against a manager node (DOCKER_HOST)")
    project = config.project
    steps: list[Step] = []
    for network in sorted({net for service in stack.services.values() for net in service.networks}):
        name = network_name(project, network)
        if name not in observed.networks:
            steps.append(EnsureSwarmNetwork(name))
    existing = observed.secrets | observed.configs
    for (kind, source), name in sorted(object_names.items()):
        if name not in existing:
            steps.append(CreateSwarmObject(kind, source, name))
    deadline = config.deploy.deadline
    for key in SERVICE_ORDER:
        definition = stack.services[key]
        name = service_name(project, key)
        current = observed.services.get(key)
        if current is None or current.spec_digest != digests[key]:
            steps.append(UpsertService(key, name, definition.image, "update" if current else "create"))
        steps.append(AwaitConvergence(name, definition.replicas, deadline))
    steps.append(ProbeThroughProxy(f"http://{proxy_host}:{config.ports.http}{config.healthcheck.readiness_path}", deadline))
    steps.append(PruneSwarmObjects(tuple(sorted(object_names.values()))))
    return steps
