"""Build context assembly, build-stream parsing, base-image policy and the CLI around them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashfit_ops.cli import app
from flashfit_ops.config.load import resolve
from flashfit_ops.errors import EXIT_UNAVAILABLE, OperationFailed, Unavailable, UsageError
from flashfit_ops.images import build as b
from flashfit_ops.images.wheelhouse import Pin, Wheelhouse
from tests.conftest import REPO_ROOT


def fake_wheelhouse(folder: Path) -> Wheelhouse:
    folder.mkdir()
    wheels = ["a-1-py3-none-any.whl", "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"]
    for name in wheels:
        (folder / name).write_bytes(b"wheel")
    (folder / "requirements.txt").write_text("a==1\ntorch==2.13.0+cpu\n")
    (folder / ".flashfit-wheelhouse.json").write_text("{}")
    (folder / "stale-0.1-py3-none-any.whl").write_bytes(b"old")
    pins = [Pin("a", "1", "flashfit"), Pin("torch", "2.13.0+cpu", "flashfit")]
    return Wheelhouse(folder, folder / "requirements.txt", pins, wheels, 10, True, 0.0)


def test_context_holds_exactly_the_dockerfile_pins_wheels_and_the_flashfit_wheel(tmp_path: Path) -> None:
    config = resolve({"server": {"build": {"base_image": "flashfit/debian-python:bookworm"}}}, base_dir=tmp_path)
    house = fake_wheelhouse(tmp_path / ".wheelhouse")
    wheel = tmp_path / "flashfit-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"flashfit")
    plan = b.plan_context(config, house, wheel)
    assert plan.listing() == [
        ".dockerignore",
        "Dockerfile",
        "dist/flashfit-0.1.0-py3-none-any.whl",
        "requirements.txt",
        "wheelhouse/a-1-py3-none-any.whl",
        "wheelhouse/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
    ]
    dockerfile = plan.texts["Dockerfile"]
    assert dockerfile.count("FROM flashfit/debian-python:bookworm") == 2
    assert "--no-index --find-links /build/wheelhouse -r /build/requirements.txt" in dockerfile
    # The dependency install comes before the code, so code changes reuse its layer.
    assert dockerfile.index("COPY wheelhouse/") < dockerfile.index("COPY dist/")
    assert plan.texts["requirements.txt"] == "a==1\ntorch==2.13.0+cpu\n"

    context = tmp_path / "context"
    b.write_context(plan, context)
    written = sorted(str(p.relative_to(context)) for p in context.rglob("*") if p.is_file())
    assert written == plan.listing()
    linked = context / "wheelhouse/a-1-py3-none-any.whl"
    assert os.path.samefile(linked, house.path / "a-1-py3-none-any.whl"), "wheels are hard links, not copies"


def test_source_folder_must_be_a_flashfit_tree(tmp_path: Path) -> None:
    assert b.source_folder(resolve({"server": {"build": {"context": str(REPO_ROOT)}}})) == REPO_ROOT
    with pytest.raises(UsageError, match="not a flashfit source tree"):
        b.source_folder(resolve({}, base_dir=tmp_path))


STREAM = [
    "Step 1/4 : FROM base AS dependencies\n",
    " ---> 0123456789ab\n",
    "Step 2/4 : RUN python3 -m venv /opt/flashfit  && /opt/flashfit/bin/pip install --no-index "
    "--find-links /build/wheelhouse -r /build/requirements.txt\n",
    " ---> Using cache\n",
    " ---> 1111\n",
    "Step 3/4 : COPY dist/ /build/dist/\n",
    " ---> 2222\n",
    "Step 4/4 : RUN false\n",
    " ---> Running in abc\n",
    "\x1b[91mERROR: something broke\n\x1b[0m",
    "last words\n",
]


def test_step_log_tracks_steps_cache_hits_and_the_failing_steps_output() -> None:
    done = []
    log = b.StepLog(on_done=done.append)
    for chunk in STREAM:
        log.feed(chunk)
    assert [s.number for s in log.steps] == [1, 2, 3, 4]
    assert [s.cached for s in log.steps] == [False, True, False, False]
    assert [s.number for s in done] == [1, 2, 3], "a step is reported when the next one starts"
    assert log.tail() == ["ERROR: something broke", "last words"], "ANSI colours stripped"
    deps = b.dependency_steps(log.steps)
    assert [s.number for s in deps] == [2]

    with pytest.raises(OperationFailed) as caught:
        b._raise_step_failure(log, "The command '/bin/sh -c false' returned a non-zero code: 1", 1)
    message = caught.value.message
    assert message.startswith("step 4/4 (RUN false) failed: The command")
    assert "ERROR: something broke" in message and "last words" in message
    assert caught.value.exit_code == 1


class FakeImages:
    def __init__(self, present: set[str]):
        self.present = present

    def get(self, reference: str):
        from docker.errors import ImageNotFound

        if reference not in self.present:
            raise ImageNotFound(reference)
        return type("Image", (), {"id": "sha256:" + "0" * 64, "labels": {}, "attrs": {"Size": 1}})()

    def pull(self, repository: str, tag: str):
        from docker.errors import APIError

        raise APIError("no registry", explanation="dial tcp: lookup registry-1.docker.io: no such host")


class FakeClient:
    def __init__(self, present: set[str]):
        self.images = FakeImages(present)


def test_base_found_locally_is_used_as_is() -> None:
    config = resolve({"server": {"build": {"base_image": "python:3.11-slim"}}})
    outcome = b.ensure_base(FakeClient({"python:3.11-slim"}), config)
    assert outcome.path == "found locally"


def test_a_base_that_cannot_be_found_or_pulled_is_unavailable_with_a_bootstrap_hint() -> None:
    config = resolve({"server": {"build": {"base_image": "python:3.11-slim"}}})
    with pytest.raises(Unavailable) as caught:
        b.ensure_base(FakeClient(set()), config)
    assert "python:3.11-slim" in caught.value.message and "no such host" in caught.value.message
    assert "flashfit images bootstrap" in caught.value.hint
    assert "server.build.base_image: flashfit/debian-python:bookworm" in caught.value.hint
    assert caught.value.exit_code == EXIT_UNAVAILABLE


def test_the_bootstrap_base_is_built_automatically_when_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []

    def fake_ensure(client, recipe, cache, **kwargs):
        calls.append((recipe.image, cache, kwargs))
        return "built"

    monkeypatch.setattr(b.boot, "ensure_image", fake_ensure)
    config = resolve({"server": {"build": {"base_image": "flashfit/debian-python:bookworm"}}}, base_dir=tmp_path)
    assert b.ensure_base(FakeClient(set()), config) == "built"
    assert calls == [("flashfit/debian-python:bookworm", tmp_path / ".cache" / "images", {"pull": False})]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "120", "NO_COLOR": "1", "TERM": "dumb"})


@pytest.mark.parametrize("command", [["build"], ["images", "bootstrap"]])
def test_engine_down_exits_3_with_a_hint_and_no_traceback(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    config = tmp_path / "flashfit.yml"
    config.write_text(f"server:\n  build:\n    context: {REPO_ROOT}\n")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    result = runner.invoke(app, [*command, "-c", str(config)])
    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    assert "Docker engine is unreachable" in result.output
    assert "hint:" in result.output and "Traceback" not in result.output


def test_json_error_document_when_the_engine_is_down(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    config = tmp_path / "flashfit.yml"
    config.write_text("{}\n")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    result = runner.invoke(app, ["build", "-c", str(config), "--json"])
    assert result.exit_code == EXIT_UNAVAILABLE
    assert json.loads(result.stdout)["error"] == "Unavailable"


def test_help_of_the_image_commands_imports_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from flashfit_ops.cli import app\n"
        "for args in (['--help'], ['build', '--help'], ['images', 'bootstrap', '--help']):\n"
        "    result = CliRunner().invoke(app, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "heavy = [m for m in ('docker', 'boto3', 'torch', 'packaging.requirements') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
