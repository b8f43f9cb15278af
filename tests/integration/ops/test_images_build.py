"""Images against the real Docker engine: bootstrap from the cached root filesystem, the backend
build with its labels, a code-only rebuild that reuses the dependency layer, and the built image
serving /ready with tiny models.

Shared caches (git-ignored, kept between runs so a rerun is quick):
  <repo>/.cache/images/   root filesystem tarballs and .debs (a first run debootstraps: ~1 min)
  <repo>/.wheelhouse/     the server's wheels
Every container, test-only tag and the intermediate images of the deliberately failing build are
removed in teardown. Removing a test tag prunes its untagged parents up to the first one shared
with another image, so the dependency stage (the next run's build cache) stays. The real base
images flashfit/debian-python:bookworm and flashfit/nginx:bookworm are made if missing and kept.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
from typer.testing import CliRunner

from flashfit_ops.cli import app
from flashfit_ops.config import load_config
from flashfit_ops.engine.connect import connect
from flashfit_ops.errors import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE
from flashfit_ops.images import bootstrap as boot
from flashfit_ops.images import build as b
from flashfit_ops.images.wheelhouse import Wheelhouse
from tests.conftest import REPO_ROOT, require_tool

pytestmark = pytest.mark.integration

TOKEN = secrets.token_hex(4)
TEST_REPO = f"flashfit-test/backend-{TOKEN}"
SOURCE_PARTS = ("pyproject.toml", "README.md", "flashfit_ops", "flashfit_server", "flashfit_contract", "templates")
JWT = "integration-secret-" + "0" * 32


def wait_on_condition(condition: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


class Resources:
    """What a test made, removed in teardown whatever happened."""

    def __init__(self, client):
        self.client = client
        self.containers: list[Any] = []
        self.tags: list[str] = []

    def container(self, container):
        self.containers.append(container)
        return container

    def tag(self, reference: str) -> str:
        self.tags.append(reference)
        return reference

    def cleanup(self) -> None:
        """Remove everything, whatever fails along the way; then report what could not go."""
        from docker.errors import APIError, NotFound

        problems = []
        for container in reversed(self.containers):
            try:
                container.remove(force=True)
            except NotFound:
                pass
            except APIError as error:
                problems.append(f"container {container.id[:12]}: {error}")
        for reference in reversed(self.tags):
            try:
                self.client.images.remove(reference, force=True)
            except NotFound:
                pass
            except APIError as error:
                problems.append(f"image {reference}: {error}")
        assert not problems, problems


@pytest.fixture(scope="module")
def client():
    return connect()


@pytest.fixture(scope="module")
def made(client) -> Iterator[Resources]:
    resources = Resources(client)
    yield resources
    resources.cleanup()


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True, text=True).stdout.strip()


def copy_sources(src: Path) -> None:
    """A git copy of the flashfit sources at `src` (so a test can change code)."""
    require_tool("git")
    src.mkdir()
    for part in SOURCE_PARTS:
        source = REPO_ROOT / part
        if source.is_dir():
            shutil.copytree(source, src / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, src / part)
    git(src, "init", "-q")
    git(src, "config", "user.email", "test@example.com")
    git(src, "config", "user.name", "test")
    git(src, "add", "-A")
    git(src, "commit", "-qm", "snapshot for the image test")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A config folder with a git copy of the flashfit sources (so the test can change code)."""
    root = tmp_path_factory.mktemp("images")
    copy_sources(root / "src")
    (root / "flashfit.yml").write_text(
        "project: imgtest\n"
        "server:\n"
        f"  image: {TEST_REPO}\n"
        "  build:\n"
        f"    base_image: {boot.BASE.image}\n"
        "    context: ./src\n"
        f"    wheelhouse: {REPO_ROOT / '.wheelhouse'}\n"
    )
    return root


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "160", "NO_COLOR": "1", "TERM": "dumb"})


# ---------------------------------------------------------------------------------------------
# bootstrap


