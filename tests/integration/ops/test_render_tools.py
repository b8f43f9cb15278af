"""Every rendered file is checked by the real tool that consumes it: nginx -t, promtool,
docker-compose config, docker stack config. Runs for the example config in each environment."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from flashfit_ops.config import load_config, resolve
from flashfit_ops.render import render_all, write_tree
from tests.conftest import require_tool

pytestmark = pytest.mark.integration


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def tls_material(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tls")
    run(
        require_tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        "-subj", "/CN=flashfit.test", "-keyout", str(folder / "site.key"), "-out", str(folder / "site.crt"),
    )
    return folder


def rendered(tmp_path: Path, tls_material: Path, env: str, example_config: Path, **changes) -> Path:
    config = load_config(example_config, env=env, environ={})
    data = config.model_dump(mode="json", exclude={"environments"})
    data.update(changes)
    data["tls"] = {"enabled": True, "domains": ["flashfit.test"], "certificate": str(tls_material / "site.crt"), "key": str(tls_material / "site.key")}
    data["services"]["redis"]["enabled"] = True
    data["services"]["frontend"]["image"] = "flashfit/frontend:latest"
    config = resolve(data, environ={}, base_dir=example_config.parent)
    out = tmp_path / f"out-{env}"
    write_tree(render_all(config), out)
    (out / ".env").write_text("JWT_SECRET_KEY=test\n")
    return out


ENVIRONMENTS = ["dev", "prod"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_nginx_accepts_both_configs(tmp_path: Path, tls_material: Path, env: str, example_config: Path) -> None:
    """`nginx -t` resolves upstream names and opens certificates, so it runs in a private mount
    namespace where /etc/hosts knows the compose service names and /etc/nginx/ssl holds the test pair."""
    out = rendered(tmp_path, tls_material, env, example_config)
    nginx = require_tool("nginx")
    require_tool("unshare")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost backend frontend\n")
    script = (
        f"mount --bind {hosts} /etc/hosts && mkdir -p /etc/nginx/ssl && mount --bind {tls_material} /etc/nginx/ssl"
        f" && {nginx} -t -c {out / 'nginx.conf'} && {nginx} -t -c {out / 'nginx-ssl.conf'}"
        f" && {nginx} -t -c {out / 'nginx-swarm.conf'}"
    )
    result = run("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
    assert result.stderr.count("test is successful") == 3, result.stderr


def test_nginx_rejects_the_documents_rate_limit_placement(tmp_path: Path) -> None:
    """Why the template differs from the operations document: nginx refuses limit_req_zone outside http."""
    nginx = require_tool("nginx")
    conf = tmp_path / "doc.conf"
    conf.write_text(
        "events {}\nhttp { server { listen 18099; location / { limit_req zone=api burst=20 nodelay; return 200; } } }\n"
        "http { limit_req_zone $binary_remote_addr zone=api:10m rate=10r/s; }\n"
    )
    result = subprocess.run([nginx, "-t", "-c", str(conf)], capture_output=True, text=True)
    assert result.returncode != 0


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_promtool_accepts_config_and_rules(tmp_path: Path, tls_material: Path, env: str, example_config: Path) -> None:
    out = rendered(tmp_path, tls_material, env, example_config)
    promtool = require_tool("promtool")
    run(promtool, "check", "config", str(out / "monitoring/prometheus.yml"))
    result = run(promtool, "check", "rules", str(out / "monitoring/alert_rules.yml"))
    assert "SUCCESS: 4 rules found" in result.stdout


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_compose_files_validate(tmp_path: Path, tls_material: Path, env: str, example_config: Path) -> None:
    out = rendered(tmp_path, tls_material, env, example_config)
    compose = require_tool("docker-compose")
    for name in ("docker-compose.dev.yml", "docker-compose.prod.yml", "docker-compose.blue.yml", "docker-compose.green.yml"):
        run(compose, "-f", str(out / name), "config", "-q", cwd=out)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_stack_file_validates(tmp_path: Path, tls_material: Path, env: str, example_config: Path) -> None:
    out = rendered(tmp_path, tls_material, env, example_config)
    docker = require_tool("docker")
    result = run(docker, "stack", "config", "-c", str(out / "docker-stack.yml"), cwd=out)
    assert "start-first" in result.stdout
    # docker-compose validates the stack file against the compose schema too.
    run(require_tool("docker-compose"), "-f", str(out / "docker-stack.yml"), "config", "-q", cwd=out)


def test_stack_file_for_hosts_without_routing_mesh_validates(tmp_path: Path, tls_material: Path, example_config: Path) -> None:
    swarm = {"endpoint_mode": "dnsrr", "publish_mode": "host", "proxy_replicas": 1, "constraints": ["node.role == manager"]}
    out = rendered(tmp_path, tls_material, "prod", example_config, swarm=swarm)
    result = run(require_tool("docker"), "stack", "config", "-c", str(out / "docker-stack.yml"), cwd=out)
    assert "mode: host" in result.stdout and "endpoint_mode: dnsrr" in result.stdout


def test_dashboard_is_valid_json_with_three_panels(tmp_path: Path, tls_material: Path, example_config: Path) -> None:
    out = rendered(tmp_path, tls_material, "prod", example_config)
    dashboard = json.loads((out / "monitoring/grafana/dashboards/flashfit.json").read_text())
    assert len(dashboard["panels"]) == 3


@pytest.mark.parametrize("target", ["local", "swarm"])
def test_promtool_accepts_the_deployed_and_swarm_prometheus_configs(tmp_path: Path, target: str) -> None:
    """What `flashfit deploy` runs (file discovery + Alertmanager) and what Swarm renders (one
    target per task through tasks.backend), both checked by promtool."""
    from flashfit_ops.monitoring.stack import monitoring_files

    config = resolve({"target": target, "monitoring": {"enabled": True, "scrape_interval": "2s"}}, environ={}, base_dir=tmp_path)
    promtool = require_tool("promtool")
    out = tmp_path / "rendered"
    write_tree(render_all(config), out)
    result = run(promtool, "check", "config", str(out / "monitoring/prometheus.yml"))
    assert "SUCCESS" in result.stdout
    text = (out / "monitoring/prometheus.yml").read_text()
    assert ('names: ["tasks.backend"]' in text) == (target == "swarm")
    deployed = tmp_path / "deployed"
    write_tree(monitoring_files(config, "https://hooks.example/x"), deployed)
    run(promtool, "check", "config", str(deployed / "prometheus/prometheus.yml"))
    assert "file_sd_configs" in (deployed / "prometheus/prometheus.yml").read_text()
