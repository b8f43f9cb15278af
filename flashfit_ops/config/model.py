"""The shape of `flashfit.yml`. Unknown keys are rejected everywhere (a typo is an error, not a
silently ignored setting). Secrets never live here: they come from the env file or the environment.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, PrivateAttr

from flashfit_ops.config.fields import (
    BackupTarget,
    CatalogLogUrl,
    ContainerPath,
    DomainName,
    EnvVarName,
    RegistryServer,
    HostFile,
    HostPath,
    HostPattern,
    HttpUrl,
    Identifier,
    IpNetwork,
    ImageName,
    ImageRef,
    Origin,
    PlacementConstraint,
    ProjectName,
    SafeText,
    UrlPath,
    VolumeSource,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_MEMORY_PATTERN = r"\d{1,7}(?:\.\d{1,3})?[KMG]"
_MEMORY = re.compile(f"^{_MEMORY_PATTERN}$")
# A week: longer waits are a typo, and huge numbers would not survive rendering as "<n>s".
MAX_DURATION = 7 * 24 * 3600.0


def parse_duration(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 500ms or 2m")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            seconds = math.inf
    else:
        match = _DURATION.match(str(value)) if isinstance(value, str) and len(value) <= 40 else None
        if not match:
            raise ValueError(f"{str(value)[:40]!r} is not a duration; write e.g. 30s, 500ms, 2m or 1h")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds > MAX_DURATION:
        raise ValueError(f"a duration may be at most {format_duration(MAX_DURATION)} (one week)")
    return seconds


def format_duration(seconds: float) -> str:
    """Compose/Docker style: whole seconds as "30s", fractions as milliseconds."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{int(round(seconds * 1000))}ms"


# Seconds as a float inside the program; "30s" style in files.
Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration, when_used="json")]


def _check_memory(value: object) -> str:
    text = str(value).strip().upper() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if text.endswith("B"):
        text = text[:-1]
    if not _MEMORY.match(text):
        raise ValueError(f"{str(value)[:40]!r} is not a memory size; write e.g. 512M or 8G")
    return text


MemorySize = Annotated[str, BeforeValidator(_check_memory), SafeText("memory size", _MEMORY_PATTERN)]

# Names that are secrets wherever they appear: rejected in flashfit.yml, redacted in output.
SECRET_NAMES = frozenset(
    {
        "SECRET_KEY",
        "JWT_SECRET_KEY",
        "DATABASE_URL",
        "REDIS_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "BACKUP_ENCRYPTION_KEY",
        # The name the grafana container itself reads from the env file.
        "GF_SECURITY_ADMIN_PASSWORD",
        "REGISTRY_PASSWORD",
        "PASSWORD",
    }
)


class Strict(BaseModel):
    # inf and nan are never a meaningful setting and would crash or silently disable a check.
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class BuildConfig(Strict):
    base_image: ImageRef = "python:3.11-slim"
    context: HostPath = "."
    wheelhouse: HostPath = ".wheelhouse"
    # mounted: the backend mounts volumes.models at MODEL_CACHE_DIR (one host, or models copied to
    # every node). baked: `flashfit build` copies the checkpoints from the host folder
    # volumes.models into the image (a layer of their own), and nothing mounts them.
    models: Literal["mounted", "baked"] = "mounted"


class ServerEnvironment(Strict):
    """The server's non-secret environment; names as in the operations document."""

    ENVIRONMENT: Literal["development", "staging", "production"] = "production"
    LOG_LEVEL: Literal["debug", "info", "warning", "error"] = "info"
    LOG_FORMAT: Literal["json", "text"] = "json"
    WORKERS: int = Field(1, ge=1, le=64)
    MODEL_CACHE_DIR: ContainerPath = "/app/models"
    VECTOR_STORE_DIR: ContainerPath = "/app/data"
    MAX_BATCH_SIZE: int = Field(32, ge=1, le=1024)
    # Seconds of model time per request; fractions allowed (the server takes down to 0.0001).
    INFERENCE_TIMEOUT: float = Field(30, ge=0.0001, le=600)
    CORS_ORIGINS: list[Origin] = Field(default_factory=list, max_length=64)
    ALLOWED_HOSTS: list[HostPattern] = Field(default_factory=lambda: ["*"], max_length=64)

    def as_env(self) -> dict[str, str]:
        env = {}
        for name, value in self.model_dump().items():
            if isinstance(value, float) and value.is_integer():
                value = int(value)  # 30, not 30.0
            env[name] = ",".join(value) if isinstance(value, list) else str(value)
        return env


