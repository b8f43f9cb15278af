"""One small module per area. Importing this package registers every check; ORDER is the order
of the report (cheap, foundational checks first)."""

from flashfit_ops.doctor.checks import (  # noqa: F401 - imported to register
    backup,
    config,
    containers,
    disk,
    engine,
    gpu,
    http,
    lock,
    monitoring,
    nginx,
    ports,
    resources,
    stores,
    swarm,
    tls,
)

ORDER = [
    "config",
    "docker",
    "containers",
    "ports",
    "proxy-health",
    "backend-health",
    "latency",
    "inference",
    "store-bench",
    "resources",
    "gpu",
    "disk",
    "nginx-config",
    "upstream",
    "tls",
    "lock",
    "monitoring",
    "backup",
    "stores",
    "swarm",
]
