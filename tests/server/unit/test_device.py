"""Device choice (DEVICE/PRECISION/MAX_BATCH_SIZE_CUDA), the fp16 tolerance check, and what
/health and /metrics say about the device. CUDA's presence is a seam here (`cuda_available`);
the GPU path itself runs in benchmarks/bench_recommend.py --device cuda on a GPU host."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest

from flashfit_server.models.device import DeviceUnavailable, choose_device, gpu_memory
from flashfit_server.models.encoders import BlipCaptioner, ClipEncoder
from flashfit_server.models.precision import FP16_SCORE_TOLERANCE, half_within_tolerance, probe_images, score_drift
from flashfit_server.models.registry import ModelNames, ModelRegistry
from flashfit_server.models.tiny import DEFAULT_BLIP, DEFAULT_CLIP, DEFAULT_FASHION
from flashfit_server.settings import Settings, SettingsError

BATCHES = {"cpu": 32, "cuda": 128}


def gpu(present: bool):  # noqa: ANN201
    return lambda: present


@pytest.mark.parametrize(
    ("requested", "present", "device", "precision", "batch"),
    [
        ("auto", True, "cuda", "fp16", 128),
        ("auto", False, "cpu", "fp32", 32),
        ("cpu", True, "cpu", "fp32", 32),
        ("cuda", True, "cuda", "fp16", 128),
    ],
)
def test_device_choice(requested: str, present: bool, device: str, precision: str, batch: int) -> None:
    choice = choose_device(requested, "auto", BATCHES, cuda_available=gpu(present))
    assert (choice.device, choice.precision, choice.max_batch_size) == (device, precision, batch)


def test_cuda_asked_but_absent_is_an_error_that_says_what_to_check() -> None:
    with pytest.raises(DeviceUnavailable, match=r"DEVICE=cuda but torch sees no CUDA device.*resources.gpus"):
        choose_device("cuda", "auto", BATCHES, cuda_available=gpu(False))


def test_cpu_never_runs_half_precision_and_fp32_can_be_forced_on_the_gpu() -> None:
    assert choose_device("cpu", "fp16", BATCHES, cuda_available=gpu(True)).precision == "fp32"
    assert choose_device("auto", "fp16", BATCHES, cuda_available=gpu(False)).precision == "fp32"
    assert choose_device("cuda", "fp32", BATCHES, cuda_available=gpu(True)).precision == "fp32"


def test_cpu_choice_never_asks_torch() -> None:
    def fail() -> bool:
        raise AssertionError("DEVICE=cpu must not probe CUDA")

    assert choose_device("cpu", "auto", BATCHES, cuda_available=fail).device == "cpu"


def test_settings_read_device_variables() -> None:
    settings = Settings.from_env({"DEVICE": "CUDA", "PRECISION": "fp32", "MAX_BATCH_SIZE_CUDA": "256"})
    assert (settings.device, settings.precision, settings.max_batch_size_cuda) == ("cuda", "fp32", 256)
    defaults = Settings.from_env({})
    assert (defaults.device, defaults.precision, defaults.max_batch_size, defaults.max_batch_size_cuda) == ("auto", "auto", 32, 64)
    for env in ({"DEVICE": "gpu"}, {"PRECISION": "int8"}, {"MAX_BATCH_SIZE_CUDA": "0"}):
        with pytest.raises(SettingsError, match=next(iter(env))):
            Settings.from_env(env)


def test_gpu_memory_is_zero_on_the_cpu() -> None:
    assert gpu_memory("cpu") == {"allocated_bytes": 0, "reserved_bytes": 0, "total_bytes": 0}


# --- the fp16 tolerance check ----------------------------------------------------------------------


def test_score_drift_bounds_the_change_of_any_cosine_score() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(20, 16))
    candidate = reference + rng.normal(scale=0.01, size=reference.shape)
    drift = score_drift(reference, candidate)
    unit = lambda rows: rows / np.linalg.norm(rows, axis=1, keepdims=True)  # noqa: E731
    queries = unit(rng.normal(size=(50, 16)))
    largest = np.max(np.abs(queries @ unit(reference).T - queries @ unit(candidate).T))
    assert 0 < largest <= drift
    assert score_drift(reference, reference) == 0.0


def test_half_precision_is_kept_within_tolerance_and_undone_beyond_it(tiny_models: Path) -> None:
    """Runs the real check on a real (tiny) CLIP in fp16 on the CPU: torch computes fp16 there too."""
    clip = ClipEncoder.load(tiny_models, DEFAULT_CLIP)
    images = probe_images()
    drift = half_within_tolerance(clip, images, tolerance=1.0)
    assert clip.precision == "fp16" and 0 < drift < 1.0
    assert next(clip.model.parameters()).dtype.is_floating_point and str(next(clip.model.parameters()).dtype) == "torch.float16"
    embeddings = clip.embed_images(images)  # fp16 model, float32 normalised output
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-3)

    clip = ClipEncoder.load(tiny_models, DEFAULT_CLIP)
    half_within_tolerance(clip, images, tolerance=0.0)  # any drift is too much: back to fp32
    assert clip.precision == "fp32" and str(next(clip.model.parameters()).dtype) == "torch.float32"


def test_blip_probe_and_half_precision_captioning(tiny_models: Path) -> None:
    blip = BlipCaptioner.load(tiny_models, DEFAULT_BLIP)
    images = probe_images(2)
    assert blip.probe(images).shape[0] == 2
    half_within_tolerance(blip, images, tolerance=1.0)
    assert blip.precision == "fp16"
    assert all(isinstance(c, str) for c in blip.caption(images))


def test_stated_tolerance() -> None:
    assert FP16_SCORE_TOLERANCE == 0.01


# --- the registry on the CPU: behaviour unchanged ---------------------------------------------------


def registry(tiny_models: Path, **kwargs) -> ModelRegistry:  # noqa: ANN003
    return ModelRegistry(tiny_models, ModelNames(DEFAULT_CLIP, DEFAULT_BLIP, DEFAULT_FASHION), **kwargs)


def test_registry_on_cpu_keeps_fp32_and_the_cpu_batch_limit(tiny_models: Path) -> None:
    models = registry(tiny_models, max_batch_size=7, max_batch_size_cuda=99, device="cpu", precision="fp16")
    assert models.device_info()["type"] is None  # not chosen before startup
    assert models.load_all()
    assert models.queue.max_batch == 7
    info = models.device_info()
    assert info["type"] == "cpu" and info["name"] == "cpu" and info["max_batch_size"] == 7
    assert info["precision"] == {"clip": "fp32", "blip": "fp32", "fashion": "fp32"}
    assert info["fp16_drift"] == {} and info["gpu_memory"]["allocated_bytes"] == 0
    assert str(next(models.clip.model.parameters()).device) == "cpu"  # type: ignore[union-attr]


def test_registry_cuda_asked_without_a_gpu_refuses_before_loading(tiny_models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    models = registry(tiny_models, device="cuda")
    with pytest.raises(DeviceUnavailable):
        models.select_device()
    assert all(state.status == "pending" for state in models.slots.values())
    assert models.load_all() is False and models.wait_loaded(0)  # a direct caller is not left waiting
    assert all(s.status == "failed" and "DEVICE=cuda" in (s.error or "") for s in models.slots.values())


# --- /health, /metrics, startup ---------------------------------------------------------------------


def _app(tiny_models: Path, tmp_path: Path, **env: str):  # noqa: ANN202
    from flashfit_server.app import create_app

    base = {"MODEL_CACHE_DIR": str(tiny_models), "VECTOR_STORE_DIR": str(tmp_path / "data")}
    return create_app(Settings.from_env({**base, **env}))


async def _get(app, *paths: str) -> list[httpx.Response]:  # noqa: ANN001
    async with app.router.lifespan_context(app):
        app.state.service.registry.wait_loaded(60)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.get(path) for path in paths]


def test_health_and_metrics_report_the_device(tiny_models: Path, tmp_path: Path) -> None:
    health, metrics = asyncio.run(_get(_app(tiny_models, tmp_path, DEVICE="auto"), "/health", "/metrics"))
    device = health.json()["device"]
    assert device["requested"] == "auto" and device["type"] == "cpu"  # torch here is the CPU build
    assert device["gpu_memory"] == {"allocated_bytes": 0, "reserved_bytes": 0, "total_bytes": 0}
    text = metrics.text
    assert 'inference_device_info{device="cpu",precision="fp32"} 1.0' in text
    assert "gpu_memory_allocated_bytes 0.0" in text and "gpu_memory_total_bytes 0.0" in text


def test_startup_refuses_cuda_without_a_gpu(tiny_models: Path, tmp_path: Path) -> None:
    from flashfit_server.app import StartupRefused

    with pytest.raises(StartupRefused, match="DEVICE=cuda but torch sees no CUDA device"):
        asyncio.run(_get(_app(tiny_models, tmp_path, DEVICE="cuda"), "/health"))


def test_serve_with_cuda_asked_on_a_cpu_host_exits_3_and_says_why(tiny_models: Path, tmp_path: Path) -> None:
    """The real `flashfit-server serve` process: a documented exit code, not a server on the CPU."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "DEVICE": "cuda", "MODEL_CACHE_DIR": str(tiny_models), "VECTOR_STORE_DIR": str(tmp_path / "d")}
    env.pop("FLASHFIT_SOCKET", None)
    result = subprocess.run(
        [sys.executable, "-m", "flashfit_server.cli", "serve", "--host", "127.0.0.1", "--port", "0"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 3, result.stderr
    assert "DEVICE=cuda but torch sees no CUDA device" in result.stderr
    assert "Traceback" not in result.stderr


class HalfFails:
    """A model with an op that has no fp16 kernel: its probe raises once it is half precision."""

    precision = "fp32"

    def probe(self, images):  # noqa: ANN001, ANN201
        if self.precision == "fp16":
            raise RuntimeError('"addmm_impl" not implemented for Half')
        return np.ones((len(images), 4))

    def set_precision(self, precision: str) -> None:
        self.precision = precision


def test_a_model_that_cannot_run_fp16_serves_in_fp32(tiny_models: Path) -> None:
    from flashfit_server.models.device import DeviceChoice

    models = registry(tiny_models)
    models.choice = DeviceChoice("cuda", "fp16", 64)  # as on a GPU host
    model = models._placed("clip", HalfFails())
    assert model.precision == "fp32" and "clip" not in models.fp16_drift