def test_bootstrap_builds_from_the_cached_root_filesystem_then_finds_the_image(client, made: Resources) -> None:
    assert Path(boot.DEBOOTSTRAP).exists(), "debootstrap is not installed: apt-get install -y debootstrap"
    cache = boot.cache_dir(REPO_ROOT)
    recipe = dataclasses.replace(boot.BASE, image=made.tag(f"flashfit-test/debian-python:{TOKEN}"))
    if not (cache / recipe.tarball_name(recipe.key(boot.mirror_from_env()))).exists():
        boot.ensure_image(client, recipe, cache, pull=False)  # fills the cache (the base images' builds usually did)
    rebuilt = boot.ensure_image(client, recipe, cache, force=True)
    assert rebuilt.path == boot.BUILT and rebuilt.detail == "root filesystem from the cache"
    assert boot.ensure_image(client, recipe, cache).path == boot.FOUND

    image = client.images.get(recipe.image)
    assert image.labels[boot.RECIPE_LABEL] == recipe.key(boot.mirror_from_env())
    assert image.attrs["Size"] < 200e6, "the base stays small"
    script = (
        "python3 -c 'import sys, ssl, venv; print(sys.version_info[:2])' && "
        "test -z \"$(ls /var/lib/apt/lists | grep -v partial)\" && test -f /etc/ssl/certs/ca-certificates.crt && "
        "python3 -m venv /tmp/v && echo venv-ok"
    )
    output = client.containers.run(recipe.image, ["sh", "-c", script], remove=True).decode()
    assert "(3, 11)" in output and "venv-ok" in output


def test_bootstrapped_proxy_serves_and_logs_to_stdout(client, made: Resources) -> None:
    cache = boot.cache_dir(REPO_ROOT)
    recipe = dataclasses.replace(boot.PROXY, image=made.tag(f"flashfit-test/nginx:{TOKEN}"))
    outcome = boot.ensure_image(client, recipe, cache, pull=False)
    assert outcome.path == boot.BUILT
    container = made.container(
        client.containers.run(recipe.image, detach=True, ports={"80/tcp": ("127.0.0.1", None)})
    )

    def answer():
        container.reload()
        binding = (container.attrs["NetworkSettings"]["Ports"] or {}).get("80/tcp")
        if not binding:
            return None
        try:
            return httpx.get(f"http://127.0.0.1:{binding[0]['HostPort']}/", timeout=2)
        except httpx.HTTPError:
            return None

    response = wait_on_condition(answer, timeout=20)
    assert response.status_code == 200
    wait_on_condition(lambda: b"GET / HTTP" in container.logs(stdout=True, stderr=False), timeout=5)
    assert container.exec_run(["test", "-f", "/etc/nginx/mime.types"]).exit_code == 0


# ---------------------------------------------------------------------------------------------
# build


@pytest.fixture(scope="module")
def first_build(client, made: Resources, project: Path) -> b.BuildResult:
    config = load_config(project / "flashfit.yml")
    result = b.build_image(client, config)
    made.tag(result.image)
    return result


def test_first_build_is_tagged_with_the_short_sha_and_labelled(client, project: Path, first_build: b.BuildResult) -> None:
    src = project / "src"
    assert first_build.version == git(src, "rev-parse", "--short=7", "HEAD")
    assert first_build.image == f"{TEST_REPO}:{first_build.version}"
    labels = client.images.get(first_build.image).labels
    assert labels[b.LABEL_PROJECT] == "imgtest"
    assert labels[b.LABEL_VERSION] == first_build.version
    assert labels[b.LABEL_GIT_SHA] == git(src, "rev-parse", "HEAD")
    assert labels[b.LABEL_BUILD_TIME].endswith("Z") and labels[b.LABEL_BUILD_TIME][:2] == "20"
    assert first_build.base["path"] in (boot.FOUND, boot.BUILT)
    assert first_build.wheelhouse["pins"] > 40


def test_code_only_change_rebuilds_on_the_cached_dependency_layer(
    client, made: Resources, project: Path, first_build: b.BuildResult, runner: CliRunner
) -> None:
    init = project / "src" / "flashfit_server" / "__init__.py"
    init.write_text(init.read_text() + f"\n# code-only change {TOKEN}\n")
    result = runner.invoke(app, ["build", "-c", str(project / "flashfit.yml"), "--json"])
    assert result.exit_code == EXIT_OK, result.output
    second = json.loads(result.stdout)
    made.tag(second["image"])
    assert second["version"].startswith(first_build.version + "-dirty-")
    steps = {s["instruction"].split()[0] + " " + s["instruction"].split()[1]: s for s in second["steps"]}
    deps = [s for s in second["steps"] if "--find-links" in s["instruction"]]
    assert deps and all(s["cached"] for s in deps), f"dependency stage rebuilt: {deps}"
    assert second["dependencies_cached"] is True
    assert steps["COPY dist/"]["cached"] is False, "the new code is in the image"
    assert client.images.get(second["image"]).labels[b.LABEL_VERSION] == second["version"]


