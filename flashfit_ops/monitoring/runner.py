"""Bring the monitoring containers up beside the stack (`flashfit deploy` calls `ensure` when
monitoring.enabled): images found or built, files written, each container kept when its spec
digest matches, reloaded when only its files changed, recreated otherwise. Never touches the
backends or the proxy; a failure here stops the deploy before any traffic moves."""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

from flashfit_ops import console
from flashfit_ops.config.model import Config
from flashfit_ops.engine.protocol import Engine, EngineClient
from flashfit_ops.errors import OperationFailed
from flashfit_ops.fileio import atomic_write_text
from flashfit_ops.monitoring import stack
from flashfit_ops.monitoring.targets import monitoring_dir, targets_path, write_targets
from flashfit_ops.plan.common import LABEL_PROJECT

READY_TIMEOUT = 90.0
GRAFANA_MISSING = (
    "Grafana is not packaged by Debian and {image} is not on this engine: monitoring runs without "
    "dashboards. Load the image (docker pull/load {image}) and deploy again."
)


def webhook_url(config: Config, environ: Mapping[str, str] | None = None) -> str | None:
    """The alert webhook URL from the env file (the environment wins). Never printed."""
    import os

    from flashfit_ops.config.secrets import env_file_path, parse_env_file

    name = config.monitoring.webhook_url_env
    environ = os.environ if environ is None else environ
    if environ.get(name):
        return environ[name]
    path = env_file_path(config)
    return (parse_env_file(path).get(name) if path.is_file() else None) or None


def write_files(config: Config, url: str | None) -> set[str]:
    """Write the monitoring files; return the folders (prometheus, alertmanager, ...) whose
    content changed."""
    base = monitoring_dir(config)
    changed = set()
    for relative, file in stack.monitoring_files(config, url).items():
        path = base / relative
        try:
            same = path.read_text(encoding="utf-8") == file.text and (path.stat().st_mode & 0o777) == file.mode
        except (FileNotFoundError, UnicodeDecodeError):
            same = False
        if not same:
            atomic_write_text(path, file.text, file.mode)
            changed.add(relative.split("/", 1)[0])
    return changed


def _ensure_image(client: EngineClient, config: Config, spec: stack.MonitorSpec) -> str | None:
    """None when the image is here (found or built); else why it cannot be had."""
    from flashfit_ops.images import bootstrap as boot

    if boot.local_image(client, spec.image) is not None:
        return None
    derived = {r.image: r for r in boot.DERIVED.values()}.get(spec.image)
    if derived is not None:
        console.info(f"  [dim]{spec.image} is not here: building it from Debian packages[/]")
        boot.report(boot.ensure_derived(client, derived, boot.cache_dir(config.base_dir)))
        return None
    if spec.service == "grafana":  # no registry is assumed: only a local image is used
        return GRAFANA_MISSING.format(image=spec.image)
    image, reason = boot.try_pull(client, spec.image)
    return None if image is not None else f"{spec.image} is not on this engine and cannot be pulled ({reason})"


def _create(client: EngineClient, config: Config, spec: stack.MonitorSpec, digest: str, secrets: dict[str, str]) -> None:
    from flashfit_ops.engine.sdk import Mount

    mounts = [Mount(m.target, m.source, type=m.kind, read_only=m.read_only) for m in spec.mounts]
    environment = {env: secrets[src] for env, src in spec.secret_env if secrets.get(src)}
    container = client.containers.create(
        spec.image,
        command=list(spec.args) or None,
        name=spec.name,
        labels=spec.labels(config, digest),
        environment=environment,
        network=spec.network,
        mounts=mounts,
        ports={f"{port}/tcp": ("127.0.0.1", host) for port, host in spec.ports},
        restart_policy={"Name": "unless-stopped"},
        detach=True,
    )
    try:
        container.start()
    except Exception:
        container.remove(force=True)
        raise


