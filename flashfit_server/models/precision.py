"""The fp16 tolerance check: a model runs in half precision only if that moves its scores by at
most FP16_SCORE_TOLERANCE.

Every score the server ranks by is a dot product of two L2-normalised embeddings, so for a unit
query q, |q.a16 - q.a32| <= ||a16 - a32|| (Cauchy-Schwarz): the largest distance between an
input's fp16 and fp32 embeddings bounds how far any of its scores can move. The check runs at load
on a few synthetic images (and texts for CLIP); the benchmark runs the same function on more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

# Largest change of any cosine score (range -1..1) that half precision may cause. Fusion weights
# are ~0.3 and near-tied items differ by more than 0.01 in practice; a bigger drift means fp32.
FP16_SCORE_TOLERANCE = 0.01


class Probed(Protocol):
    precision: str

    def probe(self, images: list[Image.Image]) -> np.ndarray: ...

    def set_precision(self, precision: str) -> None: ...


def probe_images(count: int = 4, side: int = 64) -> list[Image.Image]:
    """Deterministic smooth images (noise would be an unrealistic input for a vision model)."""
    from PIL import Image

    ys, xs = np.mgrid[0:side, 0:side] / side
    images = []
    for i in range(count):
        channels = [np.sin(xs * (2 + i + c) + ys * (3 + 2 * c) + i) for c in range(3)]
        images.append(Image.fromarray(((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8)))
    return images


def score_drift(reference: np.ndarray, candidate: np.ndarray) -> float:
    """The largest distance between matching rows, both L2-normalised: a bound on score change."""
    def unit(rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float64)
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)

    return float(np.max(np.linalg.norm(unit(reference) - unit(candidate), axis=1)))


def half_within_tolerance(
    model: Probed, images: list[Image.Image], tolerance: float = FP16_SCORE_TOLERANCE
) -> float:
    """Switch a loaded fp32 model to fp16 and keep it there only if its scores stay within
    tolerance; returns the measured drift (the model is fp32 again when it was too large)."""
    reference = model.probe(images)
    model.set_precision("fp16")
    drift = score_drift(reference, model.probe(images))
    if not np.isfinite(drift) or drift > tolerance:
        model.set_precision("fp32")
    return drift
