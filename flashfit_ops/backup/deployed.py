"""Backups and restores of a stack that `flashfit deploy` runs, built on the deploy engine.

A deployed stack publishes no backend port: the server is reached through the nginx proxy on
ports.http, or at a backend container's address on the project network (which is how the deploy
engine's health gate reaches it). So:

* `find_deployment` asks the deploy engine's observer (labels + proxy folder) which backend
  containers run; nothing here lists containers itself.
* `DeployedSnapshotter` asks the live containers (then the proxy) for the snapshot, and refuses
  (Unavailable, exit 3) when none answers instead of reading a data folder a server may be writing.
* `DockerServiceControl` is the ServiceControl of a restore: stop the running backend containers
  gracefully (the proxy keeps running and answers 502/503/504 meanwhile), start the same containers
  again, gate each on /ready with the deploy engine's health gate, reload the proxy (a restarted
  container may get a new address; a reload re-resolves the upstream names) and check through it.
* `restore_deployed` runs the whole restore under the deploy lock (no deploy meanwhile) and
  records it in the deploy history, so `flashfit history` shows it.

Nothing here prints: progress goes through a `say` callback the CLI supplies.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from flashfit_ops.backup.snapshot import HttpSnapshotter, SnapshotResult
from flashfit_ops.errors import FlashFitError, OperationFailed, Unavailable

if TYPE_CHECKING:
    from flashfit_ops.backup.store import Store
    from flashfit_ops.config.model import Config

Say = Callable[[str], None]
RESTORE_KIND = "restore"
RESTORE_STRATEGY = "stop-start"
LOG_LINES = 20


def _quiet(_message: str) -> None:
    pass


@dataclass(frozen=True)
class Deployment:
    """What the deploy engine observed: the backend containers to snapshot from and to stop."""

    live: tuple[str, ...]  # containers nginx sends traffic to (applied upstreams)
    running: tuple[str, ...]  # every running backend container of the project, live ones first
    live_version: str | None
    proxy_running: bool

    @property
    def deployed(self) -> bool:
        return bool(self.live or self.running)


def deployment_from(observed: Any) -> Deployment:
    live = tuple(observed.live_names)
    running = [c.name for c in observed.live if c.running]
    running += [c.name for c in observed.containers if c.running and c.name not in running]
    return Deployment(live=live, running=tuple(running), live_version=observed.live_version,
                      proxy_running=observed.proxy.running)


def connect_backend() -> Any:
    from flashfit_ops.execute.backend import DockerBackend

    return DockerBackend.connect()


def find_deployment(config: Config, backend: Any = None) -> tuple[Deployment | None, Any]:
    """(the deployment, the backend) when the project has backend containers, else (None, backend).
    Raises Unavailable when the Docker engine does not answer (the caller decides what that means)."""
    if config.target != "local":
        return None, None
    from flashfit_ops.execute.observe import observe

    backend = backend or connect_backend()
    deployment = deployment_from(observe(backend, config, check_proxy_config=False))
    return (deployment if deployment.deployed else None), backend


def _base_url(backend: Any, config: Config, name: str) -> str | None:
    from flashfit_ops.plan.common import BACKEND_PORT

    address = backend.ip_address(name, config.network_name)
    return f"http://{address}:{BACKEND_PORT}" if address else None


def proxy_url(config: Config) -> str | None:
    """The proxy's plain-HTTP address, or None with TLS (port 80 then only redirects)."""
    if config.tls.enabled:
        return None
    return f"http://127.0.0.1:{config.ports.http}"


# --- snapshot ----------------------------------------------------------------------------------------


class DeployedSnapshotter:
    """The snapshot through the deployed server: each running backend container directly (live
    ones first; no proxy timeout, TLS or rate limit in the way), then the proxy. Never None: a
    deployed server that does not answer is an error, not a reason to read its data folder."""

    def __init__(self, config: Config, deployment: Deployment, backend: Any, jwt_secret: str | None,
                 timeout: float = 600.0, transport: Any = None):
        self.config = config
        self.deployment = deployment
        self.backend = backend
        self.jwt_secret = jwt_secret
        self.timeout = timeout
        self.transport = transport
        self.via: str | None = None

    def candidates(self) -> list[tuple[str, str | None]]:
        found: list[tuple[str, str | None]] = [(f"container {name}", _base_url(self.backend, self.config, name))
                                               for name in self.deployment.running]
        if self.deployment.proxy_running:
            found.append(("the proxy", proxy_url(self.config)))
        return found

    def snapshot(self, data_dir: Path, dest: str) -> SnapshotResult:
        tried = [f"container {n}: not running" for n in self.deployment.live if n not in self.deployment.running]
        for label, url in self.candidates():
            if url is None:
                tried.append(f"{label}: no address" if label != "the proxy" else f"{label}: TLS only")
                continue
            client = HttpSnapshotter(url, self.jwt_secret, timeout=self.timeout, transport=self.transport)
            try:
                snap = client.snapshot(data_dir, dest)
            except Unavailable as exc:
                tried.append(f"{label}: {exc.message}")
                continue
            if snap is None:
                tried.append(f"{label} ({url}): connection refused")
                continue
            snap.via = f"{label} at {url}"
            self.via = snap.via
            return snap
        names = ", ".join(self.deployment.live or self.deployment.running)
        raise Unavailable(
            f"the deployed server ({names}) did not answer the snapshot request; refusing to read its data "
            f"folder while it may be writing it ({'; '.join(tried) or 'nothing running to ask'})",
            hint="see `flashfit status` and `flashfit logs`; or pass --no-server to read the data folder "
            "directly (stop the server first for a consistent copy)",
            details={"tried": tried},
        )


