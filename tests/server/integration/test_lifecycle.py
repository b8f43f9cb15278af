"""Start-up refusal, readiness gating, inference timeouts, JSON logs, hosts and CORS, ingest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import image_bytes
from tests.server.integration.conftest import free_port, start_server, wait_until_ready

pytestmark = pytest.mark.integration

PLACEHOLDER = "your-jwt-secret-key-here"


def _env(models: Path, data: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET_KEY", "PROMETHEUS_MULTIPROC_DIR")}
    return env | {"MODEL_CACHE_DIR": str(models), "VECTOR_STORE_DIR": str(data)} | extra


@pytest.mark.parametrize("secret", [None, PLACEHOLDER])
def test_production_refuses_to_start_via_cli(tmp_path: Path, tiny_models: Path, secret: str | None) -> None:
    env = _env(tiny_models, tmp_path, ENVIRONMENT="production") | ({"JWT_SECRET_KEY": secret} if secret else {})
    result = subprocess.run(
        [sys.executable, "-m", "flashfit_server.cli", "serve", "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "JWT_SECRET_KEY" in result.stderr and PLACEHOLDER not in result.stderr + result.stdout


def test_production_refuses_to_start_via_plain_uvicorn(tmp_path: Path, tiny_models: Path) -> None:
    env = _env(tiny_models, tmp_path, ENVIRONMENT="production", JWT_SECRET_KEY=PLACEHOLDER)
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "flashfit_server.main:app", "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    output = result.stderr + result.stdout
    assert "refusing to start" in output and PLACEHOLDER not in output


def test_health_answers_at_once_and_ready_waits_for_models(tmp_path: Path, tiny_models: Path) -> None:
    # A catalogue with no checkpoints: the worker lives, says so, and never claims readiness.
    server = start_server(tmp_path, tmp_path / "no-models", wait_ready=False)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                health = httpx.get(server.url + "/health", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert health.status_code == 200 and health.json()["models"]["clip_loaded"] is False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # loading fails in the background, then is reported
            ready = httpx.get(server.url + "/ready", timeout=30)  # generous: a loaded CI host
            body = ready.json()  # "failed" once it knows it never will be ready
            assert ready.status_code == 503 and body["status"] == ("failed" if "errors" in body["checks"] else "not_ready")
            if "errors" in body["checks"]:
                break
            time.sleep(0.2)
        assert "not found" in json.dumps(ready.json()["checks"]["errors"])
        probe = subprocess.run([sys.executable, "-m", "flashfit_server.cli", "probe", "--url", server.url + "/ready"])
        assert probe.returncode == 1
        response = httpx.post(server.url + "/api/fusion/recommend", json={"text": "x"}, timeout=30)
        assert response.status_code == 503 and response.json()["error"]["code"] == "not_ready"
    finally:
        server.stop()


def test_inference_timeout_is_a_503_and_the_worker_stays_healthy(tmp_path: Path, tiny_models: Path) -> None:
    server = start_server(tmp_path, tiny_models, env={"INFERENCE_TIMEOUT": "0.0001"})
    try:
        with server.client() as client:
            for _ in range(3):
                response = client.post("/api/fusion/recommend", json={"text": "red shirt"})
                assert response.status_code == 503
                assert response.json()["error"]["code"] == "inference_timeout"
                assert "INFERENCE_TIMEOUT" in response.json()["error"]["message"]
            upload = client.post("/api/items", files={"image": ("a.png", image_bytes(1), "image/png")}, headers=server.auth)
            assert upload.status_code == 503
            assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200
            assert client.get("/health").json()["vector_stores"]["clip_index_size"] == 0
        probe = subprocess.run([sys.executable, "-m", "flashfit_server.cli", "probe", "--url", server.url + "/ready"])
        assert probe.returncode == 0
    finally:
        server.stop()


def test_json_logs_hosts_and_cors(tmp_path: Path, tiny_models: Path) -> None:
    server = start_server(
        tmp_path, tiny_models,
        env={"LOG_FORMAT": "json", "LOG_LEVEL": "info", "ALLOWED_HOSTS": "shop.example", "CORS_ORIGINS": "https://shop.example"},
    )
    try:
        with server.client() as client:
            assert client.get("/health").status_code == 200  # loopback is always allowed (HEALTHCHECK)
            assert client.get("/health", headers={"host": "shop.example"}).status_code == 200
            bad = client.get("/health", headers={"host": "evil.example"})
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_host"
            preflight = client.options(
                "/api/fusion/recommend",
                headers={"origin": "https://shop.example", "access-control-request-method": "POST", "host": "shop.example"},
            )
            assert preflight.headers.get("access-control-allow-origin") == "https://shop.example"
            other = client.get("/health", headers={"origin": "https://evil.example"})
            assert "access-control-allow-origin" not in other.headers
    finally:
        server.stop()
    lines = [l for l in server.log_path.read_text().splitlines() if l.strip()]
    assert lines
    parsed = [json.loads(l) for l in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "message"} <= set(p) for p in parsed)
    assert any(p["logger"] == "uvicorn.access" for p in parsed)


def test_ingest_cli_batches_a_folder_into_a_running_server(tmp_path: Path, tiny_models: Path) -> None:
    server = start_server(tmp_path / "srv", tiny_models)
    try:
        images = tmp_path / "incoming"
        (images / "sub").mkdir(parents=True)
        for i in range(5):
            (images / ("sub" if i % 2 else "") / f"look{i}.png").write_bytes(image_bytes(100 + i))
        (images / "broken.jpg").write_bytes(b"not really a jpeg")
        env = _env(tiny_models, server.data_dir, MAX_BATCH_SIZE="2", TORCH_THREADS="1")
        result = subprocess.run(
            [sys.executable, "-m", "flashfit_server.cli", "ingest", str(images), "--category", "top", "--user-id", "bulk"],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "ingested 5 items, skipped 1" in result.stdout
        time.sleep(1.0)  # the server notices the new generation
        with server.client() as client:
            listing = client.get("/api/items", params={"user_id": "bulk"}).json()
            assert listing["total"] == 5
            assert {i["name"] for i in listing["items"]} == {f"look{i}" for i in range(5)}
            assert client.get("/health").json()["vector_stores"]["blip_index_size"] == 5
            first = listing["items"][0]["id"]
            body = client.post("/api/fusion/recommend", json={"item_id": first, "user_id": "bulk"}).json()
            assert len(body["recommendations"]) == 4
    finally:
        server.stop()


def test_bench_store_and_clear_cache_cli(tmp_path: Path, tiny_models: Path) -> None:
    from flashfit_server.datastore import DataStore, NewItem
    from flashfit_server.storebench import random_unit_vectors

    store = DataStore(tmp_path)
    store.open({"clip": 16, "blip": 16, "fashion": 8})
    store.add_items([NewItem(b"x", "png", {n: random_unit_vectors(1, d, i)[0] for n, d in (("clip", 16), ("blip", 16), ("fashion", 8))}, name=str(i), caption="") for i in range(50)])
    (tmp_path / "clip-0000000099-dead.index").write_bytes(b"debris")
    (tmp_path / ".items.json.123.tmp").write_bytes(b"debris")
    env = _env(tiny_models, tmp_path)
    bench = subprocess.run([sys.executable, "-m", "flashfit_server.cli", "bench-store", "--queries", "20"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert bench.returncode == 0, bench.stderr
    assert bench.stdout.count("p95=") == 3 and "qps" in bench.stdout
    clear = subprocess.run([sys.executable, "-m", "flashfit_server.cli", "clear-cache"], env=env, capture_output=True, text=True, timeout=60)
    assert clear.returncode == 0
    assert not (tmp_path / "clip-0000000099-dead.index").exists() and not (tmp_path / ".items.json.123.tmp").exists()
    reopened = DataStore(tmp_path)
    reopened.open({"clip": 16, "blip": 16, "fashion": 8})
    assert reopened.sizes() == {"clip": 50, "blip": 50, "fashion": 50}


@pytest.mark.parametrize("workers", [1, 2])
def test_serves_on_tcp_and_on_the_flashfit_socket(tmp_path: Path, tiny_models: Path, workers: int) -> None:
    """A deploy's proxy reaches the server through FLASHFIT_SOCKET; the health gate over TCP. A
    stale file is replaced and the socket is connectable by any uid."""
    import stat

    path = tmp_path / "backend.sock"
    path.write_text("stale")
    server = start_server(tmp_path, tiny_models, workers=workers, env={"FLASHFIT_SOCKET": str(path), "APP_VERSION": "v9"})
    try:
        assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o666
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), timeout=10) as client:
            assert client.get("http://backend/health").json()["version"] == "v9"
            # Readiness is per worker: with two, the one behind this connection may still load.
            deadline = time.monotonic() + 90
            while client.get("http://backend/ready").status_code != 200:
                assert time.monotonic() < deadline, "never ready over the socket:\n" + server.log()
                time.sleep(0.2)
        assert httpx.get(server.url + "/health", timeout=10).json()["version"] == "v9"
    finally:
        code = server.stop()
    # Outside a container uvicorn re-raises the SIGTERM it handled, so the process ends by the
    # signal (as PID 1 in a container it exits 0 and removes the socket file).
    assert code in (0, -15)
