"""Issue 14, category 8 (proxy side), on a real nginx running the rendered config: every response
carries `X-Content-Type-Options: nosniff` (TLS or not), and /metrics, /docs, /openapi.json are
served only to monitoring.allow_from. nginx, a stand-in backend and the client run in a private
network and mount namespace, so port 80 and /tmp/nginx.pid belong to this test alone."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from flashfit_ops.config import resolve
from flashfit_ops.render import render_all
from tests.conftest import require_tool

from .test_render_tools import run

pytestmark = pytest.mark.integration

BACKEND = textwrap.dedent(
    """
    import http.server
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"backend " + self.path.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    http.server.ThreadingHTTPServer(("127.0.0.1", 8080), Handler).serve_forever()
    """
)

CLIENT = textwrap.dedent(
    """
    import http.client, json, socket, sys, time
    for attempt in range(300):  # the backend first: nginx would answer 502 until it listens
        try:
            socket.create_connection(("127.0.0.1", 8080), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    results = {}
    for path in sys.argv[1:]:
        for attempt in range(100):
            try:
                connection = http.client.HTTPConnection("127.0.0.1", 80, timeout=10)
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                break
            except OSError:
                time.sleep(0.1)  # nginx or the backend still starting
        results[path] = [response.status, response.getheader("X-Content-Type-Options")]
    print(json.dumps(results))
    """
)

PATHS = ["/metrics", "/metrics?format=x", "//metrics", "/%6Detrics", "/docs", "/docs/oauth2-redirect", "/openapi.json",
         "/redoc", "/api/items", "/health", "/ready", "/", "/metricsx", "/api/metrics"]
PRIVATE = {"/metrics", "/metrics?format=x", "//metrics", "/%6Detrics", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"}


def serve_and_request(tmp_path: Path, allow_from: list[str]) -> dict[str, list]:
    nginx = require_tool("nginx")
    require_tool("unshare")
    require_tool("ip")
    config = resolve({"monitoring": {"allow_from": allow_from}}, environ={}, base_dir=tmp_path)
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    (private_tmp / "nginx.conf").write_text(render_all(config)["nginx.conf"].text)
    (private_tmp / "backend.py").write_text(BACKEND)
    (private_tmp / "client.py").write_text(CLIENT)
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost backend\n")
    # The interpreter behind the venv (the scripts need only the standard library): a checkout
    # or venv under /tmp is hidden once the private /tmp is mounted.
    python = os.path.realpath(sys.executable)
    script = (
        f"set -e; ip link set lo up; mount --bind {hosts} /etc/hosts; mount --bind {private_tmp} /tmp; "
        f"{python} /tmp/backend.py >/dev/null 2>&1 & backend=$!; {nginx} -c /tmp/nginx.conf; "
        f"{python} /tmp/client.py {' '.join(repr(p) for p in PATHS)} > /tmp/answers.json; "
        f"{nginx} -c /tmp/nginx.conf -s quit; kill $backend"
    )
    run("unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", script)
    return json.loads((private_tmp / "answers.json").read_text())


def test_private_paths_are_refused_outside_the_monitoring_network_and_every_answer_says_nosniff(tmp_path: Path) -> None:
    answers = serve_and_request(tmp_path, ["10.9.9.0/24"])
    assert {path for path, (status, _) in answers.items() if status == 403} == PRIVATE
    assert all(status == 200 for path, (status, _) in answers.items() if path not in PRIVATE), answers
    assert {header for _, header in answers.values()} == {"nosniff"}


def test_the_monitoring_network_reaches_them(tmp_path: Path) -> None:
    answers = serve_and_request(tmp_path, ["127.0.0.1"])
    assert all(status == 200 for status, _ in answers.values()), answers
    assert {header for _, header in answers.values()} == {"nosniff"}
