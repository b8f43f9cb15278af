from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flashfit_server.models.encoders import BlipCaptioner, ClipEncoder, ModelLoadError
from flashfit_server.models.registry import ModelNames, ModelRegistry
from flashfit_server.models.tiny import DEFAULT_BLIP, DEFAULT_CLIP, DEFAULT_FASHION, make_checkpoints
from flashfit_server.service import embed_catalogue_sync
from tests.server.conftest import image_bytes


def _images(n: int) -> list[Image.Image]:
    import io

    return [Image.open(io.BytesIO(image_bytes(i))).convert("RGB") for i in range(n)]


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.safetensors")}


def test_same_seed_gives_byte_identical_weights(tmp_path: Path, tiny_models: Path) -> None:
    make_checkpoints(tmp_path / "again", seed=0)
    assert _digests(tmp_path / "again") == _digests(tiny_models)
    assert len(_digests(tiny_models)) == 3
    make_checkpoints(tmp_path / "other", seed=1)
    assert _digests(tmp_path / "other") != _digests(tiny_models)


def test_layout_matches_the_real_checkpoint_names(tiny_models: Path) -> None:
    for name in (DEFAULT_CLIP, DEFAULT_BLIP, DEFAULT_FASHION):
        assert (tiny_models / name / "config.json").is_file()
    assert (tiny_models / DEFAULT_CLIP / "vocab.json").is_file() and (tiny_models / DEFAULT_CLIP / "merges.txt").is_file()
    assert (tiny_models / DEFAULT_BLIP / "vocab.txt").is_file()


def test_checkpoints_are_readable_by_other_users(tiny_models: Path) -> None:
    """The server runs as uid 1000 in its container; root makes the checkpoints on the host."""
    for path in tiny_models.rglob("*"):
        assert path.stat().st_mode & 0o004, f"{path} is not world-readable"


def test_clip_embeddings_are_normalised_and_deterministic(tiny_models: Path) -> None:
    clip = ClipEncoder.load(tiny_models, DEFAULT_CLIP)
    images = _images(3)
    first, second = clip.embed_images(images), clip.embed_images(images)
    assert first.shape == (3, clip.dim) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(first, second, atol=1e-6)
    texts = clip.embed_texts(["a red shirt", "", "ünïcødé 👗 " * 50])  # empty and overlong texts too
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)


def test_blip_captions_are_deterministic_text(tiny_models: Path) -> None:
    blip = BlipCaptioner.load(tiny_models, DEFAULT_BLIP, max_new_tokens=20)
    images = _images(4)
    captions = blip.caption(images)
    assert captions == blip.caption(images)
    assert len(captions) == 4 and all(isinstance(c, str) for c in captions)
    assert len(set(captions)) > 1  # the tiny model still looks at the image


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="make-tiny"):
        ClipEncoder.load(tmp_path, DEFAULT_CLIP)


def test_registry_loads_all_slots_and_batches_ingestion(tiny_models: Path) -> None:
    registry = ModelRegistry(tiny_models, ModelNames(DEFAULT_CLIP, DEFAULT_BLIP, DEFAULT_FASHION), max_batch_size=4)
    assert registry.load_all()
    dims = registry.dims()
    assert dims["clip"] == dims["blip"] != dims["fashion"]  # the tiny fashion model is narrower, on purpose
    embedded = embed_catalogue_sync(registry, _images(6))
    assert len(embedded) == 6
    for entry in embedded:
        assert {k: v.shape[0] for k, v in entry.vectors.items()} == dims
    # 6 images at batch size 4: two batches each for clip, fashion, captions and caption texts
    assert registry.queue.batches_run == 8
    registry.queue.close()


def test_registry_reports_a_failed_slot(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path, ModelNames(DEFAULT_CLIP, DEFAULT_BLIP, DEFAULT_FASHION))
    assert not registry.load_all()
    assert registry.slots["clip"].status == "failed" and "not found" in (registry.slots["clip"].error or "")