# --- the service around a restore ------------------------------------------------------------------


@dataclass
class ServiceTimes:
    stop_started: float | None = None
    stopped: float | None = None
    started: float | None = None
    containers_ready: float | None = None
    proxy_ready: float | None = None
    ready_seconds: dict[str, float] = field(default_factory=dict)


def _parallel(func: Callable[[str], Any], names: tuple[str, ...]) -> list[Any]:
    if not names:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(names)), thread_name_prefix="flashfit-svc") as pool:
        return list(pool.map(func, names))


class DockerServiceControl:
    """Stop/start the project's running backend containers around the data swap, with the deploy
    engine's pieces: DockerBackend for the engine, the health gate for readiness, the proxy
    controller for the reload and the check through nginx."""

    name = "docker"

    def __init__(self, backend: Any, config: Config, deployment: Deployment, *, say: Say = _quiet,
                 stop_timeout: float | None = None, clock: Callable[[], float] = time.monotonic,
                 probe_for: Callable[[str], Any] | None = None, sleep: Callable[[float], None] = time.sleep):
        """probe_for(name) -> a health-gate Probe of that container, or of the proxy for name None
        (tests pass fakes; by default HTTP to the container's current address, or to the proxy)."""
        from flashfit_ops.plan.common import STOP_TIMEOUT

        self.backend = backend
        self.config = config
        self.deployment = deployment
        self.names = deployment.running
        self.say = say
        self.stop_timeout = STOP_TIMEOUT if stop_timeout is None else stop_timeout
        self.clock = clock
        self.sleep = sleep
        self.probe_for = probe_for or self._http_probe
        self.times = ServiceTimes()
        self.calls: list[str] = []
        self.warnings: list[str] = []

    # -- ServiceControl ------------------------------------------------------------------------
    def stop(self) -> None:
        self.calls.append("stop")
        if self.times.stop_started is None:
            self.times.stop_started = self.clock()
        if self.names:
            self.say(f"stopping {', '.join(self.names)} (the proxy answers 502/503/504 until they are back)")
        _parallel(lambda n: self.backend.stop(n, timeout=self.stop_timeout), self.names)
        still = [n for n in self.names if (info := self.backend.container(n)) is not None and info.state == "running"]
        if still:
            raise OperationFailed(f"{', '.join(still)} still run after `docker stop`; the data was not swapped")
        self.times.stopped = self.clock()

    def start(self) -> None:
        self.calls.append("start")
        if self.names:
            self.say(f"starting {', '.join(self.names)}")
        _parallel(self.backend.start, self.names)
        self.times.started = self.clock()

    def wait_ready(self, timeout: float) -> None:
        self.calls.append("wait_ready")
        start = self.clock()
        if not self.names:
            self.warnings.append("no backend container was running before the restore: none was started")
            return
        self._gate(timeout)
        self.times.containers_ready = self.clock()
        self._through_proxy(max(1.0, timeout - (self.clock() - start)))
        self.times.proxy_ready = self.clock()

    # -- helpers -----------------------------------------------------------------------------------
    def _exited(self, name: str) -> str | None:
        info = self.backend.container(name)
        if info is None:
            return f"{name} disappeared"
        if info.state in ("exited", "dead", "restarting"):
            return f"{name} exited with code {info.exit_code}" + (" and is restarting" if info.state == "restarting" else "")
        return None

    def _http_probe(self, name: str | None) -> Any:
        from flashfit_ops.execute.health import ProbeResult, http_probe

        if name is None:
            url = proxy_url(self.config)
            assert url is not None
            return http_probe(url)

        def probe(path: str, probe_timeout: float) -> ProbeResult:
            # A restarted container may get a new address: look it up for every probe.
            base = _base_url(self.backend, self.config, name)
            if base is None:
                return ProbeResult(False, None, "no address yet")
            return http_probe(base)(path, probe_timeout)

        return probe

    def _gate(self, timeout: float) -> None:
        from flashfit_ops.execute.health import GateResult, GateSettings, wait_ready

        settings = GateSettings.from_config(self.config, deadline=timeout)
        self.say(f"waiting until {', '.join(self.names)} answer {settings.readiness_path}")

        def one(name: str) -> GateResult:
            begun = self.clock()
            result = wait_ready(self.probe_for(name), settings, exited=lambda: self._exited(name),
                                clock=self.clock, sleep=self.sleep)
            if result.ready:
                self.times.ready_seconds[name] = round(self.clock() - begun, 3)
            return result

        results = dict(zip(self.names, _parallel(one, self.names)))
        failed = {n: r for n, r in results.items() if not r.ready}
        if failed:
            logs = {n: self.backend.logs(n, tail=LOG_LINES) for n in failed}
            reasons = "; ".join(f"{n}: {r.reason}" for n, r in sorted(failed.items()))
            raise OperationFailed(f"not ready after the restart: {reasons}", details={"logs": logs})

    def _through_proxy(self, timeout: float) -> None:
        """Reload nginx on the same slots (the links follow the sockets the restarted containers
        re-created; the reload makes nginx forget the slots it marked as failed while every
        backend was down), check through each slot, then /ready through the proxy."""
        from flashfit_ops.execute.health import GateSettings, wait_ready
        from flashfit_ops.execute.proxy import ProxyController

        if not self.deployment.proxy_running:
            self.warnings.append("the proxy was not running: only the containers were checked")
            return
        live = tuple(n for n in self.deployment.live if n in self.names)
        if not live:
            self.warnings.append("the proxy serves none of the restarted containers: it was not reloaded")
            return
        self.say("reloading the proxy and checking through it")
        ProxyController(self.backend, self.config, clock=self.clock, sleep=self.sleep).switch(live, force_reload=True)
        if proxy_url(self.config) is None:
            return  # with TLS, the switch's check (liveness over HTTP) is what we can do without a cert
        settings = replace(GateSettings.from_config(self.config, deadline=timeout), start_period=timeout)
        result = wait_ready(self.probe_for(None), settings, clock=self.clock, sleep=self.sleep)
        if not result.ready:
            raise OperationFailed(f"the proxy does not serve {settings.readiness_path} after the restart: {result.reason}")

    def report(self) -> dict[str, Any]:
        t = self.times
        down = None
        if t.stop_started is not None and (t.proxy_ready or t.containers_ready):
            down = round((t.proxy_ready or t.containers_ready or 0.0) - t.stop_started, 3)
        return {
            "containers": list(self.names),
            "live": list(self.deployment.live),
            "stop_seconds": round(t.stopped - t.stop_started, 3) if t.stopped and t.stop_started else None,
            "ready_seconds": dict(t.ready_seconds),
            "downtime_seconds": down,
            "calls": list(self.calls),
            "warnings": list(self.warnings),
        }


