"""Real servers for the integration tests: `flashfit-server serve` in a subprocess on a free
loopback port, with tiny checkpoints, spoken to over real HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from flashfit_server.auth import mint_token
from tests.integration.ops.test_backup_helpers import CREDENTIALS, start_moto, stop

SECRET = "integration-test-secret-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    data_dir: Path
    proc: subprocess.Popen
    log_path: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(SECRET, 'tests', 600)}"}

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_server(
    tmp: Path, models: Path, workers: int = 1, env: dict[str, str] | None = None, wait_ready: bool = True
) -> LiveServer:
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    data_dir = tmp / "data"
    log_path = tmp / "server.log"
    full_env = {
        **os.environ,
        "MODEL_CACHE_DIR": str(models),
        "VECTOR_STORE_DIR": str(data_dir),
        "JWT_SECRET_KEY": SECRET,
        "LOG_LEVEL": "warning",
        "TORCH_THREADS": "1",
        "PROMETHEUS_MULTIPROC_DIR": "",
        **(env or {}),
    }
    full_env = {k: v for k, v in full_env.items() if v != ""}
    command = [sys.executable, "-m", "flashfit_server.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    server = LiveServer(f"http://127.0.0.1:{port}", data_dir, proc, log_path)
    if wait_ready:
        wait_until_ready(server)
    return server


def wait_until_ready(server: LiveServer, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"server exited with {server.proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    pytest.fail(f"server not ready within {timeout}s:\n{server.log()}")


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("live"), tiny_models)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server for one test module, with the test credentials in the environment."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in CREDENTIALS.items():
            patch.setenv(name, value)
        proc, endpoint = start_moto()
        try:
            yield endpoint
        finally:
            stop(proc)
