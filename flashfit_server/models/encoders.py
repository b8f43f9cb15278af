"""The three model slots as small encoder objects, loaded from local files only.

Every checkpoint is read from MODEL_CACHE_DIR/<checkpoint name> with local_files_only=True, so a
tiny test checkpoint and a real one go through the same code. Embeddings come back as float32
numpy arrays, L2-normalised, one row per input. A model is moved to its device once, at load;
each batch's inputs follow it there and only the embeddings come back to the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image


class ModelLoadError(RuntimeError):
    """A checkpoint is missing or unreadable; the message says which folder and why."""


def _offline() -> None:
    # Never reach for the hub from the server, whatever the host's network allows.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def checkpoint_dir(cache_dir: Path, name: str) -> Path:
    path = cache_dir / name
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"checkpoint {name!r} not found under {cache_dir} (expected {path}/config.json); "
            "run `flashfit-server models pull DIR` on a host that can reach the hub, "
            "or `flashfit-server models make-tiny DIR` for tests"
        )
    return path


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _dtype(precision: str):  # noqa: ANN202
    import torch

    return torch.float16 if precision == "fp16" else torch.float32


class _OnDevice:
    """Where the model lives and at which precision; fp16 only through `set_precision`."""

    model: Any
    device: str
    precision: str

    def _place(self) -> None:
        self.model.to(device=self.device, dtype=_dtype(self.precision))

    def set_precision(self, precision: str) -> None:
        self.precision = precision
        self._place()

    def _pixels(self, images: list[Image.Image]):  # noqa: ANN202
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]  # type: ignore[attr-defined]
        return pixels.to(device=self.device, dtype=_dtype(self.precision))


def _as_tensor(output: Any):  # noqa: ANN202
    # transformers 5 returns an output object from get_*_features; older versions a tensor.
    if hasattr(output, "pooler_output") and output.pooler_output is not None:
        return output.pooler_output
    return output


@dataclass
class ClipEncoder(_OnDevice):
    """A CLIP-architecture model: images and texts into one normalised space."""

    name: str
    model: Any
    processor: Any
    device: str = "cpu"
    precision: str = "fp32"

    @classmethod
    def load(cls, cache_dir: Path, name: str, device: str = "cpu") -> ClipEncoder:
        _offline()
        from transformers import CLIPModel, CLIPProcessor

        path = checkpoint_dir(cache_dir, name)
        try:
            model = CLIPModel.from_pretrained(path, local_files_only=True)
            processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load CLIP checkpoint {path}: {exc}") from exc
        model.eval()
        encoder = cls(name=name, model=model, processor=processor, device=device)
        encoder._place()
        return encoder

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def max_text_tokens(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            features = _as_tensor(self.model.get_image_features(pixel_values=self._pixels(images)))
        return l2_normalise(features.float().cpu().numpy())

    def probe(self, images: list[Image.Image]) -> np.ndarray:
        """What the fp16 tolerance check compares: the image embeddings and a few text ones."""
        return np.concatenate([self.embed_images(images), self.embed_texts(["a red dress", "blue jeans"])])

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        inputs = self.processor.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        )
        with torch.inference_mode():
            features = _as_tensor(
                self.model.get_text_features(
                    input_ids=inputs["input_ids"].to(self.device),
                    attention_mask=inputs["attention_mask"].to(self.device),
                )
            )
        return l2_normalise(features.float().cpu().numpy())


@dataclass
class BlipCaptioner(_OnDevice):
    """BLIP image captioning; greedy decoding so a caption is a pure function of the image."""

    name: str
    model: Any
    processor: Any
    max_new_tokens: int
    device: str = "cpu"
    precision: str = "fp32"

    @classmethod
    def load(cls, cache_dir: Path, name: str, max_new_tokens: int = 20, device: str = "cpu") -> BlipCaptioner:
        _offline()
        from transformers import BlipForConditionalGeneration, BlipProcessor

        path = checkpoint_dir(cache_dir, name)
        try:
            model = BlipForConditionalGeneration.from_pretrained(path, local_files_only=True)
            processor = BlipProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load BLIP checkpoint {path}: {exc}") from exc
        model.eval()
        configured = model.generation_config.max_new_tokens
        limit = min(max_new_tokens, configured) if configured else max_new_tokens
        captioner = cls(name=name, model=model, processor=processor, max_new_tokens=limit, device=device)
        captioner._place()
        return captioner

    def caption(self, images: list[Image.Image]) -> list[str]:
        import torch

        with torch.inference_mode():
            token_ids = self.model.generate(
                pixel_values=self._pixels(images),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                num_beams=1,
            )
        captions = self.processor.batch_decode(token_ids.cpu(), skip_special_tokens=True)
        return [" ".join(c.split()) for c in captions]

    def probe(self, images: list[Image.Image]) -> np.ndarray:
        """What the fp16 tolerance check compares: the vision encoder's pooled image features,
        which every generated caption token attends to."""
        import torch

        with torch.inference_mode():
            pooled = self.model.vision_model(pixel_values=self._pixels(images)).pooler_output
        return l2_normalise(pooled.float().cpu().numpy())
