"""A tiny stand-in for the server, for the faults the real one cannot produce on demand.

Env: FLASHFIT_SOCKET (also serve on this Unix socket, as the real server does), BOOT_DELAY (seconds before /ready turns 200), NEVER_READY=1 (/ready stays 503),
DIE_AFTER (seconds after becoming ready, the process exits with code 3), FAILED (a cause: /ready
answers 503 {"status": "failed"} with it, as the real server does when a model cannot load), APP_VERSION.
Endpoints: /health (200 while the process runs), /ready, /metrics (one gauge, the text format),
and anything else -> 200 JSON with the version. HTTP/1.1 keep-alive, threaded; SIGTERM stops it cleanly (it runs as PID 1)."""

import json
import os
import signal
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.monotonic()
BOOT_DELAY = float(os.environ.get("BOOT_DELAY", "0"))
NEVER_READY = os.environ.get("NEVER_READY") == "1"
DIE_AFTER = os.environ.get("DIE_AFTER")
VERSION = os.environ.get("APP_VERSION", "unknown")
FAILED = os.environ.get("FAILED", "")


def ready() -> bool:
    return not NEVER_READY and time.monotonic() - STARTED >= BOOT_DELAY


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/health":
            self._send(200, {"status": "ok", "version": VERSION})
        elif self.path == "/ready" and FAILED:
            self._send(503, {"status": "failed", "checks": {"errors": {"clip": FAILED}}, "version": VERSION})
        elif self.path == "/ready":
            self._send(200 if ready() else 503, {"ready": ready(), "version": VERSION})
        elif self.path == "/metrics":  # scrapable by Prometheus (the text format), as the real one is
            data = f'flashfit_fake_info{{version="{VERSION}"}} 1\n'.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self._send(200, {"version": VERSION, "path": self.path})

    def log_message(self, *_args) -> None:
        pass


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main() -> None:
    # The cause goes to the log before any socket answers: a probe that reached the server (a
    # starved one included) implies the line a gate failure shows is already there.
    if NEVER_READY:
        print("fake backend: will never be ready (NEVER_READY=1)", flush=True)
    if FAILED:
        print(f"ERROR fake backend: model slot clip failed to load: {FAILED}", flush=True)
    server = ThreadingHTTPServer(("0.0.0.0", 8080), Handler)
    server.daemon_threads = True
    servers = [server]
    path = os.environ.get("FLASHFIT_SOCKET")
    if path:
        if os.path.exists(path):
            os.unlink(path)
        unix = UnixHTTPServer(path, Handler)
        os.chmod(path, 0o666)
        servers.append(unix)
        threading.Thread(target=unix.serve_forever, daemon=True).start()

    def stop(*_args) -> None:
        for each in servers:
            threading.Thread(target=each.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"fake backend {VERSION} listening on 8080 (boot delay {BOOT_DELAY}s)", flush=True)
    if DIE_AFTER:
        def die() -> None:
            while not ready():
                time.sleep(0.05)
            time.sleep(float(DIE_AFTER))
            print("fake backend: dying on purpose (DIE_AFTER)", flush=True)
            os._exit(3)

        threading.Thread(target=die, daemon=True).start()
    server.serve_forever()
    if path and os.path.exists(path):
        os.unlink(path)
    print("fake backend: stopped", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
