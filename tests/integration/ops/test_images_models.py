"""Models baked into the backend image (server.build.models: baked), against the real Docker
engine: `flashfit build` copies the server's own tiny checkpoints (`flashfit-server models
make-tiny`) into MODEL_CACHE_DIR, labels the image with their digest, and the image serves /ready
with nothing mounted; a code-only rebuild reuses the models layer byte for byte (same layer
digest: a push does not upload it again).

Cheap on purpose: the real build of test_images_build.py, whose dependency stage is the engine's
build cache (the shared wheelhouse, the same pins), so each build here redoes only the small
layers: models (under 1 MB of tiny checkpoints) and the flashfit wheel. Every test tag and
container is removed in teardown (removing a tag prunes its untagged parents down to the shared
dependency stage).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from typer.testing import CliRunner

from flashfit_contract.modelfolder import validate_model_folder
from flashfit_ops.cli import app
from flashfit_ops.config import load_config
from flashfit_ops.engine.connect import connect
from flashfit_ops.errors import EXIT_OK
from flashfit_ops.images import bootstrap as boot
from flashfit_ops.images import build as b
from flashfit_ops.labels import LABEL_MODELS, LABEL_MODELS_DIGEST
from tests.conftest import REPO_ROOT
from tests.integration.ops.test_images_build import JWT, Resources, copy_sources, ready_answer, wait_on_condition

pytestmark = pytest.mark.integration

TOKEN = secrets.token_hex(4)
TEST_REPO = f"flashfit-test/baked-{TOKEN}"
MODELS_DIR = "/app/models"
SECRET = "never-in-an-image-" + TOKEN


@pytest.fixture(scope="module")
def client():
    return connect()


@pytest.fixture(scope="module")
def made(client) -> Iterator[Resources]:
    resources = Resources(client)
    yield resources
    resources.cleanup()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git copy of the sources, tiny checkpoints in ./models, and a config that bakes them."""
    root = tmp_path_factory.mktemp("baked")
    copy_sources(root / "src")
    server = Path(sys.executable).parent / "flashfit-server"
    done = subprocess.run([str(server), "models", "make-tiny", str(root / "models")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # Secrets beside and inside the models folder: none may reach the image.
    for env_file in (root / ".env", root / "models/.env", root / "models/openai/clip-vit-base-patch32/.env"):
        env_file.write_text(f"JWT_SECRET_KEY={SECRET}\n")
        env_file.chmod(0o600)
    (root / "flashfit.yml").write_text(
        "project: bakedtest\n"
        "server:\n"
        f"  image: {TEST_REPO}\n"
        "  build:\n"
        f"    base_image: {boot.BASE.image}\n"
        "    context: ./src\n"
        f"    wheelhouse: {REPO_ROOT / '.wheelhouse'}\n"
        "    models: baked\n"
        "volumes:\n"
        "  models: ./models\n"
    )
    return root


@pytest.fixture(scope="module")
def first(client, made: Resources, project: Path) -> b.BuildResult:
    result = b.build_image(client, load_config(project / "flashfit.yml"))
    made.tag(result.image)
    return result


def history_entry(client, image: str, needle: str) -> dict[str, Any]:
    """The image's history entry (an intermediate image of a local build) whose step has `needle`."""
    found = [h for h in client.api.history(image) if needle in h["CreatedBy"]]
    assert len(found) == 1, [h["CreatedBy"][:80] for h in client.api.history(image)]
    return found[0]


def layers(client, reference: str) -> list[str]:
    return client.api.inspect_image(reference)["RootFS"]["Layers"]


def test_the_image_carries_the_checked_models_with_their_digest(client, project: Path, first: b.BuildResult) -> None:
    digest = validate_model_folder(project / "models").digest()
    labels = client.images.get(first.image).labels
    assert labels[LABEL_MODELS] == "baked" and labels[LABEL_MODELS_DIGEST] == digest
    assert first.models["mode"] == "baked" and first.models["digest"] == digest and first.models["files"] == 21
    # Inside, as the server's user: every file at MODEL_CACHE_DIR, readable, the same bytes.
    check = (
        "import os; from flashfit_contract.modelfolder import validate_model_folder; "
        "print(os.getuid(), validate_model_folder(os.environ['MODEL_CACHE_DIR']).digest())"
    )
    output = client.containers.run(first.image, ["python", "-c", check], remove=True).decode().split()
    assert output == ["1000", digest]
    script = f"find /app -name '.env*' -o -name flashfit.yml; grep -rl {SECRET} /app /opt/flashfit || true"
    listing = client.containers.run(first.image, ["sh", "-c", script], remove=True).decode()
    assert listing.strip() == "", f"config or secrets in the image: {listing}"
    # A layer of its own, after the dependencies and before the code.
    entry = history_entry(client, first.image, f"in {MODELS_DIR}/")
    assert entry["Size"] >= first.models["size_bytes"]
    order = [h["CreatedBy"] for h in reversed(client.api.history(first.image))]
    at = {needle: next(i for i, c in enumerate(order) if needle in c) for needle in ("/opt/flashfit", MODELS_DIR + "/", "/build/dist/")}
    assert at["/opt/flashfit"] < at[MODELS_DIR + "/"] < at["/build/dist/"], order


def test_the_baked_image_serves_ready_with_nothing_mounted(client, made: Resources, first: b.BuildResult) -> None:
    container = made.container(client.containers.run(
        first.image, detach=True, environment={"JWT_SECRET_KEY": JWT}, ports={"8080/tcp": ("127.0.0.1", None)}))

    assert wait_on_condition(lambda: ready_answer(container), timeout=120, interval=0.5).json()["status"] == "ready"
    assert [m["Destination"] for m in container.attrs["Mounts"]] == []


def test_a_code_only_rebuild_reuses_the_models_layer(client, made: Resources, project: Path, first: b.BuildResult) -> None:
    init = project / "src" / "flashfit_server" / "__init__.py"
    init.write_text(init.read_text() + f"\n# code-only change {TOKEN}\n")
    runner = CliRunner(env={"COLUMNS": "160", "NO_COLOR": "1", "TERM": "dumb"})
    result = runner.invoke(app, ["build", "-c", str(project / "flashfit.yml"), "--json"])
    assert result.exit_code == EXIT_OK, result.output
    second = json.loads(result.stdout)
    made.tag(second["image"])
    assert second["version"].startswith(first.version + "-dirty-")
    copied = [s for s in second["steps"] if s["instruction"].startswith("COPY models/")]
    assert [s["cached"] for s in copied] == [True] and second["models"]["cached"] is True
    assert [s["cached"] for s in second["steps"] if s["instruction"].startswith("COPY dist/")] == [False]
    # Layer digests: everything up to the models layer is shared; only the code layers differ.
    models_image = history_entry(client, first.image, f"in {MODELS_DIR}/")["Id"]
    assert history_entry(client, second["image"], f"in {MODELS_DIR}/")["Id"] == models_image
    shared = layers(client, models_image)
    before, after = layers(client, first.image), layers(client, second["image"])
    assert before[: len(shared)] == after[: len(shared)] == shared
    assert before[len(shared):] != after[len(shared):], "the new code is a new layer"
    assert second["models"]["digest"] == first.models["digest"]