class ServerConfig(Strict):
    image: ImageName = "flashfit/backend"
    build: BuildConfig = Field(default_factory=BuildConfig)
    environment: ServerEnvironment = Field(default_factory=ServerEnvironment)


class PortsConfig(Strict):
    backend: int = Field(8080, ge=1, le=65535)
    blue: int = Field(8081, ge=1, le=65535)
    green: int = Field(8082, ge=1, le=65535)
    frontend: int = Field(3000, ge=1, le=65535)
    http: int = Field(80, ge=1, le=65535)
    https: int = Field(443, ge=1, le=65535)
    redis: int = Field(6379, ge=1, le=65535)
    prometheus: int = Field(9090, ge=1, le=65535)
    grafana: int = Field(3001, ge=1, le=65535)
    alertmanager: int = Field(9093, ge=1, le=65535)


class ResourceSpec(Strict):
    memory: MemorySize | None = None
    cpus: float | None = Field(None, gt=0, le=1024)


_GPU_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")  # an index ("0") or a UUID ("GPU-3f2a...")


def _check_gpus(value: object) -> int | list[str] | None:
    """A count (1+) or NVIDIA device ids; ids are strings, as `nvidia-smi -L` prints them. No
    "all": Swarm reserves GPUs by count or id only, and a count says how many a replica needs."""
    if isinstance(value, str) and value.strip().isdigit():  # from an environment overlay
        value = int(value)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, list)):
        raise ValueError("write a GPU count (1) or a list of device ids ([\"0\", \"GPU-…\"])")
    if isinstance(value, int):
        if value < 1:
            raise ValueError("a GPU count must be at least 1 (leave gpus out for none)")
        return value
    ids = [str(item) for item in value]
    if not ids or len(set(ids)) != len(ids) or not all(_GPU_ID.match(i) for i in ids):
        raise ValueError("device ids must be distinct GPU indexes or UUIDs, e.g. [\"0\", \"1\"]")
    return ids


class ResourcesConfig(Strict):
    limits: ResourceSpec = Field(default_factory=lambda: ResourceSpec(memory="8G", cpus=4))
    reservations: ResourceSpec = Field(default_factory=lambda: ResourceSpec(memory="4G", cpus=2))
    # GPUs per backend container: a count or device ids. Set: the server runs DEVICE=cuda.
    gpus: Annotated[int | list[str] | None, BeforeValidator(_check_gpus)] = None

    def server_env(self) -> dict[str, str]:
        # A container given GPUs must run on them: with DEVICE=cuda a missing GPU stops it at
        # startup (exit 3) instead of serving on the CPU unnoticed.
        return {"DEVICE": "cuda"} if self.gpus is not None else {}


class HealthCheckConfig(Strict):
    liveness_path: UrlPath = "/health"
    readiness_path: UrlPath = "/ready"
    interval: Duration = 1.0
    timeout: Duration = 5.0
    retries: int = Field(3, ge=1, le=100)
    start_period: Duration = 60.0
    # Consecutive successful probes before a container counts as ready.
    success_threshold: int = Field(1, ge=1, le=20)