# --- the whole restore ---------------------------------------------------------------------------


def restore_deployed(
    config: Config,
    store: Store,
    ref: str | None,
    *,
    backend: Any = None,
    lock_wait: float | None = None,
    say: Say = _quiet,
    service_options: dict[str, Any] | None = None,
    **restore_options: Any,
) -> dict[str, Any]:
    """restore_backup around a DockerServiceControl, under the deploy lock, recorded in the history
    (flashfit_ops.runs.recorded: the lock wait, SIGTERM, the record and the exit code)."""
    from flashfit_ops.backup.restore import restore_backup
    from flashfit_ops.execute.observe import observe
    from flashfit_ops.runs.recorded import deploy_lock, recorded_run

    backend = backend or connect_backend()
    message = f"restore {ref or 'latest'}"
    with deploy_lock(config, lock_wait, message):
        # Observed under the lock: what a deploy that just finished left running is what we stop.
        observed = observe(backend, config, check_proxy_config=False)
        deployment = deployment_from(observed)
        service = DockerServiceControl(backend, config, deployment, say=say, **(service_options or {}))
        details = {"containers": list(deployment.running), "backup_ref": ref or "latest"}
        with recorded_run(config, RESTORE_KIND, strategy=RESTORE_STRATEGY, previous_version=observed.live_version,
                          message=message, details=details) as run:  # fmt: skip
            try:
                result = restore_backup(config, store, ref, service=service, **restore_options)
                run.details["backup"] = result.get("id")
            except FlashFitError as exc:
                exc.details.setdefault("restore_id", run.id)
                exc.details.setdefault("service", service.report())
                raise
            finally:
                report = service.report()
                run.warnings = list(report["warnings"])
                run.details.update(downtime_s=report["downtime_seconds"], ready_seconds=report["ready_seconds"])
    result["restore_id"] = run.id
    result["service"] = service.report()
    result["warnings"] = list(result.get("warnings", [])) + service.warnings
    return result
