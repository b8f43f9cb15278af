"""The backend container that `flashfit deploy` creates and the backend service of every rendered
compose and stack file are one description (flashfit_ops/service_spec.py): the same mounts (the
models read-only), environment, limits, healthcheck, log rotation and labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from flashfit_ops.config import load_config, resolve
from flashfit_ops.config.model import Config, parse_duration
from flashfit_ops.execute.backend import DockerBackend
from flashfit_ops.plan.common import SOCKET_DIR, Target, backend_spec, volume_name
from flashfit_ops.plan.steps import ContainerSpec
from flashfit_ops.render import render_all

# What each file adds to the service on purpose, and what only a deploy adds (its version, the
# replica's socket for nginx, its identity labels).
FILE_ENV = {
    "docker-compose.dev.yml": {"DEBUG"},
    "docker-compose.prod.yml": set(),
    "docker-compose.blue.yml": set(),
    "docker-compose.green.yml": set(),
    "docker-stack.yml": {"JWT_SECRET_KEY_FILE", "SECRET_KEY_FILE"},
}
DEPLOY_ENV = {"APP_VERSION", "FLASHFIT_SOCKET"}
DEPLOY_LABELS = {"io.flashfit.version", "io.flashfit.replica", "io.flashfit.deploy", "io.flashfit.color"}


def configs(tmp_path: Path) -> list[Config]:
    example = tmp_path / "flashfit.yml"
    from flashfit_ops.config.example import write_example

    write_example(example)
    custom = {
        "project": "shop",
        "volumes": {"models": "./models", "data": "vectors"},
        "resources": {"limits": {"memory": "3G", "cpus": 1.5}, "reservations": {"memory": "1G", "cpus": 0.5}, "gpus": 1},
        "healthcheck": {"interval": "2s", "timeout": "1500ms", "retries": 7, "start_period": "45s",
                        "readiness_path": "/ready"},
        "server": {"environment": {"WORKERS": 3}},
    }
    # The image carries the models (server.build.models: baked): nothing mounts them.
    baked = {**custom, "server": {"environment": {"WORKERS": 3}, "build": {"models": "baked"}}}
    return [load_config(example, env="prod", environ={}), resolve(custom, environ={}, base_dir=tmp_path),
            resolve(baked, environ={}, base_dir=tmp_path)]


def deployed(config: Config) -> ContainerSpec:
    return backend_spec(config, Target(version="v7", deploy_id="20261201T130000Z"), "blue", 1)


def services(config: Config) -> dict[str, dict[str, Any]]:
    files = render_all(config)
    out = {}
    for name in FILE_ENV:
        document = yaml.safe_load(files[name].text)
        key = next(k for k in document["services"] if k.startswith("backend"))
        out[name] = document["services"][key]
    return out


def short_mount(text: str) -> tuple[str, str, bool]:
    parts = text.split(":")
    return parts[0], parts[1], parts[2:] == ["ro"]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_every_rendered_backend_mounts_what_a_deploy_mounts(tmp_path: Path, which: int) -> None:
    config = configs(tmp_path)[which]
    spec = deployed(config)
    # A deploy adds the sockets folder nginx reaches the replicas through; compose uses TCP.
    planned = [(m.source, m.target, m.read_only) for m in spec.mounts if m.target != SOCKET_DIR]
    models = config.server.environment.MODEL_CACHE_DIR
    baked = config.server.build.models == "baked"
    assert [ro for _, target, ro in planned if target == models] == ([] if baked else [True])
    assert [target for _, target, _ in planned if target != models] == [config.server.environment.VECTOR_STORE_DIR]
    for name, service in services(config).items():
        rendered = []
        for source, target, read_only in map(short_mount, service["volumes"]):
            named = not source.startswith("/")
            rendered.append((volume_name(config, source) if named else source, target, read_only))
        assert rendered == planned, name


@pytest.mark.parametrize("which", [0, 1, 2])
def test_every_rendered_backend_has_the_deploys_environment_healthcheck_and_logging(tmp_path: Path, which: int) -> None:
    config = configs(tmp_path)[which]
    spec = deployed(config)
    assert spec.healthcheck is not None and spec.logging is not None
    shared_env = {k: v for k, v in spec.env.items() if k not in DEPLOY_ENV}
    assert DEPLOY_ENV <= set(spec.env)
    for name, service in services(config).items():
        env = {k: str(v) for k, v in service["environment"].items()}
        assert set(env) == set(shared_env) | FILE_ENV[name], name
        assert {k: env[k] for k in shared_env} == shared_env, name
        check = service["healthcheck"]
        assert check["test"] == ["CMD", *spec.healthcheck.test], name
        assert [parse_duration(check[k]) for k in ("interval", "timeout", "start_period")] == [
            spec.healthcheck.interval, spec.healthcheck.timeout, spec.healthcheck.start_period], name
        assert check["retries"] == spec.healthcheck.retries, name
        assert service["logging"] == {"driver": spec.logging.driver, "options": dict(spec.logging.options)}, name


@pytest.mark.parametrize("which", [0, 1, 2])
def test_rendered_limits_and_labels_are_the_deploys(tmp_path: Path, which: int) -> None:
    config = configs(tmp_path)[which]
    spec = deployed(config)
    for name, service in services(config).items():
        if name != "docker-compose.dev.yml":  # dev runs unlimited
            limits = service["deploy"]["resources"]["limits"]
            assert (limits.get("memory"), float(limits["cpus"]) if "cpus" in limits else None) == (spec.memory, spec.cpus), name
        if name == "docker-stack.yml":
            continue  # Swarm labels its services and tasks itself (swarm/sdk.py: stack_labels)
        color = {"io.flashfit.color": name.split(".")[1]} if name in ("docker-compose.blue.yml", "docker-compose.green.yml") else {}
        shared = {k: v for k, v in spec.labels.items() if k not in DEPLOY_LABELS}
        assert service["labels"] == {**shared, **color}, name
    assert DEPLOY_LABELS <= set(spec.labels)


def test_the_image_healthcheck_is_the_services(tmp_path: Path) -> None:
    for config in configs(tmp_path):
        spec = deployed(config)
        assert spec.healthcheck is not None
        line = next(x for x in render_all(config)["Dockerfile"].text.splitlines() if x.startswith("HEALTHCHECK"))
        check = spec.healthcheck
        for option, seconds in (("interval", check.interval), ("timeout", check.timeout), ("start-period", check.start_period)):
            value = line.split(f"--{option}=")[1].split()[0]
            assert parse_duration(value) == seconds
        assert f"--retries={check.retries}" in line


class RecordingContainers:
    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []

    def create(self, image: str, **kwargs: Any) -> None:
        self.created.append({"image": image, **kwargs})


class RecordingClient:
    def __init__(self) -> None:
        self.containers = RecordingContainers()

    def info(self) -> dict[str, Any]:
        return {"NCPU": 64}


def test_the_engine_is_asked_for_the_specs_healthcheck_log_rotation_and_read_only_models(tmp_path: Path) -> None:
    config = configs(tmp_path)[1]
    spec = deployed(config)
    client = RecordingClient()
    DockerBackend(client).create_backend(spec, {"SECRET_KEY": "s"})  # type: ignore[arg-type, unused-ignore]
    [created] = client.containers.created
    assert created["healthcheck"] == {
        "Test": ["CMD", "flashfit-server", "probe", "--url", "http://127.0.0.1:8080/ready"],
        "Interval": 2_000_000_000, "Timeout": 1_500_000_000, "Retries": 7, "StartPeriod": 45_000_000_000,
    }
    assert created["log_config"] == {"Type": "json-file", "Config": {"max-file": "3", "max-size": "10m"}}
    mounts = {m["Target"]: m["ReadOnly"] for m in created["mounts"]}
    assert mounts == {"/app/models": True, "/app/data": False, SOCKET_DIR: False}


@pytest.mark.parametrize("which", [0, 1, 2])
def test_only_mounted_named_volumes_are_declared_and_ensured(tmp_path: Path, which: int) -> None:
    """The compose and stack files declare exactly the named volumes a deploy mounts and ensures:
    with baked models, no models volume anywhere."""
    from flashfit_ops.plan.common import base_steps
    from flashfit_ops.plan.observed import Observed
    from flashfit_ops.plan.steps import EnsureVolume

    config = configs(tmp_path)[which]
    mounted = [m.source for m in deployed(config).mounts if m.kind == "volume"]
    ensured = [s.name for s in base_steps(config, Observed(project=config.project)) if isinstance(s, EnsureVolume)]
    assert ensured == mounted
    models = volume_name(config, config.volumes.models)
    assert (models in mounted) == (which == 0)  # the example's named volume; 1 binds ./models; 2 bakes them
    for name in FILE_ENV:
        declared = (yaml.safe_load(render_all(config)[name].text).get("volumes") or {}).keys()
        assert [volume_name(config, v) for v in declared if v in (config.volumes.models, config.volumes.data)] == mounted, name


def test_a_baked_config_copies_the_models_between_the_dependencies_and_the_code(tmp_path: Path) -> None:
    mounted, _, baked = configs(tmp_path)
    assert "COPY models/" not in render_all(mounted)["Dockerfile"].text
    dockerfile = render_all(baked)["Dockerfile"].text
    lines = [line.split()[0] + " " + line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    assert lines == ["COPY requirements.txt", "COPY wheelhouse/", "COPY --from=dependencies", "COPY models/", "COPY dist/"]
    assert "COPY models/ /app/models/" in dockerfile
