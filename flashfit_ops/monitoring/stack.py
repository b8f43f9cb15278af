"""The monitoring containers as data: names, images, arguments, mounts, ports and the files they
read, computed from the config alone. Each spec carries a digest of itself (a label on the
container), so `flashfit deploy` recreates a monitoring container only when its spec changed;
a changed config file is applied with a reload (SIGHUP) instead, and a backend deploy leaves
them running."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from flashfit_ops.config.model import Config
from flashfit_ops.labels import LABEL_SPEC, ROLE_MONITORING
from flashfit_ops.monitoring.targets import PROMETHEUS_CONFIG_DIR, TARGETS_RELATIVE
from flashfit_ops.plan.common import project_labels, volume_name
from flashfit_ops.plan.steps import Mount
from flashfit_ops.render import SECRET_MODE, RenderedFile, render_prometheus, render_template

ALERTMANAGER_CONFIG_DIR = "/etc/flashfit/alertmanager"
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
GRAFANA_PORT = 3000


@dataclass(frozen=True)
class MonitorSpec:
    service: str  # prometheus | alertmanager | grafana
    name: str
    image: str
    args: tuple[str, ...]
    network: str
    mounts: tuple[Mount, ...]
    # (container port, host port); published on 127.0.0.1 only.
    ports: tuple[tuple[int, int], ...]
    # The folder under .flashfit/monitoring whose files this container reads (reloaded on change).
    files_dir: str | None
    # Names of secrets from the env file passed as environment (values never in the spec).
    secret_env: tuple[tuple[str, str], ...] = ()

    def digest(self, secret_values: dict[str, str] | None = None) -> str:
        """Identity of the container: the spec, plus a hash of the secrets it gets."""
        secrets = {env: hashlib.sha256((secret_values or {}).get(src, "").encode()).hexdigest() for env, src in self.secret_env}
        payload = json.dumps({"spec": asdict(self), "secrets": secrets}, sort_keys=True, default=list)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def labels(self, config: Config, digest: str) -> dict[str, str]:
        return {**project_labels(config, ROLE_MONITORING), LABEL_SPEC: digest}


def container_name(config: Config, service: str) -> str:
    return f"{config.project}-{service}"


def prometheus_spec(config: Config, monitoring_dir: str) -> MonitorSpec:
    return MonitorSpec(
        service="prometheus",
        name=container_name(config, "prometheus"),
        image=config.services.prometheus.image,
        args=(
            f"--config.file={PROMETHEUS_CONFIG_DIR}/prometheus.yml",
            "--storage.tsdb.path=/prometheus",
            f"--web.listen-address=:{PROMETHEUS_PORT}",
        ),
        network=config.network_name,
        mounts=(
            Mount(f"{monitoring_dir}/prometheus", PROMETHEUS_CONFIG_DIR, "bind", read_only=True),
            Mount(volume_name(config, "prometheus_data"), "/prometheus", "volume"),
        ),
        ports=((PROMETHEUS_PORT, config.ports.prometheus),),
        files_dir="prometheus",
    )


def alertmanager_spec(config: Config, monitoring_dir: str) -> MonitorSpec:
    return MonitorSpec(
        service="alertmanager",
        name=container_name(config, "alertmanager"),
        image=config.services.alertmanager.image,
        args=(
            f"--config.file={ALERTMANAGER_CONFIG_DIR}/alertmanager.yml",
            "--storage.path=/alertmanager",
            f"--web.listen-address=:{ALERTMANAGER_PORT}",
            "--cluster.listen-address=",  # one instance: no gossip port
        ),
        network=config.network_name,
        mounts=(
            Mount(f"{monitoring_dir}/alertmanager", ALERTMANAGER_CONFIG_DIR, "bind", read_only=True),
            Mount(volume_name(config, "alertmanager_data"), "/alertmanager", "volume"),
        ),
        ports=((ALERTMANAGER_PORT, config.ports.alertmanager),),
        files_dir="alertmanager",
    )


def grafana_spec(config: Config, monitoring_dir: str) -> MonitorSpec:
    return MonitorSpec(
        service="grafana",
        name=container_name(config, "grafana"),
        image=config.services.grafana.image,
        args=(),
        network=config.network_name,
        mounts=(
            Mount(f"{monitoring_dir}/grafana/provisioning", "/etc/grafana/provisioning", "bind", read_only=True),
            Mount(f"{monitoring_dir}/grafana/dashboards", "/var/lib/grafana/dashboards", "bind", read_only=True),
            Mount(volume_name(config, "grafana_data"), "/var/lib/grafana", "volume"),
        ),
        ports=((GRAFANA_PORT, config.ports.grafana),),
        files_dir=None,  # Grafana re-reads provisioned dashboards by itself
        secret_env=(("GF_SECURITY_ADMIN_PASSWORD", "GF_SECURITY_ADMIN_PASSWORD"),),
    )


def monitor_specs(config: Config, monitoring_dir: str) -> list[MonitorSpec]:
    """Prometheus, then Alertmanager, then Grafana, as the config enables them."""
    services = config.services
    specs = []
    if services.prometheus.enabled:
        specs.append(prometheus_spec(config, monitoring_dir))
    if services.alertmanager.enabled:
        specs.append(alertmanager_spec(config, monitoring_dir))
    if services.grafana.enabled:
        specs.append(grafana_spec(config, monitoring_dir))
    return specs


def monitoring_files(config: Config, webhook_url: str | None) -> dict[str, RenderedFile]:
    """The files under .flashfit/monitoring (the targets file excepted: the switch owns it)."""
    alertmanager = f"{container_name(config, 'alertmanager')}:{ALERTMANAGER_PORT}" if config.services.alertmanager.enabled else None
    prometheus_url = f"http://{container_name(config, 'prometheus')}:{PROMETHEUS_PORT}"
    files = {
        "prometheus/prometheus.yml": RenderedFile(
            render_prometheus(config, "file", alertmanager=alertmanager, targets_file=f"{PROMETHEUS_CONFIG_DIR}/{TARGETS_RELATIVE}")
        ),
        "prometheus/alert_rules.yml": RenderedFile(render_template("monitoring/alert_rules.yml.j2", config)),
        # The webhook URL is a secret: the file is private to its owner.
        "alertmanager/alertmanager.yml": RenderedFile(
            render_template("monitoring/alertmanager.yml.j2", config, webhook_url=webhook_url), SECRET_MODE
        ),
        "grafana/dashboards/flashfit.json": RenderedFile(render_template("monitoring/grafana/dashboard.json.j2", config)),
        "grafana/provisioning/dashboards/flashfit.yml": RenderedFile(render_template("monitoring/grafana/dashboards-provider.yml.j2", config)),
        "grafana/provisioning/datasources/prometheus.yml": RenderedFile(
            render_template("monitoring/grafana/datasource.yml.j2", config, prometheus_url=prometheus_url)
        ),
    }
    return files

