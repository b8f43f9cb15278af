"""What the worst accepted request costs a real server: `/health` latency while it runs, and the
worker's peak memory for the largest accepted image, each beside an idle baseline in one run.

A real `flashfit-server serve` (one worker, tiny or full-architecture checkpoints) on loopback.
The worst accepted requests, sent without a token by `--clients` callers back to back:

  png   a flat RGBA PNG just under MAX_IMAGE_PIXELS (40 M pixels in about 150 kB: the costliest
        decode, since PNG has no reduced-scale decoding)
  jpeg  the largest noisy JPEG a JSON body under MAX_JSON_BYTES can carry (reduced-scale decode)
  keys  a JSON body at both limits (MAX_JSON_BYTES, 4096 separators), mostly one long string:
        the costliest body to parse that is still parsed (then 422)

It prints /health p50/p99 idle and under each load (goal: p99 < 100 ms under load), and the
worker's peak RSS above idle for one request of each image (Linux VmHWM, reset between runs).

  .venv/bin/python benchmarks/bench_hostile.py                 # tiny models, 8 s per phase
  .venv/bin/python benchmarks/bench_hostile.py --quick         # 4 s per phase
  .venv/bin/python benchmarks/bench_hostile.py --models full   # CLIP ViT-B/32 + BLIP-base shapes
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from flashfit_server.middleware import MAX_JSON_SEPARATORS  # noqa: E402
from flashfit_server.models.tiny import DEFAULT_FASHION, make_checkpoints  # noqa: E402
from flashfit_server.settings import Settings  # noqa: E402
from flashfit_server.storebench import percentile_ms  # noqa: E402

CACHE = REPO / ".cache" / "bench-models"
GOAL_MS = 100.0
JSON = {"content-type": "application/json"}


def checkpoints(size: str) -> Path:
    root = CACHE / f"{size}-seed0"
    if not (root / DEFAULT_FASHION / "config.json").exists():
        shutil.rmtree(root, ignore_errors=True)
        make_checkpoints(root, seed=0, size=size)  # type: ignore[arg-type]
    return root


def worst_png(max_pixels: int) -> bytes:
    side = int(max_pixels**0.5) - 1
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (90, 140, 200, 255)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def worst_jpeg(max_bytes: int) -> bytes:
    rng, side = np.random.default_rng(0), 600
    while True:  # the largest noisy JPEG under the byte limit
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=95)
        if buffer.tell() > max_bytes:
            return previous
        previous, side = buffer.getvalue(), side + 100


def worst_keys(body_bytes: int) -> bytes:
    keys = b",".join(b'"k%05d":0' % i for i in range(MAX_JSON_SEPARATORS // 2 - 4))
    return b'{"text":"shirt","user_id":"' + b"x" * body_bytes + b'",' + keys + b"}"


class Server:
    def __init__(self, models: Path, tmp: Path):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "MODEL_CACHE_DIR": str(models), "VECTOR_STORE_DIR": str(tmp / "data"),
               "LOG_LEVEL": "warning", "PYTHONPATH": str(REPO)}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.log = open(tmp / "server.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flashfit_server.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"], env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise SystemExit(f"server not ready; see {tmp / 'server.log'}")

    def status_kib(self, field: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
        raise KeyError(field)

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def health_latencies(url: str, seconds: float, interval: float = 0.02) -> list[float]:
    samples = []
    with httpx.Client(base_url=url, timeout=30) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            assert client.get("/health").status_code == 200
            samples.append(time.perf_counter() - started)
            time.sleep(interval)
    return samples


def _caller(url: str, body: bytes, stop, counts, lock) -> None:  # noqa: ANN001
    with httpx.Client(base_url=url, timeout=120) as client:
        while not stop.is_set():
            code = client.post("/api/fusion/recommend", content=body, headers=JSON).status_code
            with lock:
                counts[code] = counts.get(code, 0) + 1


def under_load(url: str, body: bytes, clients: int, seconds: float) -> tuple[list[float], dict[int, int]]:
    """/health latencies while `clients` processes (not threads: the callers must not share this
    process's interpreter lock with the prober) send `body` back to back."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        stop, counts, lock = context.Event(), manager.dict(), manager.Lock()
        callers = [context.Process(target=_caller, args=(url, body, stop, counts, lock)) for _ in range(clients)]
        for caller in callers:
            caller.start()
        time.sleep(2.0)  # the callers have started and their first requests are in flight
        samples = health_latencies(url, seconds)
        stop.set()
        for caller in callers:
            caller.join(180)
        return samples, dict(counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--clients", type=int, default=1, help="callers at once (1: the worst request, one after another)")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seconds = 4.0 if args.quick else args.seconds
    settings = Settings.from_env({})
    png = worst_png(settings.max_image_pixels)
    jpeg = worst_jpeg(min(settings.max_image_bytes, settings.max_json_bytes * 3 // 4 - 1024))
    keys = worst_keys(settings.max_json_bytes - 1024 - MAX_JSON_SEPARATORS * 6)
    loads = {  # encoded once: the callers only send
        "png": json.dumps({"image_data": base64.b64encode(png).decode(), "limit": 3}).encode(),
        "jpeg": json.dumps({"image_data": base64.b64encode(jpeg).decode(), "limit": 3}).encode(),
        "keys": keys,
    }
    print(f"models={args.models} clients={args.clients} seconds={seconds} cores={os.cpu_count()}")
    print(f"  png {len(png) / 1e3:.0f} kB ({int(settings.max_image_pixels**0.5) - 1}^2 px), "
          f"jpeg {len(jpeg) / 1e6:.1f} MB, keys body {len(keys) / 1e6:.1f} MB")
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        server = Server(checkpoints(args.models), Path(tmp))
        try:
            with httpx.Client(base_url=server.url, timeout=120) as client:  # first inference done
                client.post("/api/fusion/recommend", json={"text": "warm up"})
            idle = health_latencies(server.url, seconds)
            idle_p50, idle_p99 = percentile_ms(idle, 50), percentile_ms(idle, 99)
            print(f"/health idle:        p50 {idle_p50:7.1f} ms  p99 {idle_p99:7.1f} ms")
            worst_p99 = 0.0
            for name, body in loads.items():
                samples, statuses = under_load(server.url, body, args.clients, seconds)
                p50, p99 = percentile_ms(samples, 50), percentile_ms(samples, 99)
                worst_p99 = max(worst_p99, p99)
                print(f"/health under {name:5s}: p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  "
                      f"(p99 {p99 / max(idle_p99, 1e-9):.1f}x idle; answers {dict(sorted(statuses.items()))})")
            print(f"/health p99 under the worst accepted request: {worst_p99:.1f} ms "
                  f"(goal < {GOAL_MS:.0f} ms: {'met' if worst_p99 < GOAL_MS else 'NOT met'})")
            idle_rss = server.status_kib("VmRSS:") / 1024
            print(f"worker RSS idle: {idle_rss:.0f} MiB")
            for name in ("png", "jpeg"):
                server.reset_peak()
                before = server.status_kib("VmRSS:") / 1024
                with httpx.Client(base_url=server.url, timeout=120) as client:
                    code = client.post("/api/fusion/recommend", content=loads[name], headers=JSON).status_code
                peak = server.status_kib("VmHWM:") / 1024
                print(f"peak RSS, one {name:4s} request: {peak:6.0f} MiB ({peak - before:+.0f} MiB over idle, "
                      f"{peak / max(before, 1e-9):.2f}x; answered {code})")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
