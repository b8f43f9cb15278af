"""Rules that span several fields: checked after each field validated on its own."""

from __future__ import annotations

from pathlib import PurePosixPath

from flashfit_ops.config.model import Config
from flashfit_ops.errors import Problem

_MEMORY_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
# Served by the backend but not public: nginx lets only monitoring.allow_from reach them.
PRIVATE_PATHS = ("/metrics", "/docs", "/redoc", "/openapi.json")


def is_private_path(path: str) -> bool:
    return any(path == private or path.startswith(private + "/") for private in PRIVATE_PATHS)


def memory_bytes(size: str) -> int:
    return int(float(size[:-1]) * _MEMORY_UNITS[size[-1]])


def published_ports(config: Config) -> dict[str, int]:
    """Every host port the rendered deployment publishes, by the config path that sets it."""
    ports = {"ports.http": config.ports.http, "ports.backend": config.ports.backend}
    ports["ports.blue"] = config.ports.blue
    ports["ports.green"] = config.ports.green
    if config.tls.enabled:
        ports["ports.https"] = config.ports.https
    if config.services.frontend.image:
        ports["ports.frontend"] = config.ports.frontend
    if config.services.redis.enabled:
        ports["ports.redis"] = config.ports.redis
    if config.services.prometheus.enabled:
        ports["ports.prometheus"] = config.ports.prometheus
    if config.services.grafana.enabled:
        ports["ports.grafana"] = config.ports.grafana
    if config.monitoring.enabled and config.services.alertmanager.enabled:
        ports["ports.alertmanager"] = config.ports.alertmanager
    return ports


def _port_conflicts(config: Config) -> list[Problem]:
    seen: dict[int, str] = {}
    problems = []
    for path, port in published_ports(config).items():
        if port in seen:
            problems.append(Problem(path, f"host port {port} is already used by {seen[port]}: two services cannot share it"))
        else:
            seen[port] = path
    return problems


def _tls_problems(config: Config) -> list[Problem]:
    tls = config.tls
    problems = []
    if tls.enabled:
        if not tls.certificate:
            problems.append(Problem("tls.certificate", "TLS is enabled but no certificate file is set"))
        if not tls.key:
            problems.append(Problem("tls.key", "TLS is enabled but no private key file is set"))
        if not tls.domains:
            problems.append(Problem("tls.domains", "TLS is enabled but no domain is listed"))
    elif tls.certificate and not tls.key:
        problems.append(Problem("tls.key", "a certificate is set without its private key"))
    elif tls.key and not tls.certificate:
        problems.append(Problem("tls.certificate", "a private key is set without its certificate"))
    if tls.certificate and tls.key and PurePosixPath(tls.certificate).name == PurePosixPath(tls.key).name:
        # Both are mounted into one folder of the proxy under their own names.
        problems.append(Problem("tls.key", "the key file needs a name other than the certificate's (e.g. site.key, site.crt)"))
    return problems


def _resource_problems(config: Config) -> list[Problem]:
    limits, reservations = config.resources.limits, config.resources.reservations
    problems = []
    if limits.memory and reservations.memory and memory_bytes(reservations.memory) > memory_bytes(limits.memory):
        problems.append(Problem("resources.reservations.memory", f"reserves {reservations.memory}, more than the {limits.memory} limit"))
    if limits.cpus and reservations.cpus and reservations.cpus > limits.cpus:
        problems.append(Problem("resources.reservations.cpus", f"reserves {reservations.cpus} CPUs, more than the {limits.cpus} limit"))
    return problems


def _deploy_problems(config: Config) -> list[Problem]:
    problems = []
    if config.deploy.parallelism > config.replicas and config.deploy.strategy == "rolling":
        problems.append(
            Problem("deploy.parallelism", f"replaces {config.deploy.parallelism} at a time but only {config.replicas} replicas run")
        )
    health = config.healthcheck
    if health.timeout > config.deploy.deadline:
        problems.append(Problem("healthcheck.timeout", "a single probe may not take longer than deploy.deadline"))
    if health.liveness_path == health.readiness_path:
        problems.append(Problem("healthcheck.readiness_path", "must differ from liveness_path (/ready vs /health)"))
    for field in ("liveness_path", "readiness_path"):
        path = getattr(health, field)
        if is_private_path(path):
            problems.append(Problem(f"healthcheck.{field}", f"{path} is reserved for the monitoring network "
                                    f"({', '.join(PRIVATE_PATHS)}): probes need a public path such as /health"))
    return problems


def _swarm_problems(config: Config) -> list[Problem]:
    swarm = config.swarm
    if swarm.endpoint_mode == "dnsrr" and swarm.publish_mode != "host":
        return [Problem("swarm.publish_mode", "endpoint_mode dnsrr publishes ports only in host mode: set publish_mode: host")]
    return []


def _model_problems(config: Config) -> list[Problem]:
    # A host path starts with / or . (as service_spec.is_host_path reads volumes; config imports
    # no other flashfit_ops package).
    if config.server.build.models == "baked" and not config.volumes.models.startswith(("/", ".")):
        return [Problem("volumes.models", f"server.build.models: baked copies the models from a host folder, "
                        f"but {config.volumes.models!r} is a volume name: set a path such as ./models")]
    return []


def cross_field_problems(config: Config) -> list[Problem]:
    return [
        *_port_conflicts(config),
        *_tls_problems(config),
        *_resource_problems(config),
        *_deploy_problems(config),
        *_swarm_problems(config),
        *_model_problems(config),
    ]
