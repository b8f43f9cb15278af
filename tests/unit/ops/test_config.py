"""Configuration: the example is valid, every problem is reported with its path and line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flashfit_ops.config import Config, load_config, resolve
from flashfit_ops.config.load import env_overrides
from flashfit_ops.config.secrets import load_secrets, parse_env_file, redacted_view
from flashfit_ops.errors import ConfigError, UsageError


def problems_of(data: dict, **kwargs) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        resolve(data, environ={}, **kwargs)
    return {p.path: p.message for p in info.value.problems}


def test_example_is_valid_in_every_environment(example_config: Path) -> None:
    for env in (None, "dev", "prod"):
        config = load_config(example_config, env=env, environ={})
        assert isinstance(config, Config)
    assert load_config(example_config, env="dev", environ={}).server.environment.LOG_LEVEL == "debug"
    assert load_config(example_config, env="prod", environ={}).server.environment.WORKERS == 4


def test_example_documents_every_setting(example_config: Path) -> None:
    """The example is the documentation: each field of the model appears in it with its default."""
    documented = yaml.safe_load(example_config.read_text())

    def walk(model_cls, data, path=""):
        for name, field in model_cls.model_fields.items():
            if name == "environments":
                continue
            assert name in data, f"{path}{name} is missing from the example config"
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                walk(annotation, data[name], f"{path}{name}.")

    walk(Config, documented)
    # The values shown are the defaults.
    base = {k: v for k, v in documented.items() if k != "environments"}
    assert resolve(base, environ={}).model_dump() == Config().model_dump()


def test_unknown_keys_wrong_types_and_literals_name_their_field() -> None:
    found = problems_of({"deploy": {"strategy": "fast", "nope": 1}, "replicas": "many", "bogus": True})
    assert "unknown key" in found["deploy.nope"]
    assert "unknown key" in found["bogus"]
    assert "'single', 'blue-green' or 'rolling'" in found["deploy.strategy"]
    assert "integer" in found["replicas"]


def test_durations_and_memory_sizes() -> None:
    resources = {"limits": {"memory": "512m"}, "reservations": {"memory": "256M"}}
    config = resolve({"deploy": {"drain_timeout": "500ms", "deadline": "2m"}, "resources": resources}, environ={})
    assert config.deploy.drain_timeout == 0.5
    assert config.deploy.deadline == 120
    assert config.resources.limits.memory == "512M"
    found = problems_of({"deploy": {"drain_timeout": "soon"}, "resources": {"limits": {"memory": "lots"}}})
    assert "not a duration" in found["deploy.drain_timeout"]
    assert "not a memory size" in found["resources.limits.memory"]


def test_two_services_on_one_host_port() -> None:
    found = problems_of({"ports": {"grafana": 9090}})
    assert found["ports.grafana"] == "host port 9090 is already used by ports.prometheus: two services cannot share it"


def test_disabled_service_port_does_not_conflict() -> None:
    resolve({"ports": {"redis": 9090}}, environ={})  # redis is disabled by default


def test_tls_without_certificate() -> None:
    found = problems_of({"tls": {"enabled": True, "domains": ["flashfit.ai"], "key": "k.pem"}})
    assert found == {"tls.certificate": "TLS is enabled but no certificate file is set"}
    found = problems_of({"tls": {"certificate": "c.pem"}})
    assert found == {"tls.key": "a certificate is set without its private key"}


def test_reservation_above_limit() -> None:
    found = problems_of({"resources": {"limits": {"memory": "1G"}, "reservations": {"memory": "2G"}}})
    assert "more than the 1G limit" in found["resources.reservations.memory"]


def test_models_are_mounted_unless_baked_from_a_host_folder() -> None:
    assert resolve({}, environ={}).server.build.models == "mounted"
    found = problems_of({"server": {"build": {"models": "inside"}}})
    assert list(found) == ["server.build.models"] and "'mounted' or 'baked'" in found["server.build.models"]
    # Baking copies a host folder: a volume name (the default model_cache) cannot be baked.
    found = problems_of({"server": {"build": {"models": "baked"}}})
    assert list(found) == ["volumes.models"] and "host folder" in found["volumes.models"]
    baked = resolve({"server": {"build": {"models": "baked"}}}, environ={"FLASHFIT__VOLUMES__MODELS": "./models"})
    assert baked.server.build.models == "baked"
    from_env = resolve({"volumes": {"models": "/srv/models"}}, environ={"FLASHFIT__SERVER__BUILD__MODELS": "baked"})
    assert from_env.server.build.models == "baked"


def test_secrets_are_refused_in_the_file() -> None:
    found = problems_of({"server": {"environment": {"JWT_SECRET_KEY": "hunter2"}}})
    assert list(found) == ["server.environment.JWT_SECRET_KEY"]
    assert "is a secret" in found["server.environment.JWT_SECRET_KEY"]
    assert "hunter2" not in found["server.environment.JWT_SECRET_KEY"]


def test_problems_carry_file_lines(tmp_path: Path) -> None:
    path = tmp_path / "flashfit.yml"
    path.write_text("project: demo\ndeploy:\n  strategy: fast\n  colour: blue\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    lines = {p.path: p.line for p in info.value.problems}
    assert lines == {"deploy.strategy": 3, "deploy.colour": 4}
    path.write_text("project: demo\n\nports:\n  grafana: 9090\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert [(p.path, p.line) for p in info.value.problems] == [("ports.grafana", 4)]
    path.write_text("project: demo\ndeploy:\n  strategy: fast\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value.problems[0]).startswith(f"{path}:3: deploy.strategy:")


def test_overlay_errors_point_into_the_overlay(tmp_path: Path) -> None:
    path = tmp_path / "flashfit.yml"
    path.write_text("project: demo\nenvironments:\n  dev:\n    replicas: 0\n")
    load_config(path, environ={})  # the base is fine
    with pytest.raises(ConfigError) as info:
        load_config(path, env="dev", environ={})
    assert [(p.path, p.line) for p in info.value.problems] == [("replicas", 4)]


def test_malformed_yaml_gives_its_line(tmp_path: Path) -> None:
    path = tmp_path / "flashfit.yml"
    path.write_text("project: demo\nports:\n  http: 80\n   https: 443\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    problem = info.value.problems[0]
    assert problem.message.startswith("malformed YAML")
    assert problem.line == 4


def test_non_mapping_file_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "flashfit.yml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="1 problem"):
        load_config(path, environ={})
    with pytest.raises(UsageError, match="no configuration file"):
        load_config(tmp_path / "missing.yml")


def test_unknown_environment() -> None:
    with pytest.raises(UsageError, match="unknown environment"):
        resolve({}, env="staging", environ={})


def test_environment_variables_override_the_file() -> None:
    environ = {"FLASHFIT__DEPLOY__STRATEGY": "rolling", "FLASHFIT__REPLICAS": "3", "FLASHFIT__SERVER__ENVIRONMENT__WORKERS": "2"}
    assert env_overrides(environ) == {"deploy": {"strategy": "rolling"}, "replicas": 3, "server": {"environment": {"WORKERS": 2}}}
    config = resolve({"replicas": 1}, environ=environ, overrides={"deploy": {"parallelism": 2}})
    assert (config.deploy.strategy, config.replicas, config.server.environment.WORKERS, config.deploy.parallelism) == ("rolling", 3, 2, 2)


def test_env_file_parsing_and_redaction(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# secrets\nJWT_SECRET_KEY='s3cret'\nexport SECRET_KEY=abc\nUNRELATED=1\n")
    assert parse_env_file(env_file) == {"JWT_SECRET_KEY": "s3cret", "SECRET_KEY": "abc", "UNRELATED": "1"}
    config = resolve({}, environ={}, base_dir=tmp_path)
    assert load_secrets(config, environ={"SECRET_KEY": "from-env"}) == {"JWT_SECRET_KEY": "s3cret", "SECRET_KEY": "from-env"}
    view = redacted_view(config)
    text = repr(view)
    assert "s3cret" not in text and "abc" not in text
    assert view["secrets"]["JWT_SECRET_KEY"] == "*** (.env)"
    env_file.write_text("JWT_SECRET_KEY\n")
    with pytest.raises(ConfigError) as info:
        parse_env_file(env_file)
    assert info.value.problems[0].line == 1
