"""The three model slots of one worker: loaded once, in a background thread, then served
through the batching inference queue.

`/health` answers while loading; `/ready` turns 200 once every slot is loaded (deploys gate on
it). A slot that fails to load stays failed with its error in the readiness checks.
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
    ):
        self.cache_dir = cache_dir
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

    def load_all(self) -> bool:
        """Load every slot in this thread; True when all three loaded."""
        from flashfit_server.models.encoders import BlipCaptioner, ClipEncoder

        self._set_threads()
        loaders: dict[str, Callable[[], Any]] = {
            "clip": lambda: ClipEncoder.load(self.cache_dir, self.names.clip),
            "blip": lambda: BlipCaptioner.load(self.cache_dir, self.names.blip, self.caption_max_tokens),
            "fashion": lambda: ClipEncoder.load(self.cache_dir, self.names.fashion),
        }
        for slot, load in loaders.items():
            self.slots[slot].status = "loading"
            started = time.perf_counter()
            try:
                setattr(self, slot, load())
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
