"""templates/ + config -> {relative path: file}. Pure and deterministic: the same config renders
byte-identical files. Writing is separate and all-or-nothing (see write_tree)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from flashfit_ops.config.model import Config, format_duration
import re

from flashfit_ops.config.rules import PRIVATE_PATHS, published_ports
from flashfit_ops.fileio import fsync_dir
from flashfit_ops.monitoring.rule_tests import rule_tests
from flashfit_ops.errors import UsageError
from flashfit_ops.labels import LABEL_COLOR
from flashfit_ops.plan.common import CONTAINER_SSL_DIR
from flashfit_ops.service_spec import (  # re-exported
    CONTAINER_PORT,
    backend_mounts,
    backend_service,
    image_repository,
    is_host_path,
    probe_command,
)
from flashfit_contract.metrics import (
    HTTP_REQUEST_DURATION_SECONDS,
    HTTP_REQUESTS_TOTAL,
    MODEL_INFERENCE_DURATION_SECONDS,
    VECTOR_STORE_SIZE,
)

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
COLORS = ("blue", "green")
# Where the proxy finds certificates inside its container.


@dataclass(frozen=True)
class RenderedFile:
    text: str
    mode: int = PUBLIC_MODE


def template_dir() -> Path:
    """Inside an installed wheel the templates ship as flashfit_ops/templates; in a checkout they
    are the top-level templates/ folder."""
    packaged = Path(__file__).resolve().parent / "templates"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parent.parent / "templates"
    if checkout.is_dir():
        return checkout
    raise UsageError("the templates folder is missing from this installation", hint="reinstall flashfit")


def _yaml_value(value: Any) -> str:
    # JSON scalars are valid YAML and quote everything that needs it.
    return json.dumps(value)


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["duration"] = format_duration
    env.filters["y"] = _yaml_value
    return env


def _named_volumes(config: Config) -> list[str]:
    names = [m.source for m in backend_mounts(config) if m.kind == "volume"]
    services = config.services
    for enabled, name in (
        (services.redis.enabled, "redis_data"),
        (services.prometheus.enabled, "prometheus_data"),
        (services.grafana.enabled, "grafana_data"),
    ):
        if enabled:
            names.append(name)
    return names


def _context(config: Config, **extra: Any) -> dict[str, Any]:
    metrics = {
        "requests": HTTP_REQUESTS_TOTAL,
        "duration": HTTP_REQUEST_DURATION_SECONDS,
        "inference": MODEL_INFERENCE_DURATION_SECONDS,
        "store_size": VECTOR_STORE_SIZE,
    }
    context = {
        "cfg": config,
        "backend": backend_service(config),
        "metrics": metrics,
        "ports": published_ports(config),
        "ssl_dir": CONTAINER_SSL_DIR,
        "cert_name": Path(config.tls.certificate).name if config.tls.certificate else "server.crt",
        "key_name": Path(config.tls.key).name if config.tls.key else "server.key",
        "container_port": CONTAINER_PORT,
        "private_paths_regex": "^(" + "|".join(re.escape(p) for p in PRIVATE_PATHS) + ")(/|$)",
        "probe_command": probe_command,
        "named_volumes": _named_volumes(config),
        "is_host_path": is_host_path,
        "label_color": LABEL_COLOR,
    }
    context.update(extra)
    return context


def render_template(name: str, config: Config, **extra: Any) -> str:
    return _environment().get_template(name).render(_context(config, **extra))


def render_nginx(
    config: Config,
    upstreams: list[str],
    *,
    tls: bool | None = None,
    dynamic: bool = False,
    keepalive: bool = True,
    standby: list[str] | None = None,
) -> str:
    """The proxy config for a set of upstream addresses (host:port, or unix:/run/flashfit/slot-<n>.sock
    for the replica slots of a deploy). `dynamic` (Swarm) resolves the single upstream name through
    Docker's DNS per request. `keepalive`: reuse upstream connections (off for slots, so nothing
    keeps talking to a container after its slot was switched away). `standby`: the backup slots
    (a deploy's replica slots have them; see templates/nginx/nginx.conf.j2)."""
    if not upstreams:
        raise ValueError("nginx needs at least one upstream server")
    if dynamic and len(upstreams) != 1:
        raise ValueError("a dynamic upstream is one service name resolved at request time")
    tls = config.tls.enabled if tls is None else tls
    return render_template(
        "nginx/nginx.conf.j2", config, upstreams=upstreams, tls=tls, dynamic=dynamic, keepalive=keepalive, standby=standby or []
    )


def render_stack(config: Config, version: str | None = None) -> str:
    """docker-stack.yml: the one definition of the Swarm services, used by `flashfit render` and,
    with a concrete version, by `flashfit deploy --target swarm`."""
    image_tag = version or "${FLASHFIT_VERSION:-latest}"
    return render_template("compose/docker-stack.yml.j2", config, image_ref=f"{image_repository(config)}:{image_tag}")


def render_prometheus(config: Config, discovery: str, *, alertmanager: str | None = None, targets_file: str | None = None) -> str:
    """prometheus.yml. `discovery`: "compose" (the `backend` service name), "swarm" (one target
    per task, tasks.backend) or "file" (`flashfit deploy`: the targets file rewritten at each switch)."""
    if discovery not in ("compose", "swarm", "file") or (discovery == "file") != bool(targets_file):
        raise ValueError(f"bad discovery {discovery!r} (a targets file goes with discovery 'file' only)")
    return render_template(
        "monitoring/prometheus.yml.j2", config, discovery=discovery, alertmanager=alertmanager, targets_file=targets_file
    )


SWARM_NGINX_FILE = "nginx-swarm.conf"


def render_swarm_nginx(config: Config) -> str:
    return render_nginx(config, [f"backend:{CONTAINER_PORT}"], dynamic=True)


def _compose_backend_upstreams(config: Config) -> list[str]:
    return [f"backend:{CONTAINER_PORT}"]


def render_all(config: Config) -> dict[str, RenderedFile]:
    files: dict[str, RenderedFile] = {}

    def add(path: str, template: str, mode: int = PUBLIC_MODE, **extra: Any) -> None:
        files[path] = RenderedFile(render_template(template, config, **extra), mode)

    add("docker-compose.dev.yml", "compose/docker-compose.dev.yml.j2")
    add("docker-compose.prod.yml", "compose/docker-compose.prod.yml.j2")
    for color in COLORS:
        add(f"docker-compose.{color}.yml", "compose/docker-compose.color.yml.j2", color=color)
    files["docker-stack.yml"] = RenderedFile(render_stack(config))
    files[SWARM_NGINX_FILE] = RenderedFile(render_swarm_nginx(config))
    files["nginx.conf"] = RenderedFile(render_nginx(config, _compose_backend_upstreams(config), tls=False))
    files["nginx-ssl.conf"] = RenderedFile(render_nginx(config, _compose_backend_upstreams(config), tls=True))
    discovery = "swarm" if config.target == "swarm" else "compose"
    files["monitoring/prometheus.yml"] = RenderedFile(render_prometheus(config, discovery))
    add("monitoring/alert_rules.yml", "monitoring/alert_rules.yml.j2")
    files["monitoring/alert_rules_test.yml"] = RenderedFile(rule_tests(config))
    add("monitoring/grafana/dashboards/flashfit.json", "monitoring/grafana/dashboard.json.j2")
    add("monitoring/grafana/provisioning/dashboards/flashfit.yml", "monitoring/grafana/dashboards-provider.yml.j2")
    add("monitoring/grafana/provisioning/datasources/prometheus.yml", "monitoring/grafana/datasource.yml.j2")
    add("Dockerfile", "docker/Dockerfile.j2")
    add(".dockerignore", "docker/dockerignore.j2")
    # An example of the secrets file: copied to .env and filled in, so it gets a secret's mode.
    add(".env.example", "env.example.j2", mode=SECRET_MODE)
    return files


def write_tree(files: dict[str, RenderedFile], out_dir: Path) -> list[Path]:
    """Write every file into a temporary folder beside out_dir, then move each into place.
    A failure while writing leaves out_dir exactly as it was."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.render-", dir=out_dir.parent))
    try:
        for relative, file in sorted(files.items()):
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file.mode)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(file.text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(target, file.mode)  # the umask may have narrowed it
        written = []
        for relative in sorted(files):
            target = out_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / relative, target)
            written.append(target)
        for folder in {p.parent for p in written}:
            fsync_dir(folder)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
