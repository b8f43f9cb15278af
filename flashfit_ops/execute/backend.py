"""DockerBackend: the deploy operations (engine.protocol.Engine) over the engine's SDK client
(engine.protocol.EngineClient, from engine.connect). Everything it returns is plain data; every
engine error becomes a FlashFitError through engine.errors (unreachable engine -> Unavailable,
exit 3). The executor and the observer take an Engine, so unit tests pass a fake one at this seam.
The image, swarm, monitoring and doctor modules take the EngineClient itself."""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator, Mapping, TypeVar

from flashfit_ops.engine.errors import ENGINE_HINT, engine_errors
from flashfit_ops.engine.protocol import Container, ContainerInfo, Engine, EngineClient
from flashfit_ops.plan.common import LABEL_PROJECT, PROXY_CONFIG_DIR, PROXY_CONFIG_FILE, SOCKET_DIR, EngineGpus
from flashfit_ops.plan.keeper import KEEPER_PROXY_DIR, KEEPER_SOCKETS, KEEPER_TARGETS_DIR, TARGETS_FILE
from flashfit_ops.plan.steps import ContainerSpec, EnsureKeeper, GpuRequest, ProxySpec
from flashfit_ops.service_spec import Healthcheck, Logging

__all__ = ["ENGINE_HINT", "ContainerInfo", "DockerBackend", "device_request"]

F = TypeVar("F", bound=Callable[..., Any])


def _engine_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with engine_errors(f"the Docker engine refused {func.__name__}"):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def device_request(gpus: GpuRequest) -> Any:
    """The Docker SDK's DeviceRequest for a container's GPUs (what `docker run --gpus` sends)."""
    from flashfit_ops.engine.sdk import DeviceRequest

    return DeviceRequest(
        driver=gpus.driver,
        count=gpus.count if not gpus.device_ids else None,
        device_ids=list(gpus.device_ids) or None,
        capabilities=[list(gpus.capabilities)],
    )


NANOSECONDS = 1_000_000_000


def healthcheck_config(check: Healthcheck) -> dict[str, Any]:
    """The engine's HealthConfig for a container (durations in nanoseconds)."""
    return {
        "Test": ["CMD", *check.test],
        "Interval": int(check.interval * NANOSECONDS),
        "Timeout": int(check.timeout * NANOSECONDS),
        "Retries": check.retries,
        "StartPeriod": int(check.start_period * NANOSECONDS),
    }


def log_config(logging: Logging) -> dict[str, Any]:
    return {"Type": logging.driver, "Config": dict(logging.options)}


def _info(container: Container) -> ContainerInfo:
    attrs = container.attrs
    state = attrs.get("State", {}) or {}
    return ContainerInfo(
        name=container.name,
        id=container.id,
        labels=dict(attrs.get("Config", {}).get("Labels") or {}),
        state=str(state.get("Status", "unknown")),
        image=str(attrs.get("Config", {}).get("Image", "")),
        exit_code=state.get("ExitCode"),
        restart_count=int(attrs.get("RestartCount") or 0),
        started_at=str(state.get("StartedAt", "")),
        created=str(attrs.get("Created", "")),
        mount_targets=tuple(str(m.get("Destination", "")) for m in attrs.get("Mounts") or []),
    )


