"""The backend service, described once: its mounts, environment, resources, healthcheck, logging
and labels, computed from the config. The deploy plan (plan/common.py: backend_spec) and every
rendered compose and stack file (templates/compose/) take them from here, so `flashfit deploy`
and `docker compose up` start the same container; tests/unit/ops/test_service_spec.py holds them
equal. Pure: config in, frozen data out.

What each consumer adds on top is its own business and stays with it: a deploy adds the version,
the replica's Unix socket and its identity labels; the stack adds the secrets' file paths; the
dev file adds DEBUG."""

from __future__ import annotations

from dataclasses import dataclass

from flashfit_ops.config.model import Config
from flashfit_ops.labels import LABEL_PROJECT, LABEL_ROLE, ROLE_BACKEND

# The port the server listens on inside its container, whatever the host publishes.
CONTAINER_PORT = 8080
# Log rotation: without it the engine's json-file log grows until the disk is full.
LOG_DRIVER = "json-file"
LOG_OPTIONS = (("max-file", "3"), ("max-size", "10m"))


@dataclass(frozen=True)
class Mount:
    source: str  # a volume name or an absolute host path
    target: str
    kind: str = "volume"  # volume | bind
    read_only: bool = False

    @property
    def short_syntax(self) -> str:
        """As compose's `volumes:` list writes it: source:target[:ro]."""
        return f"{self.source}:{self.target}{':ro' if self.read_only else ''}"


@dataclass(frozen=True)
class Healthcheck:
    test: tuple[str, ...]  # the command, without compose's leading "CMD"
    interval: float
    timeout: float
    retries: int
    start_period: float


@dataclass(frozen=True)
class Logging:
    driver: str
    options: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Resources:
    memory: str | None = None
    cpus: float | None = None


@dataclass(frozen=True)
class BackendService:
    port: int
    env: tuple[tuple[str, str], ...]  # sorted by name
    mounts: tuple[Mount, ...]  # models (read-only, unless baked into the image), then data
    limits: Resources
    reservations: Resources
    healthcheck: Healthcheck
    logging: Logging
    labels: tuple[tuple[str, str], ...]  # sorted by name


def registry_configured(config: Config) -> bool:
    return bool(config.registry.server)


def registry_repository(config: Config) -> str:
    """The repository path inside the registry (without the server)."""
    return config.registry.repository or config.server.image


def image_repository(config: Config) -> str:
    """What deploys name: server/repository with a registry, the local repository without."""
    if not registry_configured(config):
        return config.server.image
    return f"{config.registry.server}/{registry_repository(config)}"


def is_host_path(source: str) -> bool:
    """A volume setting starting with / or . is a host folder to bind-mount, else a volume name."""
    return source.startswith(("/", "."))


def probe_command(path: str) -> list[str]:
    """The server's own probe of one of its paths, run inside its container."""
    return ["flashfit-server", "probe", "--url", f"http://127.0.0.1:{CONTAINER_PORT}{path}"]


def models_baked(config: Config) -> bool:
    """The image carries the checkpoints at MODEL_CACHE_DIR (server.build.models: baked)."""
    return config.server.build.models == "baked"


def backend_mounts(config: Config) -> tuple[Mount, ...]:
    """The models and the data folder. The models are read-only: the server only reads its
    checkpoints (local files only); they are written on the host (`flashfit-server models
    make-tiny|pull DIR`) or by a restore, never through the service's mount. Baked models are
    not mounted at all: a mount would hide the image's copy (and need the folder on every node)."""
    env = config.server.environment
    mounts = []
    wanted = [(config.volumes.data, env.VECTOR_STORE_DIR, False)]
    if not models_baked(config):
        wanted.insert(0, (config.volumes.models, env.MODEL_CACHE_DIR, True))
    for source, target, read_only in wanted:
        if is_host_path(source):
            mounts.append(Mount(str(config.resolve_path(source)), target, "bind", read_only))
        else:
            mounts.append(Mount(source, target, "volume", read_only))
    return tuple(mounts)


def backend_service(config: Config) -> BackendService:
    health = config.healthcheck
    env = {**config.server.environment.as_env(), **config.resources.server_env(), **config.catalog.server_env()}
    limits, reservations = config.resources.limits, config.resources.reservations
    return BackendService(
        port=CONTAINER_PORT,
        env=tuple(sorted(env.items())),
        mounts=backend_mounts(config),
        limits=Resources(limits.memory, limits.cpus),
        reservations=Resources(reservations.memory, reservations.cpus),
        healthcheck=Healthcheck(
            test=tuple(probe_command(health.readiness_path)),
            interval=health.interval,
            timeout=health.timeout,
            retries=health.retries,
            start_period=health.start_period,
        ),
        logging=Logging(LOG_DRIVER, LOG_OPTIONS),
        labels=tuple(sorted({LABEL_PROJECT: config.project, LABEL_ROLE: ROLE_BACKEND}.items())),
    )