def ready_answer(container) -> httpx.Response | None:
    """The server's 200 on /ready through the container's published 8080, or None while it is not
    there yet (a server that exited fails at once, with its log)."""
    container.reload()
    if container.status == "exited":
        raise AssertionError(f"server exited: {container.logs()[-2000:].decode(errors='replace')}")
    binding = (container.attrs["NetworkSettings"]["Ports"] or {}).get("8080/tcp")
    if not binding:
        return None
    try:
        response = httpx.get(f"http://127.0.0.1:{binding[0]['HostPort']}/ready", timeout=2)
    except httpx.HTTPError:
        return None
    return response if response.status_code == 200 else None


def test_built_image_serves_ready_with_tiny_models(client, made: Resources, first_build: b.BuildResult, tmp_path: Path) -> None:
    server = Path(sys.executable).parent / "flashfit-server"
    models = tmp_path / "models"
    done = subprocess.run([str(server), "models", "make-tiny", str(models)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # The container runs as uid 1000; files written here by root must be readable to it.
    for path in [models, *models.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    container = made.container(
        client.containers.run(
            first_build.image,
            detach=True,
            environment={"JWT_SECRET_KEY": JWT},
            volumes={str(models): {"bind": "/app/models", "mode": "ro"}},
            ports={"8080/tcp": ("127.0.0.1", None)},
        )
    )

    response = wait_on_condition(lambda: ready_answer(container), timeout=90, interval=0.5)
    assert response.json()["status"] == "ready"
    # The image's HEALTHCHECK (flashfit-server probe) agrees.
    wait_on_condition(lambda: (container.reload(), container.attrs["State"]["Health"]["Status"] == "healthy")[1], 30)
    assert container.attrs["Config"]["User"] == "flashfit"


# ---------------------------------------------------------------------------------------------
# failures


def ancestry(client, image_id: str) -> list[str]:
    chain = []
    while image_id:
        chain.append(image_id)
        image_id = client.api.inspect_image(image_id).get("Parent") or ""
    return chain


def test_missing_base_that_cannot_be_pulled_exits_3_with_the_bootstrap_hint(runner: CliRunner, project: Path) -> None:
    config = project / "missing-base.yml"
    config.write_text(
        f"server:\n  image: {TEST_REPO}\n  build:\n    base_image: flashfit-test/absent:{TOKEN}\n    context: ./src\n"
    )
    result = runner.invoke(app, ["build", "-c", str(config), "--version", "never"])
    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    assert f"flashfit-test/absent:{TOKEN}" in result.output
    assert "flashfit images bootstrap" in result.output and "Traceback" not in result.output


def test_a_failing_step_exits_1_showing_the_step_and_its_last_lines(
    client, made: Resources, runner: CliRunner, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A base without python: the dependency step fails. A one-wheel wheelhouse keeps it quick.
    proxy = boot.ensure_image(client, boot.PROXY, boot.cache_dir(REPO_ROOT), pull=False)
    house = project / "tiny-wheelhouse"
    house.mkdir(exist_ok=True)
    (house / "a-1-py3-none-any.whl").write_bytes(b"not really a wheel")
    (house / "requirements.txt").write_text("a==1\n")
    fake = Wheelhouse(house, house / "requirements.txt", [], ["a-1-py3-none-any.whl"], 18, True, 0.0)
    monkeypatch.setattr(b, "make_wheelhouse", lambda _path, **_options: fake)
    config = project / "broken.yml"
    config.write_text(f"server:\n  image: {TEST_REPO}\n  build:\n    base_image: {proxy.image}\n    context: ./src\n")
    made.tag(f"{TEST_REPO}:broken")
    result = runner.invoke(app, ["build", "-c", str(config), "--version", "broken"])
    # The failed build's intermediate images: untagged, built on the proxy image (nothing else
    # builds on it), possibly reused from an earlier run's cache. Removing the tip of the chain
    # removes its untagged parents too.
    below = [
        i for i in client.images.list(all=True)
        if not i.tags and i.id != proxy.image_id and proxy.image_id in ancestry(client, i.id)
    ]
    parents = {i.attrs.get("Parent") for i in below}
    for image in below:
        if image.id not in parents:
            made.tag(image.id)
    assert result.exit_code == EXIT_FAILED, result.output
    assert "error: step 5/" in result.output and "python3" in result.output
    assert "not found" in result.output, "the failing step's own output is shown"
    assert "Traceback" not in result.output
