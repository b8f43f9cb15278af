"""The nginx proxy: its config folder (.flashfit/proxy, mounted at /etc/flashfit) and the switch.

A switch: render nginx.conf for the new upstreams -> write it beside the live file -> `nginx -t`
on it inside the proxy container -> atomic rename over nginx.conf -> `nginx -s reload` -> wait
until a new worker generation runs and the old one is shutting down -> a request through the proxy
-> record the upstreams as applied (applied.json). The old workers finish their requests; the
drain waits for them and for the old containers' connections before anything is stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from flashfit_ops.config.model import Config
from flashfit_ops.errors import OperationFailed
from flashfit_ops.fileio import atomic_write_text, fsync_dir
from flashfit_ops.plan.common import BACKEND_PORT, PROXY_CONFIG_DIR, PROXY_CONFIG_FILE, proxy_dir, proxy_name
from flashfit_ops.plan.observed import name_of_upstream, upstream_of

APPLIED_FILE = "applied.json"
# How many container names applied.json remembers as having served.
SERVED_KEPT = 200
CANDIDATE_FILE = "nginx.conf.next"
WORKER = "nginx: worker process"
SHUTTING_DOWN = "nginx: worker process is shutting down"
_SERVER_LINE = re.compile(r"^\s*server\s+([A-Za-z0-9][A-Za-z0-9_.-]*):(\d+)\b")


def parse_upstreams(text: str) -> tuple[str, ...]:
    """Container names in the upstream block of a rendered nginx.conf."""
    names = []
    inside = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("upstream "):
            inside = True
            continue
        if inside and stripped.startswith("}"):
            inside = False
            continue
        if inside:
            match = _SERVER_LINE.match(line)
            if match:
                names.append(match.group(1))
    return tuple(names)


@dataclass(frozen=True)
class ProxyFiles:
    config: tuple[str, ...]
    config_present: bool
    applied: tuple[str, ...]
    applied_present: bool
    stray: tuple[str, ...]
    served: tuple[str, ...] | None = None


def read_files(folder: Path) -> ProxyFiles:
    folder = Path(folder)
    config_path = folder / PROXY_CONFIG_FILE
    try:
        config = parse_upstreams(config_path.read_text(encoding="utf-8"))
        present = True
    except (FileNotFoundError, UnicodeDecodeError):
        config, present = (), False
    applied: tuple[str, ...] = ()
    applied_present = False
    served: tuple[str, ...] | None = None
    try:
        data = json.loads((folder / APPLIED_FILE).read_text(encoding="utf-8"))
        applied = tuple(str(n) for n in data.get("upstreams", []))
        applied_present = True
        if isinstance(data.get("served"), list):
            served = tuple(str(n) for n in data["served"])
    except (FileNotFoundError, ValueError, AttributeError):
        pass
    stray = []
    if folder.is_dir():
        for entry in sorted(folder.iterdir()):
            if entry.name == CANDIDATE_FILE or (entry.name.startswith(".") and entry.name.endswith(".tmp")):
                stray.append(entry.name)
    return ProxyFiles(config, present, applied, applied_present, tuple(stray), served)


def _established_on(tcp_tables: str, port: int) -> int:
    """Established TCP connections whose local port is `port`, from /proc/net/tcp{,6} text."""
    count = 0
    wanted = f"{port:04X}"
    for line in tcp_tables.splitlines():
        fields = line.split()
        if len(fields) < 4 or ":" not in fields[1]:
            continue
        local_port = fields[1].rsplit(":", 1)[1]
        if local_port == wanted and fields[3] == "01":
            count += 1
    return count


class ProxyController:
    """Switches the proxy's upstreams. `backend` is the DockerBackend (or a fake in tests)."""

    def __init__(
        self,
        backend,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        verify_url: str | None = None,
    ):
        self.backend = backend
        self.config = config
        self.folder = proxy_dir(config)
        self.name = proxy_name(config.project)
        self.clock = clock
        self.sleep = sleep
        self.verify_url = verify_url or f"http://127.0.0.1:{config.ports.http}{config.healthcheck.liveness_path}"
        # Worker pids of the generation the last switch retired; the drain waits for them.
        self.retired_workers: set[int] = set()

    # -- files ---------------------------------------------------------------------------------
    def render(self, names: tuple[str, ...]) -> str:
        from flashfit_ops.render import render_nginx

        return render_nginx(self.config, [upstream_of(n, BACKEND_PORT) for n in names], tls=self.config.tls.enabled)

    def write_live(self, names: tuple[str, ...]) -> None:
        """Write nginx.conf directly (the proxy is not running yet: nothing to test it in)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder / PROXY_CONFIG_FILE, self.render(names))

    def record_applied(self, names: tuple[str, ...]) -> None:
        text = (self.folder / PROXY_CONFIG_FILE).read_bytes()
        served = [n for n in (read_files(self.folder).served or ()) if n not in names] + list(names)
        record = {
            "upstreams": list(names),
            "served": served[-SERVED_KEPT:],
            "config_sha256": hashlib.sha256(text).hexdigest(),
            "applied_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_text(self.folder / APPLIED_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")

    def clean(self, files: tuple[str, ...]) -> None:
        for name in files:
            try:
                (self.folder / name).unlink()
            except FileNotFoundError:
                pass

    # -- nginx -----------------------------------------------------------------------------------
    def test_config(self, file_name: str) -> None:
        code, output = self.backend.exec(self.name, ["nginx", "-t", "-q", "-c", f"{PROXY_CONFIG_DIR}/{file_name}"])
        if code != 0:
            raise OperationFailed(
                "nginx rejected the new configuration; traffic stays where it was",
                hint="see the nginx message above",
                details={"nginx": output.strip()[-2000:]},
            )

    def config_is_valid(self) -> bool:
        code, _ = self.backend.exec(self.name, ["nginx", "-t", "-q", "-c", f"{PROXY_CONFIG_DIR}/{PROXY_CONFIG_FILE}"])
        return code == 0

    def workers(self) -> dict[int, str]:
        return {pid: cmd.strip() for pid, cmd in self.backend.processes(self.name) if cmd.strip().startswith(WORKER)}

    def switch(self, names: tuple[str, ...]) -> None:
        """Send traffic to `names`. Returns once a new worker generation serves them."""
        if not names:
            raise OperationFailed("refusing to switch the proxy to an empty set of upstreams")
        self.folder.mkdir(parents=True, exist_ok=True)
        candidate = self.folder / CANDIDATE_FILE
        atomic_write_text(candidate, self.render(names))
        try:
            self.test_config(CANDIDATE_FILE)
        except BaseException:
            candidate.unlink(missing_ok=True)
            raise
        before = {pid for pid, cmd in self.workers().items() if cmd == WORKER}
        os.replace(candidate, self.folder / PROXY_CONFIG_FILE)
        fsync_dir(self.folder)
        code, output = self.backend.exec(self.name, ["nginx", "-s", "reload", "-c", f"{PROXY_CONFIG_DIR}/{PROXY_CONFIG_FILE}"])
        if code != 0:
            raise OperationFailed("nginx refused to reload", details={"nginx": output.strip()[-2000:]})
        self._wait_new_generation(before)
        self.retired_workers = before
        self.verify()
        self.record_applied(names)

    def _wait_new_generation(self, before: set[int], timeout: float = 15.0) -> None:
        deadline = self.clock() + timeout
        delay = 0.01
        while True:
            current = self.workers()
            active = {pid for pid, cmd in current.items() if cmd == WORKER}
            if active - before and not (active & before):
                return
            if self.clock() >= deadline:
                raise OperationFailed(
                    f"nginx did not start a new worker generation within {timeout:g}s after the reload",
                    hint=f"see `docker logs {self.name}`",
                )
            self.sleep(delay)
            delay = min(delay * 2, 0.1)

    def verify(self, timeout: float = 10.0) -> None:
        """A request through the proxy on a fresh connection: served by the new generation, since
        the old one closed its listening sockets when it began shutting down."""
        import httpx

        deadline = self.clock() + timeout
        last = ""
        while True:
            try:
                response = httpx.get(self.verify_url, timeout=2.0, headers={"Connection": "close"})
                if 200 <= response.status_code < 300:
                    return
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as error:
                last = type(error).__name__
            if self.clock() >= deadline:
                raise OperationFailed(f"the proxy does not serve {self.verify_url} after the switch ({last})")
            self.sleep(0.05)

    def wait_serving(self, timeout: float = 20.0) -> None:
        self.verify(timeout)

    # -- drain -----------------------------------------------------------------------------------
    def connections(self, container: str) -> int | None:
        """Established connections to the backend port inside `container`; None when unknown."""
        try:
            code, output = self.backend.exec(container, ["cat", "/proc/net/tcp", "/proc/net/tcp6"])
        except Exception:
            return None
        if code not in (0, 1) or "sl" not in output:
            return None
        return _established_on(output, BACKEND_PORT)

    def drain(self, names: tuple[str, ...], timeout: float, on_status: Callable[[str], None] | None = None) -> dict:
        """Wait until the retired nginx workers exited and `names` have no connections, or timeout."""
        start = self.clock()
        retired = set(self.retired_workers)
        delay = 0.02
        while True:
            waiting_for = []
            if retired:
                alive = retired & set(self.workers())
                if alive:
                    waiting_for.append(f"{len(alive)} old nginx worker(s)")
                else:
                    retired = set()
            if not retired:
                busy = {n: c for n in names if (c := self.connections(n))}
                if busy:
                    waiting_for.append(", ".join(f"{n}: {c} connection(s)" for n, c in busy.items()))
            elapsed = self.clock() - start
            if not waiting_for:
                return {"drained": True, "seconds": round(elapsed, 3)}
            if elapsed >= timeout:
                return {"drained": False, "seconds": round(elapsed, 3), "waiting_for": waiting_for}
            if on_status:
                on_status(f"draining: {'; '.join(waiting_for)}")
            self.sleep(min(delay, max(0.0, timeout - elapsed)))
            delay = min(delay * 2, 0.2)


def upstream_names(upstreams: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(name_of_upstream(u) for u in upstreams)
