"""What checks share: the config, one Docker client, the project's containers (listed once), an
HTTP client factory, and the clock. Every outside thing enters through a seam here, so checks run
against fakes in unit tests and against the real engine in integration tests.

Docker and httpx are imported inside methods: `flashfit --help` must not import them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, cast

from flashfit_ops.errors import Unavailable
from flashfit_ops.labels import LABEL_COLOR, LABEL_PROJECT, LABEL_ROLE, LABEL_VERSION, ROLE_BACKEND, ROLE_PROXY

if TYPE_CHECKING:  # pragma: no cover
    from flashfit_ops.config.model import Config
    from flashfit_ops.engine.execs import ExecOutput
    from flashfit_ops.engine.protocol import Container, EngineClient

# Labels written by the deploy engine (flashfit_ops/plan/common.py).
BACKEND_PORT = 8080
STATE_DIR = ".flashfit"
DEFAULT_HTTP_TIMEOUT = 3.0
DEFAULT_DOCKER_TIMEOUT = 8.0


@dataclass
class Settings:
    """Knobs of a doctor run (flags and tests)."""

    latency_requests: int = 20
    http_timeout: float = DEFAULT_HTTP_TIMEOUT
    docker_timeout: float = DEFAULT_DOCKER_TIMEOUT
    # Seconds of CPU sampling in the resources check.
    cpu_sample_s: float = 0.3


class DoctorContext:
    def __init__(
        self,
        config: "Config",
        config_path: Path | None = None,
        *,
        env: str | None = None,
        settings: Settings | None = None,
        docker_factory: Callable[[], EngineClient] | None = None,
        http_transport: Any = None,
        now: Callable[[], datetime] | None = None,
    ):
        self.config = config
        self.config_path = config_path
        self.env = env
        self.settings = settings or Settings()
        self._docker_factory = docker_factory
        self._http_transport = http_transport
        self._now = now or (lambda: datetime.now(timezone.utc))
        self._lock = threading.Lock()
        self._client: EngineClient | None = None
        self._client_error: BaseException | None = None
        self._containers: list[Container] | None = None
        self._containers_lock = threading.Lock()
        self._memo: dict[str, Any] = {}
        self._memo_locks: dict[str, threading.Lock] = {}

    # --- time ----------------------------------------------------------------------------------

    def now(self) -> datetime:
        return self._now()

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """compute() once per run, shared by every check that asks (others wait for the first)."""
        with self._lock:
            key_lock = self._memo_locks.setdefault(key, threading.Lock())
        with key_lock:
            if key not in self._memo:
                self._memo[key] = compute()
            return self._memo[key]

    # --- places --------------------------------------------------------------------------------

    @property
    def project(self) -> str:
        return self.config.project

    @property
    def state_dir(self) -> Path:
        return self.config.base_dir / STATE_DIR

    @property
    def proxy_dir(self) -> Path:
        return self.state_dir / "proxy"

    @property
    def proxy_host(self) -> str:
        """Where the proxy's published port is: this host, or on a swarm the manager DOCKER_HOST
        names (a published port answers on the nodes that run the proxy)."""
        if self.config.target == "swarm":
            from flashfit_ops.swarm.address import proxy_host

            return proxy_host()
        return "127.0.0.1"

    @property
    def proxy_base_url(self) -> str:
        return f"http://{self.proxy_host}:{self.config.ports.http}"

    @property
    def proxy_https_url(self) -> str:
        return f"https://{self.proxy_host}:{self.config.ports.https}"

    # --- docker --------------------------------------------------------------------------------

    def docker(self) -> EngineClient:
        """The one client of this run; the connection error, if any, is kept and re-raised."""
        with self._lock:
            if self._client is None and self._client_error is None:
                try:
                    if self._docker_factory is not None:
                        self._client = self._docker_factory()
                    else:
                        from flashfit_ops.engine.connect import connect

                        self._client = connect(timeout=self.settings.docker_timeout)
                except BaseException as error:  # noqa: BLE001 - remembered for every check
                    self._client_error = error
            failed = self._client_error
            if failed is not None:
                if isinstance(failed, Unavailable):
                    raise Unavailable(failed.message, hint=failed.hint)
                raise failed
            assert self._client is not None  # connected above, or the error was raised
            return self._client

    def containers(self) -> list[Container]:
        """Every container of the project (running or not), listed once per run."""
        with self._containers_lock:
            if self._containers is None:
                client = self.docker()
                self._containers = client.containers.list(
                    all=True, ignore_removed=True, filters={"label": f"{LABEL_PROJECT}={self.project}"}
                )
            return list(self._containers)

    def by_role(self, role: str) -> list[Container]:
        return [c for c in self.containers() if labels_of(c).get(LABEL_ROLE) == role]

    def backends(self, *, running_only: bool = False) -> list[Container]:
        found = self.by_role(ROLE_BACKEND)
        if running_only:
            found = [c for c in found if state_of(c) == "running"]
        return sorted(found, key=lambda c: c.name)

    def exec(self, container: Container, command: list[str]) -> ExecOutput:
        """Run `command` in `container` with all of its output kept (engine/execs.py says why
        not the SDK's exec_run)."""
        from flashfit_ops.engine.execs import run

        return run(self.docker(), container.name, command)

    def proxy(self) -> Container | None:
        proxies = self.by_role(ROLE_PROXY)
        running = [c for c in proxies if state_of(c) == "running"]
        found = running or proxies
        return found[0] if found else None

    # --- http ----------------------------------------------------------------------------------

    def http(self, timeout: float | None = None, *, verify: bool = True) -> Any:
        import httpx

        return httpx.Client(
            timeout=timeout or self.settings.http_timeout,
            transport=self._http_transport,
            verify=verify,
            follow_redirects=False,
            trust_env=False,
        )


# --- helpers over docker SDK container objects (attrs dicts, so fakes are plain dicts) -----------


def attrs_of(container: Any) -> dict:
    return getattr(container, "attrs", None) or {}


def labels_of(container: Any) -> dict[str, str]:
    return (attrs_of(container).get("Config") or {}).get("Labels") or {}


def state_of(container: Any) -> str:
    return cast(str, (attrs_of(container).get("State") or {}).get("Status") or getattr(container, "status", "unknown"))


def container_ips(container: Any, prefer_network: str | None = None) -> list[str]:
    networks = (attrs_of(container).get("NetworkSettings") or {}).get("Networks") or {}
    ordered = sorted(networks.items(), key=lambda kv: (kv[0] != prefer_network, kv[0]))
    return [n.get("IPAddress") for _, n in ordered if n.get("IPAddress")]


def container_names(container: Any) -> set[str]:
    """Every name an upstream line may use for this container: name, aliases, hostname, id."""
    attrs = attrs_of(container)
    names = {getattr(container, "name", "") or attrs.get("Name", "").lstrip("/")}
    hostname = (attrs.get("Config") or {}).get("Hostname")
    if hostname:
        names.add(hostname)
    cid = attrs.get("Id") or getattr(container, "id", "") or ""
    if cid:
        names.add(cid[:12])
    for network in ((attrs.get("NetworkSettings") or {}).get("Networks") or {}).values():
        for key in ("Aliases", "DNSNames"):
            names.update(network.get(key) or [])
    names.discard("")
    return names