class DockerBackend(Engine):
    """The Engine protocol over the Docker SDK client."""

    def __init__(self, client: EngineClient):
        self.client = client
        self._ncpu: int | None = None

    @classmethod
    def connect(cls) -> "DockerBackend":
        from flashfit_ops.engine.connect import connect

        return cls(connect())

    # -- observe ---------------------------------------------------------------------------
    @_engine_errors
    def list_containers(self, project: str) -> list[ContainerInfo]:
        # ignore_removed: a container removed between listing and inspecting is simply gone
        found = self.client.containers.list(
            all=True, ignore_removed=True, filters={"label": f"{LABEL_PROJECT}={project}"}
        )
        return [_info(c) for c in found]

    @_engine_errors
    def container(self, name: str) -> ContainerInfo | None:
        from flashfit_ops.engine.errors import NotFound

        try:
            return _info(self.client.containers.get(name))
        except NotFound:
            return None

    @_engine_errors
    def network_exists(self, name: str) -> bool:
        return bool(self.client.networks.list(names=[name]))

    @_engine_errors
    def image_exists(self, reference: str) -> bool:
        from flashfit_ops.engine.errors import ImageNotFound

        try:
            self.client.images.get(reference)
            return True
        except ImageNotFound:
            return False

    @_engine_errors
    def image_tags(self, repository: str) -> list[str]:
        from flashfit_ops.images.prune import list_tags

        return sorted({tag.version for tag in list_tags(self.client, repository)})

    # -- networks and volumes ----------------------------------------------------------------
    @_engine_errors
    def ensure_network(self, name: str, labels: dict[str, str]) -> bool:
        if self.client.networks.list(names=[name]):
            return False
        self.client.networks.create(name, driver="bridge", labels=labels, check_duplicate=True)
        return True

    @_engine_errors
    def remove_network(self, name: str) -> None:
        from flashfit_ops.engine.errors import NotFound

        for network in self.client.networks.list(names=[name]):
            try:
                network.remove()
            except NotFound:
                pass

    @_engine_errors
    def ensure_volume(self, name: str, labels: dict[str, str]) -> bool:
        from flashfit_ops.engine.errors import NotFound

        try:
            self.client.volumes.get(name)
            return False
        except NotFound:
            self.client.volumes.create(name, labels=labels)
            return True

    @_engine_errors
    def remove_volume(self, name: str) -> None:
        from flashfit_ops.engine.errors import NotFound

        try:
            self.client.volumes.get(name).remove()
        except NotFound:
            pass

    # -- containers ----------------------------------------------------------------------------
    def _cpus(self, cpus: float | None) -> int | None:
        if cpus is None:
            return None
        if self._ncpu is None:
            self._ncpu = int(self.client.info().get("NCPU") or 1)
        # The engine rejects a limit above the host's CPU count; a smaller host gets all it has.
        return int(min(cpus, self._ncpu) * 1e9)

    @_engine_errors
    def gpu_support(self) -> EngineGpus:
        info = self.client.info()
        cdi = [str(d.get("ID", "")) for d in info.get("DiscoveredDevices") or [] if isinstance(d, dict)]
        ids = [d.split("=", 1)[1] for d in cdi if d.startswith("nvidia.com/gpu=") and not d.endswith("=all")]
        return EngineGpus(runtimes=tuple(sorted(info.get("Runtimes") or {})), cdi_gpus=tuple(ids))

    @_engine_errors
    def image_labels(self, reference: str) -> dict[str, str] | None:
        from flashfit_ops.engine.errors import ImageNotFound

        try:
            return dict(self.client.images.get(reference).labels or {})
        except ImageNotFound:
            return None

    @_engine_errors
    def gpu_nodes(self, label: str) -> int:
        """Swarm nodes carrying `label=true` (asked of a manager)."""
        return len(self.client.nodes.list(filters={"node.label": f"{label}=true"}))

    @_engine_errors
    def create_backend(self, spec: ContainerSpec, secrets: dict[str, str]) -> None:
        """Create (not start) a backend container; secrets join its environment here only."""
        from flashfit_ops.engine.sdk import Mount

        mounts = [Mount(m.target, m.source, type=m.kind, read_only=m.read_only) for m in spec.mounts]
        self.client.containers.create(
            spec.image,
            name=spec.name,
            labels=spec.labels,
            environment={**spec.env, **secrets},
            network=spec.network,
            mounts=mounts,
            mem_limit=spec.memory.lower() if spec.memory else None,
            nano_cpus=self._cpus(spec.cpus),
            device_requests=[device_request(spec.gpus)] if spec.gpus else None,
            healthcheck=healthcheck_config(spec.healthcheck) if spec.healthcheck else None,
            log_config=log_config(spec.logging) if spec.logging else None,
            restart_policy={"Name": "unless-stopped"},
            detach=True,
        )

    @_engine_errors
    def run_keeper(self, step: EnsureKeeper, script: str, modules: Mapping[str, str] | None = None) -> None:
        """The keeper container (flashfit_ops.plan.steps.EnsureKeeper): root, to reach the engine.
        `modules`: {name: file} the script imports, mounted beside it as `/<name>.py`."""
        from flashfit_ops.engine.sdk import Mount

        mounts = [
            Mount("/flashfit-keeper.py", script, type="bind", read_only=True),
            *(Mount(f"/{name}.py", path, type="bind", read_only=True) for name, path in (modules or {}).items()),
            Mount("/flashfit", step.state_dir, type="bind", read_only=True),
            # Writable: a failover relinks slots and records them (flashfit_ops/plan/spare.py).
            Mount(KEEPER_SOCKETS, f"{step.state_dir}/sockets", type="bind"),
            Mount(KEEPER_PROXY_DIR, f"{step.state_dir}/proxy", type="bind"),
            Mount("/var/run/docker.sock", step.engine_socket, type="bind"),
        ]
        environment = {
            "KEEPER_PROJECT": step.labels.get(LABEL_PROJECT, ""),
            "KEEPER_PROXY": step.proxy,
            "KEEPER_READY_PATH": step.ready_path,
        }
        if step.targets_dir:  # monitoring on: a failover rewrites Prometheus's scrape targets
            mounts.append(Mount(KEEPER_TARGETS_DIR, step.targets_dir, type="bind"))
            environment["KEEPER_TARGETS"] = f"{KEEPER_TARGETS_DIR}/{TARGETS_FILE}"
        container = self.client.containers.create(
            step.image,
            name=step.name,
            labels=step.labels,
            command=["python3", "-u", "/flashfit-keeper.py"],
            entrypoint=[],
            user="0:0",
            environment=environment,
            mounts=mounts,
            network_mode="none",
            healthcheck={"Test": ["NONE"]},  # the image's probes the server, which is not here
            restart_policy={"Name": "unless-stopped"},
            mem_limit="64m",
            detach=True,
        )
        container.start()

    @_engine_errors
    def run_proxy(self, spec: ProxySpec) -> ContainerInfo:
        from flashfit_ops.engine.sdk import Mount

        mounts = [Mount(PROXY_CONFIG_DIR, spec.config_dir, type="bind", read_only=True)]
        if spec.sockets_dir:
            mounts.append(Mount(SOCKET_DIR, spec.sockets_dir, type="bind"))
        mounts += [Mount(m.target, m.source, type=m.kind, read_only=True) for m in spec.tls_files]
        ports: dict[str, int] = {"80/tcp": spec.http_port}
        if spec.https_port:
            ports["443/tcp"] = spec.https_port
        container = self.client.containers.create(
            spec.image,
            name=spec.name,
            labels=spec.labels,
            command=["nginx", "-g", "daemon off;", "-c", f"{PROXY_CONFIG_DIR}/{PROXY_CONFIG_FILE}"],
            network=spec.network,
            mounts=mounts,
            ports=ports,
            restart_policy={"Name": "unless-stopped"},
            detach=True,
        )
        try:
            container.start()
        except Exception:
            container.remove(force=True)
            raise
        container.reload()
        return _info(container)

    @_engine_errors
    def start(self, name: str) -> None:
        self.client.containers.get(name).start()

    @_engine_errors
    def stop(self, name: str, timeout: float = 10.0) -> None:
        from flashfit_ops.engine.errors import NotFound

        try:
            self.client.containers.get(name).stop(timeout=int(max(1, round(timeout))))
        except NotFound:
            pass

    @_engine_errors
    def remove(self, name: str) -> None:
        from flashfit_ops.engine.errors import NotFound

        try:
            self.client.containers.get(name).remove(force=True, v=False)
        except NotFound:
            pass

    @_engine_errors
    def ip_address(self, name: str, network: str) -> str | None:
        container = self.client.containers.get(name)
        networks = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
        address = (networks.get(network) or {}).get("IPAddress")
        return address or None

    @_engine_errors
    def logs(self, name: str, tail: int = 20) -> str:
        from flashfit_ops.engine.errors import NotFound

        try:
            raw = self.client.containers.get(name).logs(tail=tail, stdout=True, stderr=True)
        except NotFound:
            return ""
        return raw.decode("utf-8", "replace")

    @_engine_errors
    def stream_logs(self, name: str, *, follow: bool, since: Any = None, tail: Any = "all") -> Iterator[bytes]:
        container = self.client.containers.get(name)
        return container.logs(stream=True, follow=follow, since=since, tail=tail, stdout=True, stderr=True)

    @_engine_errors
    def exec(self, name: str, command: list[str]) -> tuple[int, str]:
        from flashfit_ops.engine.execs import run

        result = run(self.client, name, command)  # all of the output, even on a loaded host
        code = result.exit_code if result.exit_code is not None else -1
        text = result.text()
        return code, f"{text}\n({result.problem})" if result.problem else text

    @_engine_errors
    def processes(self, name: str) -> list[tuple[int, str]]:
        """(host pid, command line) of every process in the container (`docker top`)."""
        top = self.client.containers.get(name).top(ps_args="-o pid,args")
        titles = [t.upper() for t in top.get("Titles", [])]
        pid_i = titles.index("PID") if "PID" in titles else 0
        cmd_i = len(titles) - 1
        return [(int(row[pid_i]), row[cmd_i]) for row in top.get("Processes") or []]