class DeployConfig(Strict):
    strategy: Literal["single", "blue-green", "rolling"] = "blue-green"
    # Longest wait for a new version to become ready before it is rolled back.
    deadline: Duration = 120.0
    drain_timeout: Duration = 30.0
    parallelism: int = Field(1, ge=1, le=64)
    lock_wait: Duration = 0.0
    # A version that dies within this window after the switch is rolled back too.
    monitor_window: Duration = 10.0
    keep_versions: int = Field(3, ge=1, le=50)
    warm_standby: bool = True  # the previous version runs (out of rotation) through the monitor window
    max_replicas: int = Field(8, ge=1, le=64)  # upstream slots: replica counts up to this switch with no nginx reload
    # Warm spares of the live version, out of rotation behind the standby slots: a live backend
    # that is killed or stopped is replaced by a relink (no cold start). Each costs one backend's memory.
    spare_replicas: int = Field(0, ge=0, le=8)
    keeper: bool = True  # run <project>-keeper, which brings a killed proxy or backend back without an operator


class TLSConfig(Strict):
    enabled: bool = False
    domains: list[DomainName] = Field(default_factory=list, max_length=64)
    certificate: HostFile | None = None
    key: HostFile | None = None
    hsts: bool = True
    hsts_max_age: int = Field(31536000, ge=0, le=2**31 - 1)


class RateLimitConfig(Strict):
    enabled: bool = True
    requests_per_second: float = Field(10, gt=0, le=1_000_000)
    burst: int = Field(20, ge=0, le=1_000_000)


class OptionalService(Strict):
    enabled: bool = False
    image: ImageRef


class RedisService(OptionalService):
    image: ImageRef = "redis:alpine"


class PrometheusService(OptionalService):
    enabled: bool = True
    image: ImageRef = "flashfit/prometheus:bookworm"


class AlertmanagerService(OptionalService):
    enabled: bool = True
    image: ImageRef = "flashfit/alertmanager:bookworm"


class GrafanaService(OptionalService):
    enabled: bool = True
    image: ImageRef = "grafana/grafana:latest"


class FrontendService(Strict):
    """Present only when a frontend image is configured."""

    image: ImageRef | None = None
    api_url: HttpUrl = "http://localhost:8080"


class NginxService(Strict):
    image: ImageRef = "nginx:alpine"


class ServicesConfig(Strict):
    nginx: NginxService = Field(default_factory=NginxService)
    frontend: FrontendService = Field(default_factory=FrontendService)
    redis: RedisService = Field(default_factory=RedisService)
    prometheus: PrometheusService = Field(default_factory=PrometheusService)
    grafana: GrafanaService = Field(default_factory=GrafanaService)
    alertmanager: AlertmanagerService = Field(default_factory=AlertmanagerService)


class AlertsConfig(Strict):
    error_rate: float = Field(0.05, gt=0, lt=1)
    p95_seconds: float = Field(1.0, gt=0, le=3600)
    inference_seconds: float = Field(0.5, gt=0, le=3600)
    # The rate window of every rule, and how long a condition must hold before its alert fires
    # (the latency rules wait twice as long; BackendDown at most a minute).
    window: Duration = Field(300.0, ge=1)
    pending: Duration = 300.0


class MonitoringConfig(Strict):
    # `flashfit deploy` runs Prometheus and Alertmanager (and Grafana, when its image is here).
    enabled: bool = False
    scrape_interval: Duration = Field(15.0, ge=1)
    # The env-file variable holding the Alertmanager webhook URL (a secret: never in flashfit.yml).
    webhook_url_env: EnvVarName = "ALERT_WEBHOOK_URL"
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    # Who may read /metrics, /docs and /openapi.json through nginx (addresses or CIDR networks);
    # everyone else gets 403. The default: this host and Docker's private networks.
    allow_from: list[IpNetwork] = Field(default_factory=lambda: ["127.0.0.1", "::1", "172.16.0.0/12"], max_length=64)


class RetentionConfig(Strict):
    keep_last: int = Field(7, ge=0, le=100_000)
    keep_daily: int = Field(7, ge=0, le=100_000)
    keep_weekly: int = Field(4, ge=0, le=100_000)


class S3Config(Strict):
    endpoint_url: HttpUrl | None = None
    region: Identifier | None = None
    profile: Identifier | None = None
    # Some S3-compatible stores reject the newer default checksums: "when_required" helps there.
    request_checksum_calculation: Literal["when_supported", "when_required"] = "when_supported"


