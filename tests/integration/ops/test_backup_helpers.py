"""Helpers for the backup integration tests (no tests here): a real S3 endpoint (moto in server
mode, reached over HTTP exactly like MinIO), a fault-injecting HTTP proxy in front of it, and
config/data builders."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import numpy as np

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, deadline: float = 30.0, host: str = "127.0.0.1") -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def start_moto(extra_env: dict[str, str] | None = None, host: str = "127.0.0.1") -> tuple[subprocess.Popen, str]:
    """moto's S3 server on `host` (a test cluster's gateway address, for its nodes to reach)."""
    port = free_port()
    env = {**os.environ, **CREDENTIALS, **(extra_env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, host=host)
    except RuntimeError:
        proc.kill()
        raise
    return proc, f"http://{host}:{port}"


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def s3_client(endpoint: str):  # noqa: ANN201
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(s3={"addressing_style": "path"}))


# A rule sees (method, path, how many times this method+path was seen, counting this one) and
# answers None (forward), "503" (answer SlowDown) or "drop" (close the connection, no answer).
Rule = Callable[[str, str, int], str | None]


class FaultProxy:
    """An HTTP proxy in front of the S3 endpoint that injects failures by rule."""

    def __init__(self, upstream: str, rule: Rule):
        self.upstream = upstream.removeprefix("http://")
        self.rule = rule
        self.seen: Counter[tuple[str, str]] = Counter()
        self.injected: Counter[str] = Counter()
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path_only = self.path.split("?")[0]
                with proxy.lock:
                    proxy.seen[(self.command, path_only)] += 1
                    count = proxy.seen[(self.command, path_only)]
                action = proxy.rule(self.command, self.path, count)
                if action == "drop":
                    proxy.injected["drop"] += 1
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if action == "503":
                    proxy.injected["503"] += 1
                    payload = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>injected</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_config(folder: Path, *, target: str, endpoint: str | None = None, data: str = "./data",
                 extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        f"volumes:\n  data: {data}",
        f"ports:\n  backend: {free_port()}",
        "backup:",
        f"  target: {target}",
        "  retention:\n    keep_last: 2\n    keep_daily: 0\n    keep_weekly: 0",
    ]
    if endpoint:
        lines.append(f"  s3:\n    endpoint_url: {endpoint}\n    region: us-east-1")
    path = folder / "flashfit.yml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def make_data(folder: Path, *, seed: int = 0, index_mb: float = 1.0, items: int = 3) -> dict[str, bytes]:
    """A data folder shaped like the server's: stores (json + float32 index), catalogue, weights,
    images, generation. Returns {relative path: bytes}."""
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    for name in ("clip", "blip"):
        index = rng.standard_normal(int(index_mb * 1024 * 1024 / 4)).astype(np.float32).tobytes()
        index_file = f"{name}-{seed:010d}.index"
        files[index_file] = index
        files[f"{name}.json"] = json.dumps({"name": name, "index_file": index_file, "size": len(index)}).encode()
    files["items.json"] = json.dumps({"items": [{"id": i, "name": f"item {seed}-{i}"} for i in range(items)]}).encode()
    files["fusion.json"] = json.dumps({"weights": {"clip": 0.4, "blip": 0.3, "fashion": 0.3}}).encode()
    for i in range(items):
        files[f"images/{i}.png"] = rng.bytes(2000)
    files["generation"] = str(seed).encode()
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return files


def read_tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(*args: str, env: dict[str, str] | None = None):  # noqa: ANN201
    """Run `flashfit ...` in-process with typer's runner; returns (exit code, parsed JSON or None, output)."""
    from typer.testing import CliRunner

    from flashfit_ops.cli import app

    runner = CliRunner()
    result = runner.invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})
    try:
        document = json.loads(result.stdout) if "--json" in args and result.stdout.strip() else None
    except ValueError:
        document = None
    return result.exit_code, document, result.output
