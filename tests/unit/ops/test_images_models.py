"""Models baked into the image (server.build.models: baked): the folder check that refuses an
incomplete checkpoint before a build, the build context and labels, and the deploy's refusal of an
image without models. Checkpoints here are hand-written files of the real formats (a safetensors
header and data, JSON configs); the integration test bakes the server's own tiny checkpoints."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flashfit_contract.modelfolder import DEFAULT_CHECKPOINTS, ModelFolderError, check_safetensors, validate_model_folder
from flashfit_ops.cli import app
from flashfit_ops.config.load import resolve
from flashfit_ops.errors import EXIT_USAGE, UsageError
from flashfit_ops.execute import service
from flashfit_ops.images import build as b
from flashfit_ops.labels import LABEL_MODELS, LABEL_MODELS_DIGEST
from tests.conftest import REPO_ROOT
from tests.unit.ops.test_images_context import fake_wheelhouse


def safetensors(tensors: dict[str, int]) -> bytes:
    """A valid safetensors file: tensors of `n` float32 values each, laid out one after another."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, count in tensors.items():
        header[name] = {"dtype": "F32", "shape": [count], "data_offsets": [offset, offset + 4 * count]}
        offset += 4 * count
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + bytes(offset)


def write_checkpoint(folder: Path, tokenizer: str = "tokenizer.json") -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "clip"}')
    (folder / "processor_config.json").write_text('{"image_processor": {}}')
    (folder / tokenizer).write_text("{}")
    (folder / "model.safetensors").write_bytes(safetensors({"a": 3, "b": 5}))


def models_folder(root: Path) -> Path:
    for name in DEFAULT_CHECKPOINTS.values():
        write_checkpoint(root / name, "vocab.txt" if "blip" in name else "tokenizer.json")
    return root


def test_a_complete_folder_lists_each_checkpoints_files_and_hashes_them(tmp_path: Path) -> None:
    root = models_folder(tmp_path / "models")
    (root / "openai/clip-vit-base-patch32/.cache").mkdir()
    (root / "openai/clip-vit-base-patch32/.cache/download.lock").write_text("hub client state")
    (root / "openai/clip-vit-base-patch32/.env").write_text("JWT_SECRET_KEY=leaked")
    (root / "README.md").write_text("outside every checkpoint")
    folder = validate_model_folder(root)
    relatives = [f.relative for f in folder.files]
    assert relatives[:4] == [
        "Salesforce/blip-image-captioning-base/config.json",
        "Salesforce/blip-image-captioning-base/model.safetensors",
        "Salesforce/blip-image-captioning-base/processor_config.json",
        "Salesforce/blip-image-captioning-base/vocab.txt",
    ]
    assert len(relatives) == 12 and not any("/." in r or r == "README.md" for r in relatives)
    digest = folder.digest()
    assert digest.startswith("sha256:") and digest == validate_model_folder(root).digest()
    (root / "patrickjohncyh/fashion-clip/config.json").write_text('{"model_type": "clip", "x": 1}')
    assert validate_model_folder(root).digest() != digest


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda c: (c / "config.json").unlink(), "config.json is missing"),
        (lambda c: (c / "config.json").write_text("[1]"), "config.json is not a JSON object"),
        (lambda c: (c / "processor_config.json").unlink(), "no processor config"),
        (lambda c: (c / "tokenizer.json").unlink(), "no tokenizer"),
        (lambda c: (c / "model.safetensors").unlink(), "no weights"),
        # An interrupted download: the data is shorter than the header says.
        (lambda c: (c / "model.safetensors").write_bytes(safetensors({"a": 3, "b": 5})[:-4]), "an interrupted download"),
        (lambda c: (c / "model.safetensors").write_bytes(b"\x00" * 4), "truncated"),
        (lambda c: (c / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}"), "truncated or not safetensors"),
    ],
)
def test_an_incomplete_checkpoint_is_named_with_what_it_lacks(tmp_path: Path, damage: Any, message: str) -> None:
    root = models_folder(tmp_path / "models")
    damage(root / "openai/clip-vit-base-patch32")
    with pytest.raises(ModelFolderError, match="checkpoint openai/clip-vit-base-patch32") as info:
        validate_model_folder(root)
    assert message in str(info.value)