class BackupConfig(Strict):
    target: BackupTarget = "file://./backups"
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    s3: S3Config = Field(default_factory=S3Config)


class CatalogConfig(Strict):
    """One catalogue for every node: each replica follows a shared log of committed segments in
    S3 (README, multi-node). Credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) come from the
    env file, never from here."""

    sync_url: CatalogLogUrl | None = None  # None: each node keeps its own catalogue
    endpoint_url: HttpUrl | None = None  # MinIO or another S3-compatible store
    region: Identifier | None = None
    poll_interval: float = Field(0.5, ge=0.05, le=60)  # seconds between a replica's looks at the log
    # A checkpoint of the whole catalogue every that many commits, for nodes that join late (0: none).
    checkpoint_every: int = Field(1000, ge=0, le=10_000_000)

    def server_env(self) -> dict[str, str]:
        if self.sync_url is None:
            return {}
        env = {"CATALOG_SYNC_URL": self.sync_url, "CATALOG_SYNC_POLL_INTERVAL": f"{self.poll_interval:g}",
               "CATALOG_SYNC_CHECKPOINT_EVERY": str(self.checkpoint_every)}
        if self.endpoint_url:
            env["CATALOG_SYNC_ENDPOINT"] = self.endpoint_url
        if self.region:
            env["CATALOG_SYNC_REGION"] = self.region
        return env


class VolumesConfig(Strict):
    """A Docker volume name, or a host path (starting with / or .) to bind-mount."""

    models: VolumeSource = "model_cache"
    data: VolumeSource = "vector_indices"


class SwarmConfig(Strict):
    """How `target: swarm` lays services out. The defaults suit normal hosts; a kernel without
    IPVS (no routing mesh) needs endpoint_mode dnsrr and publish_mode host."""

    endpoint_mode: Literal["vip", "dnsrr"] = "vip"
    publish_mode: Literal["ingress", "host"] = "ingress"
    proxy_replicas: int = Field(2, ge=1, le=64)
    # Placement constraints for the backend, e.g. ["node.labels.flashfit.models == true"].
    constraints: list[PlacementConstraint] = Field(default_factory=list, max_length=64)
    # Pause between batches of a rolling update.
    update_delay: Duration = 0.0


class RegistryConfig(Strict):
    """Where `flashfit build --push` sends images and Swarm nodes pull them from. Credentials
    (REGISTRY_USERNAME, REGISTRY_PASSWORD or REGISTRY_PASSWORD_FILE) come from the env file or
    the environment, never from here."""

    server: RegistryServer | None = None  # host[:port]; None: no registry
    repository: ImageName | None = None  # default: server.image
    insecure: bool = False  # plain HTTP (loopback servers always are)


class SecretsConfig(Strict):
    env_file: HostFile = ".env"


class Config(Strict):
    project: ProjectName = "flashfit"
    target: Literal["local", "swarm"] = "local"
    replicas: int = Field(1, ge=1, le=64)
    server: ServerConfig = Field(default_factory=ServerConfig)
    ports: PortsConfig = Field(default_factory=PortsConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    healthcheck: HealthCheckConfig = Field(default_factory=HealthCheckConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    tls: TLSConfig = Field(default_factory=TLSConfig)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    services: ServicesConfig = Field(default_factory=ServicesConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    backup: BackupConfig = Field(default_factory=BackupConfig)
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    volumes: VolumesConfig = Field(default_factory=VolumesConfig)
    swarm: SwarmConfig = Field(default_factory=SwarmConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    secrets: SecretsConfig = Field(default_factory=SecretsConfig)
    # Per-environment overlays, deep-merged over the keys above; validated after merging.
    environments: dict[Literal["dev", "prod"], dict] = Field(default_factory=dict)

    # Set by the loader: the folder of the config file (relative paths resolve against it), the env.
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _env: str | None = PrivateAttr(default=None)

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def env(self) -> str | None:
        return self._env

    def resolve_path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self._base_dir / path).resolve()

    @property
    def network_name(self) -> str:
        return f"{self.project}_net"
