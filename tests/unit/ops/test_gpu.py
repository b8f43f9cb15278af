"""resources.gpus end to end as data: config validation, the container spec's device request,
the plan-time check of what the engine can give, the rendered compose/stack files, the Swarm
service arguments, and the GPU variant of the image (pins, download commands, Dockerfile, labels).
The real tools (docker-compose config, docker stack config, the engine) run in
tests/integration/ops/test_gpu_render_engine.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from flashfit_ops.config.load import resolve
from flashfit_ops.config.model import Config
from flashfit_ops.errors import ConfigError
from flashfit_ops.execute.backend import device_request
from flashfit_ops.images import build as b
from flashfit_ops.images import wheelhouse as wh
from flashfit_ops.plan import plan_deploy
from flashfit_ops.plan.common import (
    GPU_NODE_LABEL,
    EngineGpus,
    Target,
    backend_spec,
    gpu_problem,
    gpu_request,
    swarm_gpu_problem,
)
from flashfit_ops.plan.observed import Observed, ProxyState
from flashfit_ops.plan.steps import GpuRequest, StartContainer
from flashfit_ops.render import render_all, render_stack
from flashfit_ops.swarm.sdk import service_kwargs
from flashfit_ops.swarm.spec import parse_stack


def with_gpus(gpus, **more) -> Config:  # noqa: ANN001, ANN003
    return resolve({"resources": {"gpus": gpus}, **more}, environ={})


# --- config ---------------------------------------------------------------------------------------


def test_gpus_is_a_count_or_device_ids() -> None:
    assert with_gpus(2).resources.gpus == 2
    assert with_gpus(["0", "GPU-3f2a9c1e"]).resources.gpus == ["0", "GPU-3f2a9c1e"]
    assert with_gpus(None).resources.gpus is None and Config().resources.gpus is None


@pytest.mark.parametrize(
    ("value", "message"),
    [(0, "at least 1"), (True, "GPU count"), ("all", "GPU count"), ([], "distinct"), (["0", "0"], "distinct"), (["a b"], "distinct")],
)
def test_bad_gpus_name_the_field(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        with_gpus(value)
    [problem] = info.value.problems
    assert problem.path == "resources.gpus" and message in problem.message


# --- the container spec and the plan ----------------------------------------------------------------


def test_container_spec_carries_the_device_request_and_runs_the_server_on_cuda() -> None:
    spec = backend_spec(with_gpus(2), Target("v1", "d1"), "blue", 1)
    assert spec.gpus == GpuRequest(count=2)
    assert spec.env["DEVICE"] == "cuda"
    spec = backend_spec(with_gpus(["1", "GPU-ab"]), Target("v1", "d1"), "blue", 1)
    assert spec.gpus == GpuRequest(count=0, device_ids=("1", "GPU-ab"))


def test_without_gpus_the_spec_is_unchanged() -> None:
    spec = backend_spec(Config(), Target("v1", "d1"), "blue", 1)
    assert spec.gpus is None and "DEVICE" not in spec.env


@pytest.mark.parametrize("strategy", ["single", "blue-green", "rolling"])
def test_every_strategy_starts_containers_with_the_gpus(strategy: str) -> None:
    observed = Observed(project="flashfit", proxy=ProxyState(name="flashfit-proxy"))
    steps = plan_deploy(strategy, with_gpus(1), observed, Target("v2", "d2", replicas=1))
    starts = [s for s in steps if isinstance(s, StartContainer)]
    assert starts and all(s.spec.gpus == GpuRequest(count=1) for s in starts)
    data = starts[0].to_dict()["spec"]
    # Dry runs print the plan as JSON: the request is in it.
    assert json.loads(json.dumps(data["gpus"])) == {"count": 1, "device_ids": [], "driver": "nvidia", "capabilities": ["gpu"]}


def test_device_request_is_what_docker_run_gpus_sends() -> None:
    assert dict(device_request(GpuRequest(count=2))) == {
        "Driver": "nvidia", "Count": 2, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}
    }
    by_id = dict(device_request(GpuRequest(device_ids=("0", "GPU-ab"))))
    assert by_id["DeviceIDs"] == ["0", "GPU-ab"] and by_id["Count"] == 0


# --- what the engine can give: a plan-time error ------------------------------------------------------


def test_no_nvidia_runtime_is_a_plan_time_problem() -> None:
    problem = gpu_problem(with_gpus(1), EngineGpus(runtimes=("io.containerd.runc.v2", "runc")))
    assert problem and "no NVIDIA runtime" in problem and "runc" in problem
    assert gpu_problem(with_gpus(1), EngineGpus(runtimes=("nvidia", "runc"))) is None
    assert gpu_problem(Config(), EngineGpus()) is None  # no GPUs configured: nothing to check


def test_cdi_gpus_are_counted_and_named() -> None:
    engine = EngineGpus(runtimes=("runc",), cdi_gpus=("0", "GPU-aa", "1", "GPU-bb"))
    assert gpu_problem(with_gpus(2), engine) is None
    assert gpu_problem(with_gpus(["1", "GPU-aa"]), engine) is None
    assert "the engine has 2" in (gpu_problem(with_gpus(3), engine) or "")
    assert "names 7" in (gpu_problem(with_gpus(["7"]), engine) or "")


def test_swarm_needs_a_labelled_gpu_node() -> None:
    assert f"{GPU_NODE_LABEL}=true" in (swarm_gpu_problem(with_gpus(1), 0) or "")
    assert swarm_gpu_problem(with_gpus(1), 2) is None
    assert swarm_gpu_problem(Config(), 0) is None


# --- rendered files ---------------------------------------------------------------------------------


def backend_of(text: str) -> dict:
    services = yaml.safe_load(text)["services"]
    return next(body for name, body in services.items() if name.startswith("backend"))


def test_compose_files_reserve_nvidia_devices() -> None:
    files = render_all(with_gpus(2))
    for name in ("docker-compose.dev.yml", "docker-compose.prod.yml", "docker-compose.blue.yml", "docker-compose.green.yml"):
        backend = backend_of(files[name].text)
        assert backend["deploy"]["resources"]["reservations"]["devices"] == [
            {"driver": "nvidia", "count": 2, "capabilities": ["gpu"]}
        ], name
        assert backend["environment"]["DEVICE"] == "cuda"
    ids = backend_of(render_all(with_gpus(["0", "GPU-ab"]))["docker-compose.prod.yml"].text)
    assert ids["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "device_ids": ["0", "GPU-ab"], "capabilities": ["gpu"]}
    ]


def test_without_gpus_the_rendered_files_are_unchanged() -> None:
    files = render_all(Config())
    for rendered in files.values():
        assert "nvidia" not in rendered.text and "generic_resources" not in rendered.text
        assert "flashfit.gpu" not in rendered.text and "DEVICE" not in rendered.text


def test_stack_reserves_generic_gpu_resources_on_labelled_nodes() -> None:
    backend = backend_of(render_stack(with_gpus(1), "v1"))
    assert "node.labels.flashfit.gpu == true" in backend["deploy"]["placement"]["constraints"]
    assert backend["deploy"]["resources"]["reservations"]["generic_resources"] == [
        {"discrete_resource_spec": {"kind": "gpu", "value": 1}}
    ]
    assert "devices" not in backend["deploy"]["resources"]["reservations"]  # docker stack rejects it
    swarm = {"constraints": ["node.role == worker"]}
    backend = backend_of(render_stack(with_gpus(["GPU-ab", "GPU-cd"], swarm=swarm), "v1"))
    assert backend["deploy"]["placement"]["constraints"] == ["node.role == worker", "node.labels.flashfit.gpu == true"]
    # A stack can only count GPUs (docker stack config rejects named_resource_spec): ids count.
    assert backend["deploy"]["resources"]["reservations"]["generic_resources"] == [
        {"discrete_resource_spec": {"kind": "gpu", "value": 2}}
    ]


def test_swarm_service_arguments_reserve_the_gpus() -> None:
    definition = parse_stack(render_stack(with_gpus(2), "v1")).services["backend"]
    assert definition.generic_resources == (("gpu", 2),)
    kwargs = service_kwargs("p", definition, version="v1", secret_ids={}, config_ids={})
    assert kwargs["resources"]["Reservations"]["GenericResources"] == [{"DiscreteResourceSpec": {"Kind": "gpu", "Value": 2}}]
    assert "node.labels.flashfit.gpu == true" in kwargs["constraints"]
    named = parse_stack(render_stack(with_gpus(["GPU-ab"]), "v1")).services["backend"]
    kwargs = service_kwargs("p", named, version="v1", secret_ids={}, config_ids={})
    assert kwargs["resources"]["Reservations"]["GenericResources"] == [{"DiscreteResourceSpec": {"Kind": "gpu", "Value": 1}}]


def test_swarm_service_arguments_without_gpus_have_no_generic_resources() -> None:
    definition = parse_stack(render_stack(Config(), "v1")).services["backend"]
    assert definition.generic_resources == ()
    kwargs = service_kwargs("p", definition, version="v1", secret_ids={}, config_ids={})
    assert "GenericResources" not in kwargs["resources"].get("Reservations", {})


# --- the GPU image variant -----------------------------------------------------------------------------


PINS = [wh.Pin("numpy", "2.3.0", "flashfit"), wh.Pin("torch", "2.13.0+cpu", "flashfit"), wh.Pin("filelock", "3.20.0", "torch")]


def test_gpu_pins_take_torchs_default_build_of_the_same_release() -> None:
    gpu = {p.name: p.version for p in wh.gpu_pins(PINS)}
    assert gpu == {"numpy": "2.3.0", "torch": "2.13.0", "filelock": "3.20.0"}
    assert "torch==2.13.0\n" in wh.requirements_text(wh.gpu_pins(PINS))


def test_gpu_wheelhouse_downloads_torch_with_its_cuda_dependencies(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(wh.requirements_text(wh.gpu_pins(PINS)))
    plain, cuda = wh.download_commands(tmp_path, requirements, wh.gpu_pins(PINS), gpu=True)
    assert "--no-deps" in plain and (tmp_path / "requirements-plain.txt").read_text().count("==") == 2
    assert "torch" not in (tmp_path / "requirements-plain.txt").read_text()
    assert "--no-deps" not in cuda and cuda[cuda.index("-c") + 1] == str(requirements)
    assert (tmp_path / "requirements-cuda.txt").read_text().splitlines()[-1] == "torch==2.13.0"
    assert "--only-binary=:all:" in cuda  # still wheels only, for the image's platform
    [cpu] = wh.download_commands(tmp_path, requirements, PINS, gpu=False)
    assert "--no-deps" in cpu
    assert wh.wheelhouse_folder(tmp_path, gpu=True) == tmp_path / "gpu"


def test_gpu_and_cpu_stamps_never_vouch_for_each_other(tmp_path: Path) -> None:
    text = wh.requirements_text(PINS)
    (tmp_path / wh.STAMP).write_text(json.dumps({**wh._stamp_payload(text, gpu=True), "wheels": {}}))
    assert wh.stamp_is_current(tmp_path, text, gpu=True) == []
    assert wh.stamp_is_current(tmp_path, text, gpu=False) is None
    (tmp_path / wh.STAMP).write_text(json.dumps({**wh._stamp_payload(text), "wheels": {}}))
    assert wh.stamp_is_current(tmp_path, text, gpu=True) is None


def gpu_wheelhouse(folder: Path) -> wh.Wheelhouse:
    folder.mkdir(parents=True)
    wheels = ["torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl", "nvidia_cublas_cu12-12.9.1.4-py3-none-manylinux_2_27_x86_64.whl"]
    for name in wheels:
        (folder / name).write_bytes(b"wheel")
    (folder / "requirements.txt").write_text("torch==2.13.0\n")
    return wh.Wheelhouse(folder, folder / "requirements.txt", [wh.Pin("torch", "2.13.0", "flashfit")], wheels, 10, True, 0.0)


def test_gpu_build_context_dockerfile_and_labels(tmp_path: Path) -> None:
    config = resolve({"resources": {"gpus": 1}}, environ={}, base_dir=tmp_path)
    wheel = tmp_path / "flashfit-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"flashfit")
    plan = b.plan_context(config, gpu_wheelhouse(tmp_path / ".wheelhouse" / "gpu"), wheel, gpu=True)
    assert "wheelhouse/nvidia_cublas_cu12-12.9.1.4-py3-none-manylinux_2_27_x86_64.whl" in plan.listing()
    dockerfile = plan.texts["Dockerfile"]
    assert "ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility" in dockerfile
    assert dockerfile.count(f"FROM {config.server.build.base_image}") == 2  # the same Debian base, no CUDA image
    assert "NVIDIA_VISIBLE_DEVICES" not in dockerfile  # which GPUs is the deploy's choice, not the image's
    cpu = b.plan_context(config, gpu_wheelhouse(tmp_path / "cpu"), wheel, gpu=False).texts["Dockerfile"]
    assert "NVIDIA" not in cpu
    assert b.variant_label(True) == {"io.flashfit.variant": "gpu"}
    assert b.variant_label(False) == {"io.flashfit.variant": "cpu"}


def test_the_variant_follows_resources_gpus_unless_asked() -> None:
    assert b.wants_gpu(with_gpus(1)) is True and b.wants_gpu(Config()) is False
    assert b.wants_gpu(Config(), gpu=True) is True and b.wants_gpu(with_gpus(1), gpu=False) is False


def test_rendered_dockerfile_is_the_gpu_variant_when_gpus_are_configured() -> None:
    assert "NVIDIA_DRIVER_CAPABILITIES" in render_all(with_gpus(1))["Dockerfile"].text
    assert "NVIDIA_DRIVER_CAPABILITIES" not in render_all(Config())["Dockerfile"].text


def test_gpu_request_helper() -> None:
    assert gpu_request(Config()) is None
    assert gpu_request(with_gpus(3)) == GpuRequest(count=3)


# --- the deploy's plan-time gate ------------------------------------------------------------------------


class GateBackend:
    """The three engine questions the gate asks, answered as given."""

    def __init__(self, runtimes=("runc",), image_labels=None, nodes=0):  # noqa: ANN001
        self.runtimes, self.labels, self.nodes = runtimes, image_labels, nodes

    def gpu_support(self) -> EngineGpus:
        return EngineGpus(runtimes=tuple(self.runtimes))

    def image_labels(self, reference: str):  # noqa: ANN201
        return self.labels

    def gpu_nodes(self, label: str) -> int:
        return self.nodes


def test_deploy_gate() -> None:
    from flashfit_ops.errors import EXIT_UNAVAILABLE, EXIT_USAGE, FlashFitError
    from flashfit_ops.execute.service import require_gpus

    require_gpus(GateBackend(runtimes=()), Config(), "v1")  # no GPUs configured: nothing asked
    require_gpus(GateBackend(runtimes=("nvidia",), image_labels={"io.flashfit.variant": "gpu"}), with_gpus(1), "v1")
    require_gpus(GateBackend(runtimes=("nvidia",)), with_gpus(1), "v1")  # no image yet: deploy builds the GPU one
    with pytest.raises(FlashFitError) as info:
        require_gpus(GateBackend(runtimes=("runc",)), with_gpus(1), "v1")
    assert info.value.exit_code == EXIT_UNAVAILABLE and "no NVIDIA runtime" in info.value.message
    with pytest.raises(FlashFitError) as info:
        require_gpus(GateBackend(runtimes=("nvidia",), image_labels={"io.flashfit.project": "x"}), with_gpus(1), "v1")
    assert info.value.exit_code == EXIT_USAGE and "flashfit build --gpu --version v1" in (info.value.hint or "")
    swarm = with_gpus(1, target="swarm")
    with pytest.raises(FlashFitError, match="no Swarm node is labelled flashfit.gpu=true"):
        require_gpus(GateBackend(nodes=0), swarm, "v1")
    require_gpus(GateBackend(nodes=1), swarm, "v1")
