"""Helpers for the deploy integration tests (real engine, real nginx): a throwaway project per
test, the images it deploys, `flashfit` run as a subprocess, waits on conditions (no sleeps), and
a teardown that removes every container, network, volume and image tag the test made.

The main end-to-end tests deploy the real server image (`flashfit build`); the fake backend in
this folder is only for faults the real server cannot produce on demand (never ready, dies N
seconds after becoming ready)."""

from __future__ import annotations

import collections
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
import yaml

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[3]
FLASHFIT = [sys.executable, "-m", "flashfit_ops.cli"]
FAKE_REPO = "flashfit-it/fake"
PROXY_IMAGE = "flashfit/nginx:bookworm"
BASE_IMAGE = "flashfit/debian-python:bookworm"
SERVER_REPO = "flashfit/backend"


def wait_on_condition(condition: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll until condition() is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def docker_client():
    import docker

    return docker.from_env(version="auto", timeout=60)


def _worker_ports(start: int, end: int) -> tuple[int, int]:
    """Parallel test workers (pytest-xdist's gw0, gw1, ...) each pick from their own slice, so two
    workers never choose the same port before either has bound it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index, count = int(worker.removeprefix("gw") or 0), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    size = (end - start) // max(count, 1)
    return start + index * size, start + (index + 1) * size


def free_port(start: int = 18080, end: int = 18999) -> int:
    """A free high port: tests never use the well-known ones."""
    start, end = _worker_ports(start, end)
    for port in range(start + secrets.randbelow(end - start), end):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port in 18080-18999")


_images_ready = False


def ensure_flashfit_images() -> None:
    """The base and proxy images, built from Debian packages where missing (the way
    `flashfit images bootstrap` does it; a no-op when they exist, as they do after the first run)."""
    global _images_ready
    if _images_ready:
        return
    from flashfit_ops.images.bootstrap import bootstrap

    bootstrap(docker_client(), REPO_ROOT, pull=False)
    _images_ready = True


def require_image(reference: str) -> None:
    if reference in (BASE_IMAGE, PROXY_IMAGE):
        ensure_flashfit_images()
    client = docker_client()
    try:
        client.images.get(reference)
    except Exception:
        pytest.fail(f"{reference} is missing: run `flashfit images bootstrap` (see .ci/run)")


def fake_image(tag: str, **build_args: str) -> str:
    """Build the fake backend with its fault switches baked in (idempotent; cached by Docker).
    The tag carries a digest of the sources, so checkouts with different fakes on one engine do
    not re-tag each other's images."""
    import hashlib

    require_image(BASE_IMAGE)
    client = docker_client()
    digest = hashlib.sha256((HERE / "app.py").read_bytes() + (HERE / "Dockerfile").read_bytes()).hexdigest()[:8]
    reference = f"{FAKE_REPO}:{tag}-{digest}"
    client.images.build(path=str(HERE), tag=reference, buildargs={k: str(v) for k, v in build_args.items()}, rm=True)
    return reference


_server_image: str | None = None


def real_server_image() -> str:
    """The server image of this source tree, as `flashfit build` makes it (built once per
    session, by whichever parallel worker comes first; a code-only change rebuilds in seconds, an
    unchanged tree reuses its tag). FLASHFIT_IT_SERVER_IMAGE names another one (a checkout
    testing its own build)."""
    global _server_image
    if _server_image:
        return _server_image
    if os.environ.get("FLASHFIT_IT_SERVER_IMAGE"):
        _server_image = os.environ["FLASHFIT_IT_SERVER_IMAGE"]
        require_image(_server_image)
        return _server_image
    from flashfit_ops.config.load import resolve
    from flashfit_ops.images.build import build_image, source_state, version_from_state

    ensure_flashfit_images()
    client = docker_client()
    config = resolve({"server": {"build": {"base_image": BASE_IMAGE}}}, base_dir=REPO_ROOT, environ={})
    state = source_state(REPO_ROOT)
    tag = f"{SERVER_REPO}:{version_from_state(state)}" if state else None
    with _cross_process_lock("server-image"):
        try:
            client.images.get(tag)
            _server_image = tag
        except Exception:
            _server_image = build_image(client, config).image
    return _server_image


@contextmanager
def _cross_process_lock(name: str) -> Iterator[None]:
    """Held by one test process at a time (parallel workers share one engine and one cache)."""
    import fcntl

    folder = REPO_ROOT / ".cache"
    folder.mkdir(exist_ok=True)
    with open(folder / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


_tiny_models: Path | None = None


def tiny_models(root: Path) -> Path:
    """Tiny checkpoints for the real server (made once per session)."""
    global _tiny_models
    if _tiny_models is None:
        folder = root / "tiny-models"
        subprocess.run([str(Path(sys.executable).parent / "flashfit-server"), "models", "make-tiny", str(folder)], check=True, capture_output=True)
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        _tiny_models = folder
    return _tiny_models


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Project:
    """One throwaway project: its folder, flashfit.yml, image tags, and cleanup."""

    root: Path
    name: str
    http_port: int
    repo: str
    tags: list[str] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.root / "flashfit.yml"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def write_config(self, **sections: Any) -> None:
        data: dict[str, Any] = {
            "project": self.name,
            "server": {"image": self.repo},
            "ports": {"http": self.http_port},
            "services": {"nginx": {"image": PROXY_IMAGE}},
            "resources": {"limits": {"memory": "2G", "cpus": 2}, "reservations": {"memory": "256M", "cpus": 0.5}},
            "healthcheck": {"interval": "500ms", "timeout": "2s", "start_period": "60s"},
            "deploy": {"deadline": "120s", "drain_timeout": "10s", "monitor_window": "2s"},
        }
        for key, value in sections.items():
            node = data
            parts = key.split("__")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        self.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        env = self.root / ".env"
        env.write_text(f"JWT_SECRET_KEY={secrets.token_hex(24)}\n")
        env.chmod(0o600)

    def tag(self, source: str, version: str) -> str:
        """Make `source` deployable here as version `version`."""
        client = docker_client()
        client.images.get(source).tag(self.repo, version)
        self.tags.append(f"{self.repo}:{version}")
        return version

    def flashfit(self, *args: str, timeout: float = 600, env: dict[str, str] | None = None) -> Result:
        process = subprocess.run(
            [*FLASHFIT, *args, "-c", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env={**os.environ, "COLUMNS": "200", **(env or {})},
        )
        return Result(process.returncode, process.stdout, process.stderr)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [*FLASHFIT, *args, "-c", str(self.config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.root,
            env={**os.environ, "COLUMNS": "200"},
        )

    def get(self, path: str = "/health", timeout: float = 5.0) -> httpx.Response:
        return httpx.get(self.url + path, timeout=timeout)

    def served_version(self) -> str | None:
        try:
            response = httpx.get(self.url + "/health", timeout=5.0)
        except httpx.HTTPError:
            return None
        try:
            return response.json().get("version")
        except ValueError:
            return None

    def containers(self, **labels: str) -> list[Any]:
        filters = [f"io.flashfit.project={self.name}"] + [f"io.flashfit.{k}={v}" for k, v in labels.items()]
        return docker_client().containers.list(all=True, ignore_removed=True, filters={"label": filters})

    def backends(self, state: str | None = None, **labels: str) -> list[Any]:
        found = self.containers(role="backend", **labels)
        return [c for c in found if state is None or c.status == state]

    def cleanup(self) -> None:
        client = docker_client()
        for container in client.containers.list(all=True, ignore_removed=True, filters={"label": f"io.flashfit.project={self.name}"}):
            container.remove(force=True)
        for network in client.networks.list(names=[f"{self.name}_net"]):
            network.remove()
        for volume in client.volumes.list(filters={"label": f"io.flashfit.project={self.name}"}):
            volume.remove(force=True)
        for tag in self.tags:
            try:
                client.images.remove(tag, noprune=True)
            except Exception:
                pass


def make_project(tmp_path: Path, prefix: str) -> Project:
    name = f"it{prefix}{secrets.token_hex(3)}"[:30]
    return Project(root=tmp_path, name=name, http_port=free_port(), repo=f"flashfit-it/{name}")


class Load:
    """Constant keep-alive load through the proxy from a few threads until stopped. Counts
    2xx, non-2xx and connection errors (no retries: any failure counts)."""

    def __init__(self, url: str, threads: int = 4, keep_alive: bool = True, json_body: Any = None):
        self.url = url
        self.threads = threads
        self.keep_alive = keep_alive
        self.json_body = json_body  # given: POST it instead of a GET
        self.ok = 0
        self.non_2xx = 0
        self.errors: list[str] = []
        self.versions: dict[str, int] = {}
        self.statuses: collections.Counter[int] = collections.Counter()  # of the non-2xx answers
        self.failed_at: list[float] = []  # seconds after the start, of each failure
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        headers = {} if self.keep_alive else {"Connection": "close"}
        with httpx.Client(timeout=10.0, headers=headers) as client:
            while not self._stop.is_set():
                try:
                    response = client.get(self.url) if self.json_body is None else client.post(self.url, json=self.json_body)
                except httpx.HTTPError as error:
                    with self._lock:
                        self.errors.append(repr(error))
                        self.failed_at.append(time.monotonic() - self._started)
                    continue
                with self._lock:
                    if 200 <= response.status_code < 300:
                        self.ok += 1
                    else:
                        self.non_2xx += 1
                        self.statuses[response.status_code] += 1
                        self.failed_at.append(time.monotonic() - self._started)

    def __enter__(self) -> "Load":
        for worker in self._workers:
            worker.start()
        wait_on_condition(lambda: self.ok > 0 or self.errors or self.non_2xx, 30, what="the first response")
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    @property
    def total(self) -> int:
        return self.ok + self.non_2xx + len(self.errors)

    def assert_no_failed_request(self) -> None:
        """Every request answered 2xx (Load waits for a first answer, so there was one)."""
        assert self.errors == [] and self.non_2xx == 0 and self.ok > 0, f"{self.url}: {self.summary()}"

    def summary(self) -> str:
        """For an assertion's message: what failed, how, and over which seconds of the run."""
        span = f", failures {self.failed_at[0]:.1f}s..{self.failed_at[-1]:.1f}s into {time.monotonic() - self._started:.1f}s" if self.failed_at else ""
        return f"{self.ok} ok, non-2xx {dict(self.statuses)}, errors {self.errors[:3]} ({len(self.errors)}){span}"
