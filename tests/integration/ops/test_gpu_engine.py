"""resources.gpus against the real tools: docker-compose config and docker stack config accept the
rendered files, the engine stores the container's device request, and a deploy on an engine that
cannot provide GPUs stops at plan time with the reason (exit 3) instead of creating a container
that never starts. No GPU is needed: a GPU host runs the same tests (its engine passes the check)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashfit_ops.cli import app
from flashfit_ops.errors import EXIT_UNAVAILABLE
from flashfit_ops.plan.steps import ContainerSpec, GpuRequest
from tests.conftest import require_tool
from tests.integration.ops.test_render_tools import rendered, run, tls_material  # noqa: F401

pytestmark = pytest.mark.integration

GPU_SETTINGS = [2, ["0", "GPU-3f2a9c1e-0000-0000-0000-000000000000"]]


@pytest.mark.parametrize("gpus", GPU_SETTINGS, ids=["count", "ids"])
def test_compose_and_stack_files_with_gpus_validate(tmp_path: Path, tls_material: Path, example_config: Path, gpus) -> None:  # noqa: ANN001, F811
    out = rendered(tmp_path, tls_material, "prod", example_config, resources={"gpus": gpus})
    compose = require_tool("docker-compose")
    for name in ("docker-compose.dev.yml", "docker-compose.prod.yml", "docker-compose.blue.yml", "docker-compose.green.yml"):
        result = run(compose, "-f", str(out / name), "config", cwd=out)
        assert "driver: nvidia" in result.stdout and "- gpu" in result.stdout, name
    stack = run(require_tool("docker"), "stack", "config", "-c", str(out / "docker-stack.yml"), cwd=out)
    assert "generic_resources" in stack.stdout and "node.labels.flashfit.gpu == true" in stack.stdout
    run(compose, "-f", str(out / "docker-stack.yml"), "config", "-q", cwd=out)


@pytest.fixture
def engine():  # noqa: ANN201
    from flashfit_ops.execute.backend import DockerBackend

    backend = DockerBackend.connect()
    created: list[str] = []
    yield backend, created
    for name in created:
        backend.remove(name)


def test_the_engine_stores_the_containers_device_request(engine) -> None:  # noqa: ANN001
    backend, created = engine
    image = "flashfit/debian-python:bookworm"
    assert backend.image_exists(image), "the bootstrapped base image is needed (flashfit images bootstrap)"
    for index, request in enumerate((GpuRequest(count=1), GpuRequest(device_ids=("0",)))):
        name = f"gpu-spec-{uuid.uuid4().hex[:8]}-{index}"
        spec = ContainerSpec(name=name, image=image, color="blue", version="v1", replica=1, deploy_id="d", network="bridge", gpus=request)
        backend.create_backend(spec, secrets={})
        created.append(name)
        [stored] = backend.client.api.inspect_container(name)["HostConfig"]["DeviceRequests"]
        assert stored["Capabilities"] == [["gpu"]]
        assert (stored["Count"], stored["DeviceIDs"] or []) == (request.count, list(request.device_ids))


def test_deploy_with_gpus_on_an_engine_without_them_stops_at_plan_time(tmp_path: Path, engine) -> None:  # noqa: ANN001
    backend, _ = engine
    project = f"gpu{uuid.uuid4().hex[:6]}"
    config = tmp_path / "flashfit.yml"
    config.write_text(f"project: {project}\nresources:\n  gpus: 1\n")
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["deploy", "--dry-run", "--version", "v1", "-c", str(config), "--json"])
    engine_gpus = backend.gpu_support()
    if "nvidia" in engine_gpus.runtimes or engine_gpus.cdi_gpus:  # a GPU host: the plan carries the request
        assert result.exit_code == 0, result.output
        assert '"gpus"' in result.stdout
        return
    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    error = json.loads(result.stdout)
    assert "no NVIDIA runtime" in error["message"] and "nvidia-ctk" in (error.get("hint") or "")
    assert not backend.list_containers(project)  # nothing was created


def test_doctor_gpu_check_on_the_real_engine(tmp_path: Path, engine) -> None:  # noqa: ANN001
    backend, _ = engine
    runner = CliRunner(env={"COLUMNS": "200"})
    plain = tmp_path / "plain.yml"
    plain.write_text(f"project: gpu{uuid.uuid4().hex[:6]}\n")
    result = runner.invoke(app, ["doctor", "--check", "gpu", "-c", str(plain), "--json"])
    [finding] = json.loads(result.stdout)
    assert finding["status"] == "ok" and finding["summary"].startswith("not configured")

    configured = tmp_path / "gpus.yml"
    configured.write_text(f"project: gpu{uuid.uuid4().hex[:6]}\nresources:\n  gpus: 1\n")
    result = runner.invoke(app, ["doctor", "--check", "gpu", "-c", str(configured), "--json"])
    [finding] = json.loads(result.stdout)
    engine_gpus = backend.gpu_support()
    assert finding["status"] == "failure" and result.exit_code == 1
    if "nvidia" not in engine_gpus.runtimes and not engine_gpus.cdi_gpus:
        assert "no NVIDIA runtime" in finding["summary"]
    else:  # a GPU host with nothing of this project deployed
        assert "no backend container is running" in finding["summary"]