def test_missing_folder_missing_checkpoint_sharded_weights_and_links_out(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="is not a folder"):
        validate_model_folder(tmp_path / "absent")
    root = models_folder(tmp_path / "models")
    with pytest.raises(ModelFolderError, match="checkpoint other/model: .* is missing"):
        validate_model_folder(root, ("other/model",))
    with pytest.raises(ModelFolderError, match="not a plain checkpoint name"):
        validate_model_folder(root, ("../models",))
    clip = root / "openai/clip-vit-base-patch32"
    (clip / "model.safetensors").rename(clip / "model-00001-of-00002.safetensors")
    (clip / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(ModelFolderError, match="model-00002-of-00002.safetensors is missing"):
        validate_model_folder(root)
    (clip / "model-00002-of-00002.safetensors").write_bytes(safetensors({"b": 1}))
    assert len(validate_model_folder(root).files) == 14
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    (clip / "extra.json").symlink_to(secret)
    with pytest.raises(ModelFolderError, match="extra.json links outside the models folder"):
        validate_model_folder(root)


def test_safetensors_offsets_must_be_plain_ranges(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    text = json.dumps({"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(8))
    with pytest.raises(ModelFolderError, match="no valid data_offsets"):
        check_safetensors(path, "checkpoint x")


# --- the build ---------------------------------------------------------------------------------------


def baked_config(tmp_path: Path, **extra: Any):
    build = {"models": "baked", "context": str(REPO_ROOT)}
    return resolve({"server": {"build": build}, "volumes": {"models": "./models"}, **extra},
                   environ={}, base_dir=tmp_path)


def test_a_baked_build_refuses_a_missing_or_incomplete_folder_before_touching_the_engine(tmp_path: Path) -> None:
    config = baked_config(tmp_path)
    with pytest.raises(UsageError, match=r"volumes.models: cannot bake .*models into the image: .* is not a folder") as info:
        b.build_image(None, config, version="v1")  # type: ignore[arg-type]  # never reached
    assert info.value.details["field"] == "volumes.models" and "models pull" in (info.value.hint or "")
    models_folder(tmp_path / "models")
    (tmp_path / "models/Salesforce/blip-image-captioning-base/vocab.txt").unlink()
    with pytest.raises(UsageError, match="checkpoint Salesforce/blip-image-captioning-base: no tokenizer"):
        b.build_image(None, config, version="v1")  # type: ignore[arg-type]


def test_a_baked_build_refuses_a_folder_holding_the_env_file(tmp_path: Path) -> None:
    models_folder(tmp_path / "models")
    env_file = tmp_path / "models/openai/clip-vit-base-patch32/secrets.env"
    env_file.write_text("JWT_SECRET_KEY=x\n")
    config = baked_config(tmp_path, secrets={"env_file": str(env_file)})
    with pytest.raises(UsageError, match="holds the env file"):
        b.baked_models(config)


def test_the_cli_exits_2_naming_the_field_for_an_incomplete_folder(tmp_path: Path) -> None:
    models_folder(tmp_path / "models")
    (tmp_path / "models/patrickjohncyh/fashion-clip/model.safetensors").write_bytes(b"")
    (tmp_path / "flashfit.yml").write_text(
        f"server:\n  build:\n    models: baked\n    context: {REPO_ROOT}\nvolumes:\n  models: ./models\n")
    runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    result = runner.invoke(app, ["build", "-c", str(tmp_path / "flashfit.yml"), "--version", "v1"])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "volumes.models" in result.output and "fashion-clip: model.safetensors is truncated" in result.output
    assert "Traceback" not in result.output


def test_a_mounted_build_neither_checks_nor_copies_models(tmp_path: Path) -> None:
    config = resolve({"volumes": {"models": "./absent"}}, environ={}, base_dir=tmp_path)
    assert b.baked_models(config) is None
    assert b.models_labels(None, None) == {LABEL_MODELS: "mounted"}


def test_the_context_carries_the_checkpoints_readable_by_the_server_user(tmp_path: Path) -> None:
    config = baked_config(tmp_path)
    root = models_folder(tmp_path / "models")
    private = root / "openai/clip-vit-base-patch32/model.safetensors"
    private.chmod(0o600)  # written under umask 077: the server (uid 1000) could not read it
    house = fake_wheelhouse(tmp_path / ".wheelhouse")
    wheel = tmp_path / "flashfit-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"flashfit")
    models = b.baked_models(config)
    assert models is not None
    plan = b.plan_context(config, house, wheel, models=models)
    assert [p for p in plan.listing() if p.startswith("models/")] == [f"models/{f.relative}" for f in models.files]
    assert not any(".env" in p for p in plan.listing())
    context = tmp_path / "context"
    b.write_context(plan, context)
    copied = context / "models/openai/clip-vit-base-patch32/model.safetensors"
    assert copied.read_bytes() == private.read_bytes() and copied.stat().st_mode & 0o777 == 0o644
    assert private.stat().st_mode & 0o777 == 0o600, "the user's own file is left as it was"
    assert (context / "models/openai").stat().st_mode & 0o777 == 0o755
    assert "COPY models/ /app/models/" in plan.texts["Dockerfile"]
    labels = b.models_labels(models, models.digest())
    assert labels == {LABEL_MODELS: "baked", LABEL_MODELS_DIGEST: models.digest()}
    steps = [b.Step(1, 2, "COPY models/ /app/models/", cached=True), b.Step(2, 2, "COPY dist/ /build/dist/")]
    assert b.models_steps(steps) == steps[:1]


# --- the deploy ----------------------------------------------------------------------------------------


class LabelledImages:
    def __init__(self, labels: dict[str, str] | None) -> None:
        self.labels = labels

    def image_labels(self, reference: str) -> dict[str, str] | None:
        return self.labels


def test_a_baked_deploy_refuses_an_image_without_models(tmp_path: Path) -> None:
    config = baked_config(tmp_path)
    with pytest.raises(UsageError, match="flashfit/backend:v1 has no models inside") as info:
        service.require_models(LabelledImages({LABEL_MODELS: "mounted"}), config, "v1")  # type: ignore[arg-type]
    assert "flashfit build --version v1" in (info.value.hint or "")
    with pytest.raises(UsageError):
        service.require_models(LabelledImages({}), config, "v1")  # type: ignore[arg-type]  # built before the label
    service.require_models(LabelledImages({LABEL_MODELS: "baked"}), config, "v1")  # type: ignore[arg-type]
    service.require_models(LabelledImages(None), config, "v1")  # type: ignore[arg-type]  # missing: built baked next
    mounted = resolve({}, environ={})
    service.require_models(LabelledImages({LABEL_MODELS: "mounted"}), mounted, "v1")  # type: ignore[arg-type]


def test_a_baked_rollback_to_an_image_without_models_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rollback that creates containers (the version is not retained) is a deploy of that
    image: with nothing mounting the models, one built without them is refused the same way."""
    from tests.unit.ops.test_execute_executor import FakeBackend, FakeClock

    class OldImages(FakeBackend):
        def list_containers(self, project: str) -> list:
            return []

        def network_exists(self, name: str) -> bool:
            return False

        def image_exists(self, reference: str) -> bool:
            return True

        def image_tags(self, repository: str) -> list[str]:
            return ["v0"]

        def image_labels(self, reference: str) -> dict[str, str] | None:
            return {LABEL_MODELS: "mounted"}

    monkeypatch.setattr(service, "_engine", lambda: (None, OldImages(FakeClock())))
    with pytest.raises(UsageError, match="flashfit/backend:v0 has no models inside"):
        service.rollback(baked_config(tmp_path), "v0", dry_run=True)
