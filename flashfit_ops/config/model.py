"""The shape of `flashfit.yml`. Unknown keys are rejected everywhere (a typo is an error, not a
silently ignored setting). Secrets never live here: they come from the env file or the environment.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, PrivateAttr

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_MEMORY = re.compile(r"^\d+(?:\.\d+)?[KMG]$")


def parse_duration(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 500ms or 2m")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration; write e.g. 30s, 500ms, 2m or 1h")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """Compose/Docker style: whole seconds as "30s", fractions as milliseconds."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{int(round(seconds * 1000))}ms"


# Seconds as a float inside the program; "30s" style in files.
Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration, when_used="json")]


def _check_memory(value: object) -> str:
    text = str(value).strip().upper()
    if text.endswith("B"):
        text = text[:-1]
    if not _MEMORY.match(text):
        raise ValueError(f"{value!r} is not a memory size; write e.g. 512M or 8G")
    return text


MemorySize = Annotated[str, BeforeValidator(_check_memory)]

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
        "GRAFANA_ADMIN_PASSWORD",
    }
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class BuildConfig(Strict):
    base_image: str = "python:3.11-slim"
    context: str = "."
    wheelhouse: str = ".wheelhouse"


class ServerEnvironment(Strict):
    """The server's non-secret environment; names as in the operations document."""

    ENVIRONMENT: Literal["development", "staging", "production"] = "production"
    LOG_LEVEL: Literal["debug", "info", "warning", "error"] = "info"
    LOG_FORMAT: Literal["json", "text"] = "json"
    WORKERS: int = Field(1, ge=1, le=64)
    MODEL_CACHE_DIR: str = "/app/models"
    VECTOR_STORE_DIR: str = "/app/data"
    MAX_BATCH_SIZE: int = Field(32, ge=1, le=1024)
    INFERENCE_TIMEOUT: int = Field(30, ge=1, le=600)
    CORS_ORIGINS: list[str] = Field(default_factory=list)
    ALLOWED_HOSTS: list[str] = Field(default_factory=lambda: ["*"])

    def as_env(self) -> dict[str, str]:
        env = {}
        for name, value in self.model_dump().items():
            env[name] = ",".join(value) if isinstance(value, list) else str(value)
        return env


class ServerConfig(Strict):
    image: str = "flashfit/backend"
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


class ResourceSpec(Strict):
    memory: MemorySize | None = None
    cpus: float | None = Field(None, gt=0)


class ResourcesConfig(Strict):
    limits: ResourceSpec = Field(default_factory=lambda: ResourceSpec(memory="8G", cpus=4))
    reservations: ResourceSpec = Field(default_factory=lambda: ResourceSpec(memory="4G", cpus=2))


class HealthCheckConfig(Strict):
    liveness_path: str = Field("/health", pattern=r"^/")
    readiness_path: str = Field("/ready", pattern=r"^/")
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


class TLSConfig(Strict):
    enabled: bool = False
    domains: list[str] = Field(default_factory=list)
    certificate: str | None = None
    key: str | None = None
    hsts: bool = True
    hsts_max_age: int = Field(31536000, ge=0)


class RateLimitConfig(Strict):
    enabled: bool = True
    requests_per_second: float = Field(10, gt=0)
    burst: int = Field(20, ge=0)


class OptionalService(Strict):
    enabled: bool = False
    image: str


class RedisService(OptionalService):
    image: str = "redis:alpine"


class PrometheusService(OptionalService):
    enabled: bool = True
    image: str = "prom/prometheus:latest"


class GrafanaService(OptionalService):
    enabled: bool = True
    image: str = "grafana/grafana:latest"


class FrontendService(Strict):
    """Present only when a frontend image is configured."""

    image: str | None = None
    api_url: str = "http://localhost:8080"


class NginxService(Strict):
    image: str = "nginx:alpine"


class ServicesConfig(Strict):
    nginx: NginxService = Field(default_factory=NginxService)
    frontend: FrontendService = Field(default_factory=FrontendService)
    redis: RedisService = Field(default_factory=RedisService)
    prometheus: PrometheusService = Field(default_factory=PrometheusService)
    grafana: GrafanaService = Field(default_factory=GrafanaService)


class AlertsConfig(Strict):
    error_rate: float = Field(0.05, gt=0, le=1)
    p95_seconds: float = Field(1.0, gt=0)
    inference_seconds: float = Field(0.5, gt=0)


class MonitoringConfig(Strict):
    scrape_interval: Duration = 15.0
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)


class RetentionConfig(Strict):
    keep_last: int = Field(7, ge=0)
    keep_daily: int = Field(7, ge=0)
    keep_weekly: int = Field(4, ge=0)


class S3Config(Strict):
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    # Some S3-compatible stores reject the newer default checksums: "when_required" helps there.
    request_checksum_calculation: Literal["when_supported", "when_required"] = "when_supported"


class BackupConfig(Strict):
    target: str = Field("file://./backups", pattern=r"^(file|s3)://.+")
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    s3: S3Config = Field(default_factory=S3Config)


class VolumesConfig(Strict):
    """A Docker volume name, or a host path (starting with / or .) to bind-mount."""

    models: str = "model_cache"
    data: str = "vector_indices"


class SwarmConfig(Strict):
    """How `target: swarm` lays services out. The defaults suit normal hosts; a kernel without
    IPVS (no routing mesh) needs endpoint_mode dnsrr and publish_mode host."""

    endpoint_mode: Literal["vip", "dnsrr"] = "vip"
    publish_mode: Literal["ingress", "host"] = "ingress"
    proxy_replicas: int = Field(2, ge=1, le=64)
    # Placement constraints for the backend, e.g. ["node.labels.flashfit.models == true"].
    constraints: list[str] = Field(default_factory=list)
    # Pause between batches of a rolling update.
    update_delay: Duration = 0.0


class SecretsConfig(Strict):
    env_file: str = ".env"


class Config(Strict):
    project: str = Field("flashfit", pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")
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
    volumes: VolumesConfig = Field(default_factory=VolumesConfig)
    swarm: SwarmConfig = Field(default_factory=SwarmConfig)
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
