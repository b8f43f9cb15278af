"""Rendering is pure, deterministic and all-or-nothing; queries only use metrics the server exposes."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
import yaml

from flashfit_ops.config import load_config, resolve
from flashfit_ops.render import SECRET_MODE, RenderedFile, render_all, render_nginx, write_tree
from flashfit_contract.metrics import EXPOSED_SERIES, PROMETHEUS_BUILTIN_SERIES

EXPECTED_FILES = {
    "docker-compose.dev.yml",
    "docker-compose.prod.yml",
    "docker-compose.blue.yml",
    "docker-compose.green.yml",
    "docker-stack.yml",
    "nginx-swarm.conf",
    "nginx.conf",
    "nginx-ssl.conf",
    "monitoring/prometheus.yml",
    "monitoring/alert_rules.yml",
    "monitoring/alert_rules_test.yml",
    "monitoring/grafana/dashboards/flashfit.json",
    "monitoring/grafana/provisioning/dashboards/flashfit.yml",
    "monitoring/grafana/provisioning/datasources/prometheus.yml",
    "Dockerfile",
    ".dockerignore",
    ".env.example",
}
# A metric selector in PromQL: a name directly followed by a label matcher or a range.
_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[\{\[]")
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def promql_metrics(expr: str) -> set[str]:
    return {name for name in _SELECTOR.findall(expr) if name not in _PROMQL_WORDS}


def test_renders_every_file_deterministically(example_config: Path) -> None:
    config = load_config(example_config, env="prod", environ={})
    first = render_all(config)
    assert set(first) == EXPECTED_FILES
    again = render_all(load_config(example_config, env="prod", environ={}))
    assert first == again


def test_yaml_outputs_parse(example_config: Path) -> None:
    files = render_all(load_config(example_config, env="dev", environ={}))
    for name, file in files.items():
        if name.endswith(".yml"):
            assert isinstance(yaml.safe_load(file.text), dict), name


def test_env_example_is_private_and_holds_no_values(example_config: Path, tmp_path: Path) -> None:
    files = render_all(load_config(example_config, environ={}))
    assert files[".env.example"].mode == SECRET_MODE
    for line in files[".env.example"].text.splitlines():
        if line and not line.startswith("#"):
            assert line.endswith("="), line
    out = tmp_path / "out"
    write_tree(files, out)
    assert stat.S_IMODE(os.stat(out / ".env.example").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(out / "nginx.conf").st_mode) == 0o644


def test_write_is_all_or_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_tree({"a.txt": RenderedFile("old a"), "b.txt": RenderedFile("old b")}, out)
    # b is a folder now, so it cannot be written: nothing in out may change, not even a.txt.
    bad = {"a.txt": RenderedFile("new a"), "b.txt/c": RenderedFile("x"), "b.txt": RenderedFile("y")}
    with pytest.raises(OSError):
        write_tree(bad, out)
    assert (out / "a.txt").read_text() == "old a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "staging folder left behind"


def test_dashboard_and_alerts_use_only_exposed_metrics(example_config: Path) -> None:
    files = render_all(load_config(example_config, environ={}))
    dashboard = json.loads(files["monitoring/grafana/dashboards/flashfit.json"].text)
    titles = [panel["title"] for panel in dashboard["panels"]]
    assert titles == ["Request Rate", "Response Time (p95)", "Model Inference Time"]
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    rules = yaml.safe_load(files["monitoring/alert_rules.yml"].text)["groups"][0]["rules"]
    assert {rule["alert"] for rule in rules} >= {"BackendDown", "HighErrorRate", "SlowResponses", "SlowModelInference"}
    exprs += [rule["expr"] for rule in rules]
    allowed = EXPOSED_SERIES | PROMETHEUS_BUILTIN_SERIES
    for expr in exprs:
        used = promql_metrics(expr)
        assert used, f"no metric found in {expr!r}"
        assert used <= allowed, f"{expr!r} uses {used - allowed}"


def test_promql_metric_extraction_catches_unknown_names() -> None:
    assert promql_metrics('rate(foo_total{a="b"}[5m]) / sum by (le) (bar_bucket[1m])') == {"foo_total", "bar_bucket"}


def test_nginx_upstreams_and_rate_limit_zone_placement() -> None:
    config = resolve({"rate_limit": {"requests_per_second": 7, "burst": 9}}, environ={})
    text = render_nginx(config, ["flashfit-blue-1:8080", "flashfit-blue-2:8080"])
    assert "server flashfit-blue-1:8080 max_fails=3 fail_timeout=30s;" in text
    assert "server flashfit-blue-2:8080 max_fails=3 fail_timeout=30s;" in text
    assert "least_conn;" in text
    http_block = text[text.index("http {") :]
    assert "limit_req_zone $binary_remote_addr zone=api:10m rate=7r/s;" in http_block
    assert "limit_req zone=api burst=9 nodelay;" in text
    with pytest.raises(ValueError):
        render_nginx(config, [])


def test_tls_config_has_redirect_hsts_and_modern_protocols() -> None:
    config = resolve(
        {"tls": {"enabled": True, "domains": ["flashfit.ai"], "certificate": "/c/site.crt", "key": "/c/site.key"}},
        environ={},
    )
    text = render_nginx(config, ["backend:8080"])
    assert "return 301 https://$host$request_uri;" in text
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in text
    assert 'Strict-Transport-Security "max-age=31536000; includeSubDomains" always' in text
    assert "ssl_certificate /etc/nginx/ssl/site.crt;" in text


def test_stack_file_rolls_back_and_starts_first(example_config: Path) -> None:
    files = render_all(load_config(example_config, env="prod", environ={}))
    stack = yaml.safe_load(files["docker-stack.yml"].text)
    deploy = stack["services"]["backend"]["deploy"]
    assert deploy["update_config"]["order"] == "start-first"
    assert deploy["update_config"]["failure_action"] == "rollback"
    assert deploy["restart_policy"]["condition"] == "on-failure"
    assert stack["networks"]["flashfit"]["driver"] == "overlay"
    assert "JWT_SECRET_KEY" not in stack["services"]["backend"]["environment"]


def test_dockerfile_runs_as_non_root_with_healthcheck_and_cached_dependencies(example_config: Path) -> None:
    text = render_all(load_config(example_config, environ={}))["Dockerfile"].text
    assert "USER flashfit" in text
    assert "HEALTHCHECK" in text
    # The dependency layer comes before the code, so code-only rebuilds reuse it.
    assert text.index("requirements.txt") < text.index("COPY dist/")
    assert "SECRET" not in text


def test_host_path_volumes_become_bind_mounts(tmp_path: Path) -> None:
    config = resolve({"volumes": {"models": "./models", "data": "/srv/data"}}, environ={}, base_dir=tmp_path)
    compose = yaml.safe_load(render_all(config)["docker-compose.prod.yml"].text)
    volumes = compose["services"]["backend"]["volumes"]
    assert f"{tmp_path}/models:/app/models:ro" in volumes
    assert "/srv/data:/app/data" in volumes
    assert "model_cache" not in compose["volumes"]
