"""The doctor's GPU check with fakes at the engine and HTTP seams: "not configured" without
resources.gpus, the engine's runtime, each backend's device request, what nvidia-smi inside it
and its /health say. The real engine's answer is in tests/integration/ops/test_gpu_engine.py."""

from __future__ import annotations

from flashfit_ops.doctor.checks import gpu
from flashfit_ops.doctor.context import DoctorContext, Settings
from flashfit_ops.doctor.selection import all_checks
from flashfit_ops.doctor.result import FAILURE, OK, WARNING
from tests.unit.ops.test_doctor_checks import NOW, FakeClient, FakeExec, _transport, config, container

SMI = "0, GPU-aa, NVIDIA T4, 1200, 15360\n"
ON_CUDA = {"status": "healthy", "device": {"type": "cuda", "name": "NVIDIA T4", "precision": {"clip": "fp16"}}}
REQUEST = {"DeviceRequests": [{"Driver": "nvidia", "Count": 1, "Capabilities": [["gpu"]]}]}


class Engine(FakeClient):
    def __init__(self, items, runtimes=("nvidia", "runc")):
        super().__init__(items)
        self._runtimes = runtimes

    def info(self):
        return {"Runtimes": {name: {} for name in self._runtimes}}


def backend(smi=(0, SMI), host_config=REQUEST):  # noqa: ANN001, ANN201
    results = {tuple(gpu.SMI_QUERY[:2]): FakeExec(smi[0], smi[1].encode())}
    return container("demo-backend-blue-1-d1", host_config=host_config, exec_results=results)


def ctx(items, routes=None, runtimes=("nvidia", "runc"), gpus=1) -> DoctorContext:  # noqa: ANN001
    cfg = config(resources={"gpus": gpus}) if gpus else config()
    return DoctorContext(cfg, None, docker_factory=lambda: Engine(items, runtimes), http_transport=_transport(routes or {}),
                         settings=Settings(), now=lambda: NOW)


def test_gpu_check_is_registered() -> None:
    assert "gpu" in [c.name for c in all_checks()]


def test_not_configured_is_ok_and_touches_nothing() -> None:
    def no_engine():  # noqa: ANN202
        raise AssertionError("no GPU configured: the engine is not asked")

    cfg = config()
    found = gpu.gpu(DoctorContext(cfg, None, docker_factory=no_engine, settings=Settings(), now=lambda: NOW))
    assert found.status == OK and found.summary.startswith("not configured")


def test_a_backend_on_its_gpu_is_ok() -> None:
    found = gpu.gpu(ctx([backend()], {"172.30.0.5:8080/health": (200, ON_CUDA)}))
    assert found.status == OK, found
    assert "NVIDIA T4" in found.summary
    entry = found.details["containers"]["demo-backend-blue-1-d1"]
    assert entry["gpus"][0]["total_mib"] == 15360 and entry["server_device"]["type"] == "cuda"


def test_engine_without_nvidia_runtime_fails_with_the_fix() -> None:
    found = gpu.gpu(ctx([backend()], runtimes=("runc",)))
    assert found.status == FAILURE and "no NVIDIA runtime" in found.summary and "nvidia-ctk" in (found.hint or "")


def test_container_without_device_request_or_driver_fails() -> None:
    created_without = gpu.gpu(ctx([backend(host_config={})], {"172.30.0.5:8080/health": (200, ON_CUDA)}))
    assert created_without.status == FAILURE and "without a GPU request" in created_without.summary
    blind = gpu.gpu(ctx([backend(smi=(9, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver"))],
                        {"172.30.0.5:8080/health": (200, ON_CUDA)}))
    assert blind.status == FAILURE and "sees no GPU" in blind.summary and "NVIDIA driver" in blind.summary


def test_server_on_the_cpu_despite_its_gpu_fails() -> None:
    on_cpu = {"status": "healthy", "device": {"type": "cpu"}}
    found = gpu.gpu(ctx([backend()], {"172.30.0.5:8080/health": (200, on_cpu)}))
    assert found.status == FAILURE and "runs its models on cpu, not CUDA" in found.summary


def test_memory_headroom() -> None:
    parts, _ = gpu.judge_container("b", 1, (0, "0, GPU-aa, T4, 14000, 15360\n"), ON_CUDA)
    assert parts[0][0] == WARNING and "91% used" in parts[0][1]
    parts, _ = gpu.judge_container("b", 1, (0, "0, GPU-aa, T4, 15200, 15360\n"), ON_CUDA)
    assert parts[0][0] == FAILURE
    parts, _ = gpu.judge_container("b", 2, (0, SMI), ON_CUDA)
    assert parts[0][0] == FAILURE and "sees 1 GPU(s), 2 requested" in parts[0][1]


def test_parse_smi_skips_what_it_cannot_read() -> None:
    assert gpu.parse_smi("0, GPU-aa, T4, 1, 2\ngarbage\n1, GPU-bb, T4, x, 2\n") == [
        {"index": "0", "uuid": "GPU-aa", "name": "T4", "used_mib": 1, "total_mib": 2}
    ]
