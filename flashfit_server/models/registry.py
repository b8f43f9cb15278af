"""The three model slots of one worker: loaded once, in a background thread, then served
through the batching inference queue.

`/health` answers while loading; `/ready` turns 200 once every slot is loaded (deploys gate on
it). A slot that fails to load stays failed with its error in the readiness checks.

The device is chosen once (`select_device`, before loading): every model is moved there at load,
switched to fp16 where the tolerance check allows it, and the batch limit is the device's own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flashfit_server.inference import BatchFn, InferenceQueue, Observer
from flashfit_server.models.device import DeviceChoice, DeviceUnavailable, choose_device, device_name, gpu_memory

if TYPE_CHECKING:
    from PIL import Image

    from flashfit_server.models.encoders import BlipCaptioner, ClipEncoder

log = logging.getLogger(__name__)

SLOTS = ("clip", "blip", "fashion")


@dataclass
class SlotState:
    status: str = "pending"  # pending | loading | loaded | failed
    error: str | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class ModelNames:
    clip: str
    blip: str
    fashion: str


class ModelRegistry:
    def __init__(
        self,
        cache_dir: Path,
        names: ModelNames,
        max_batch_size: int = 32,
        threads: int = 1,
        caption_max_tokens: int = 20,
        observe: Observer | None = None,
        device: str = "cpu",
        precision: str = "auto",
        max_batch_size_cuda: int | None = None,
    ):
        self.cache_dir = cache_dir
        self.requested_device = device
        self.requested_precision = precision
        self.batch_sizes = {"cpu": max_batch_size, "cuda": max_batch_size_cuda or max_batch_size}
        self.choice: DeviceChoice | None = None
        self.fp16_drift: dict[str, float] = {}
        self.device_name: str | None = None
        self.names = names
        self.threads = threads
        self.caption_max_tokens = caption_max_tokens
        self.slots = {slot: SlotState() for slot in SLOTS}
        self.clip: ClipEncoder | None = None
        self.blip: BlipCaptioner | None = None
        self.fashion: ClipEncoder | None = None
        self._loaded = threading.Event()
        self.queue = InferenceQueue(self._batch_fn, max_batch_size, observe, on_start=self._set_threads)

    # --- loading -------------------------------------------------------------------------------

    @property
    def all_loaded(self) -> bool:
        return all(state.status == "loaded" for state in self.slots.values())

    def is_loaded(self, slot: str) -> bool:
        return self.slots[slot].status == "loaded"

    def _set_threads(self) -> None:
        import torch

        torch.set_num_threads(self.threads)

    def select_device(self) -> DeviceChoice:
        """Resolve DEVICE once; raises DeviceUnavailable when CUDA was asked for and is absent."""
        if self.choice is None:
            self.choice = choose_device(self.requested_device, self.requested_precision, self.batch_sizes)
            self.queue.max_batch = self.choice.max_batch_size
            self.device_name = device_name(self.choice.device)
            log.info("inference device %s, precision %s, batches up to %d",
                     self.choice.device, self.choice.precision, self.choice.max_batch_size)
        return self.choice

    def _placed(self, slot: str, model: Any) -> Any:
        """fp16 on the GPU where the tolerance check allows it (models/precision.py)."""
        assert self.choice is not None
        if self.choice.precision == "fp16":
            from flashfit_server.models.precision import half_within_tolerance, probe_images

            try:
                self.fp16_drift[slot] = round(half_within_tolerance(model, probe_images()), 6)
            except Exception as exc:  # an op without fp16 support: the model still serves, in fp32
                log.warning("model slot %s: fp16 check failed (%s); running fp32", slot, exc)
                model.set_precision("fp32")
                return model
            log.info("model slot %s: fp16 score drift %.5f -> %s", slot, self.fp16_drift[slot], model.precision)
        return model

    def load_all(self) -> bool:
        """Load every slot in this thread; True when all three loaded."""
        from flashfit_server.models.encoders import BlipCaptioner, ClipEncoder

        self._set_threads()
        try:
            device = self.select_device().device
        except DeviceUnavailable as exc:  # every slot fails with the reason; /ready reports it
            self.slots = {slot: SlotState("failed", str(exc)) for slot in SLOTS}
            self._loaded.set()
            return False
        loaders: dict[str, Callable[[], Any]] = {
            "clip": lambda: ClipEncoder.load(self.cache_dir, self.names.clip, device),
            "blip": lambda: BlipCaptioner.load(self.cache_dir, self.names.blip, self.caption_max_tokens, device),
            "fashion": lambda: ClipEncoder.load(self.cache_dir, self.names.fashion, device),
        }
        for slot, load in loaders.items():
            self.slots[slot].status = "loading"
            started = time.perf_counter()
            try:
                setattr(self, slot, self._placed(slot, load()))
            except Exception as exc:  # reported by /ready; the worker keeps answering /health
                log.error("model slot %s failed to load: %s", slot, exc)
                self.slots[slot] = SlotState("failed", str(exc))
                continue
            self.slots[slot] = SlotState("loaded", None, round(time.perf_counter() - started, 3))
            log.info("model slot %s loaded in %.2fs", slot, self.slots[slot].seconds)
        self._loaded.set()
        return self.all_loaded

    def start_loading(self, then: Callable[[ModelRegistry], None] | None = None) -> threading.Thread:
        def run() -> None:
            self.load_all()
            if then is not None:
                then(self)

        thread = threading.Thread(target=run, name="model-loader", daemon=True)
        thread.start()
        return thread

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return self._loaded.wait(timeout)

    def device_info(self) -> dict[str, Any]:
        """For /health and /metrics: the device, each slot's precision and the GPU memory held."""
        device = self.choice.device if self.choice else None  # None: not chosen yet (startup)
        precisions = {slot: getattr(self, slot).precision for slot in SLOTS if getattr(self, slot) is not None}
        return {
            "requested": self.requested_device,
            "type": device,
            "name": self.device_name,
            "max_batch_size": self.choice.max_batch_size if self.choice else None,
            "precision": precisions,
            "fp16_drift": dict(self.fp16_drift),
            "gpu_memory": gpu_memory(device or "cpu"),
        }

    def dims(self) -> dict[str, int]:
        assert self.clip is not None and self.fashion is not None
        # The blip store holds CLIP text embeddings of captions, so it lives in CLIP's space.
        return {"clip": self.clip.dim, "blip": self.clip.dim, "fashion": self.fashion.dim}

    # --- inference -----------------------------------------------------------------------------

    def _batch_fn(self, slot: str, operation: str) -> BatchFn:
        encoder = getattr(self, slot)
        if encoder is None:
            raise RuntimeError(f"model slot {slot} is not loaded")
        if operation == "image":
            return encoder.embed_images
        if operation == "text":
            return encoder.embed_texts
        if operation == "caption":
            return encoder.caption
        raise ValueError(f"unknown operation {operation}")

    def submit_images(self, slot: str, images: list[Image.Image]) -> list[Future]:
        return self.queue.submit(slot, "image", images)

    def submit_texts(self, slot: str, texts: list[str]) -> list[Future]:
        return self.queue.submit(slot, "text", texts)

    def submit_captions(self, images: list[Image.Image]) -> list[Future]:
        return self.queue.submit("blip", "caption", images)