def _wait_ready(spec: stack.MonitorSpec, timeout: float = READY_TIMEOUT, sleep: Callable[[float], None] = time.sleep) -> None:
    import httpx

    host = spec.ports[0][1]
    url = f"http://127.0.0.1:{host}" + ("/api/health" if spec.service == "grafana" else "/-/ready")
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
            last = "not ready"
        except httpx.HTTPError as error:
            last = type(error).__name__
        sleep(0.5)
    raise OperationFailed(f"{spec.name} did not become ready on {url} within {timeout:g}s ({last})", hint=f"see `docker logs {spec.name}`")


def ensure(config: Config, backend: Engine, client: EngineClient, live_slots: tuple[str, ...] = (), secrets: dict[str, str] | None = None) -> dict[str, Any]:
    """Make the monitoring containers match the config; report what each one did."""
    from flashfit_ops.engine.errors import APIError, NotFound, explanation

    if not config.monitoring.enabled:
        return {"enabled": False}
    secrets = secrets or {}
    labels = {LABEL_PROJECT: config.project}
    backend.ensure_network(config.network_name, labels)
    hook = webhook_url(config)
    changed = write_files(config, hook)
    if not targets_path(config).exists():
        write_targets(config, live_slots)
    report: dict[str, Any] = {"enabled": True, "webhook": "configured" if hook else f"not set ({config.monitoring.webhook_url_env})"}
    if not hook:
        console.warn(f"no {config.monitoring.webhook_url_env} in the env file: alerts stay in Alertmanager, nothing is notified")
    for spec in stack.monitor_specs(config, str(monitoring_dir(config))):
        missing = _ensure_image(client, config, spec)
        if missing:
            if spec.service != "grafana":
                raise OperationFailed(missing, hint=f"set services.{spec.service}.image to an image on this engine")
            console.warn(missing)
            report[spec.service] = {"name": spec.name, "action": "unavailable", "detail": missing}
            continue
        for mount in spec.mounts:
            if mount.kind == "volume":
                backend.ensure_volume(mount.source, labels)
        digest = spec.digest(secrets)
        try:
            container = client.containers.get(spec.name)
        except NotFound:
            container = None
        try:
            if container is not None and container.status == "running" and container.labels.get(stack.LABEL_SPEC) == digest:
                action = "kept"
                if spec.files_dir in changed:
                    container.kill(signal="SIGHUP")  # re-read prometheus.yml / alertmanager.yml
                    action = "reloaded"
            else:
                if container is not None:
                    container.remove(force=True)
                _create(client, config, spec, digest, secrets)
                action = "started"
        except APIError as error:
            raise OperationFailed(f"{spec.name}: the engine refused ({explanation(error)})") from None
        _wait_ready(spec)
        url = f"http://127.0.0.1:{spec.ports[0][1]}"
        console.success(f"{spec.name} {action} ({url})")
        report[spec.service] = {"name": spec.name, "action": action, "url": url}
    return report


def monitoring_for_deploy(config: Config, backend: Engine, client: EngineClient) -> dict[str, Any]:
    """What `flashfit deploy` adds to its result: {} when monitoring is off, else {"monitoring":
    report}. Runs before any traffic moves, so Prometheus sees the switch."""
    if not config.monitoring.enabled:
        return {}
    from flashfit_ops.config.secrets import load_secrets
    from flashfit_ops.proxy_files import read_files
    from flashfit_ops.plan.common import proxy_dir, sockets_dir

    console.step("monitoring")
    applied = read_files(proxy_dir(config), sockets_dir(config)).applied
    return {"monitoring": ensure(config, backend, client, tuple(applied), load_secrets(config))}


def monitoring_status(config: Config, live: set[str]) -> dict[str, Any]:
    """What `flashfit status` adds: {} when monitoring is off, else Prometheus's view and the
    alerts firing."""
    from flashfit_ops.monitoring.api import status_section

    section = status_section(config, live)
    return {} if section is None else {"monitoring": section}
