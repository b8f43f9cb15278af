"""What every strategy shares: labels, names, container specs, the proxy and the cutover, and
which stopped versions are kept for rollback. Pure functions. What a crashed or interrupted deploy
left, and what to do about it, is repair.py (`leftovers`), which builds on this module."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from flashfit_ops import service_spec
from flashfit_ops.config.model import Config
from flashfit_ops.labels import (  # re-exported: the strategies and the executor read them here
    LABEL_COLOR,
    LABEL_DEPLOY,
    LABEL_PROJECT,
    LABEL_REPLICA,
    LABEL_ROLE,
    LABEL_VERSION,
    ROLE_BACKEND,
    ROLE_PROXY,
)
from flashfit_ops.plan.observed import ContainerState, Observed, ProxyState
from flashfit_ops.service_spec import CONTAINER_PORT, is_host_path  # is_host_path: re-exported
from flashfit_ops.plan.steps import (
    ContainerSpec,
    Drain,
    EnsureNetwork,
    EnsureProxy,
    EnsureVolume,
    GpuRequest,
    Monitor,
    Mount,
    ProxySpec,
    ReleaseStandby,
    RemoveContainer,
    Step,
    SwitchUpstreams,
    WaitReady,
)

COLORS = ("blue", "green")
BACKEND_PORT = CONTAINER_PORT
# Where the proxy container sees .flashfit/proxy; nginx runs with -c on a file in it, so an atomic
# rename of that file is seen (a single-file bind mount would keep the old inode).
PROXY_CONFIG_DIR = "/etc/flashfit"
CONTAINER_SSL_DIR = "/etc/nginx/ssl"  # where the proxy reads the TLS certificate and key
PROXY_CONFIG_FILE = "nginx.conf"
# The folder shared by the backends and the proxy (.flashfit/sockets on the host). Each backend
# listens on <container>.sock in it; nginx's upstream lists slot-<n>.sock, links to those sockets:
# a switch renames a link (no nginx reload), see flashfit_ops/execute/proxy.py.
SOCKET_DIR = "/run/flashfit"
STATE_DIR = ".flashfit"
# How long `docker stop` waits for a graceful exit before SIGKILL.
STOP_TIMEOUT = 10.0

_VERSION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class Target:
    """What a deploy brings up: a version (image tag), its deploy id and how many replicas."""

    version: str
    deploy_id: str
    replicas: int = 1


def valid_version(version: str) -> bool:
    """A version is a Docker tag: letters, digits, _ . - (at most 128, not starting with . or -)."""
    return bool(_VERSION.match(version))


def image_ref(config: Config, version: str) -> str:
    return f"{config.server.image}:{version}"


def other_color(color: str | None) -> str:
    return "green" if color == "blue" else "blue"


def backend_name(project: str, color: str, replica: int, deploy_id: str) -> str:
    return f"{project}-backend-{color}-{replica}-{deploy_id}"


def proxy_name(project: str) -> str:
    return f"{project}-proxy"


def state_dir(config: Config) -> Path:
    return config.base_dir / STATE_DIR


def proxy_dir(config: Config) -> Path:
    return state_dir(config) / "proxy"


def sockets_dir(config: Config) -> Path:
    return state_dir(config) / "sockets"


def backend_socket(name: str) -> str:
    """The file name of a backend container's Unix socket in the sockets folder."""
    return f"{name}.sock"


def slot_socket(slot: int) -> str:
    """The file name of replica slot `slot` (1-based) in the sockets folder."""
    return f"slot-{slot}.sock"


def volume_name(config: Config, source: str) -> str:
    """Named volumes are per project, so two projects on one engine never share data."""
    return f"{config.project}_{source}"


def project_labels(config: Config, role: str) -> dict[str, str]:
    return {LABEL_PROJECT: config.project, LABEL_ROLE: role}


def backend_mounts(config: Config) -> tuple[Mount, ...]:
    """The service's mounts (flashfit_ops/service_spec.py), its volumes named per project."""
    return tuple(
        replace(m, source=volume_name(config, m.source)) if m.kind == "volume" else m
        for m in service_spec.backend_mounts(config)
    )


def backend_spec(config: Config, target: Target, color: str, replica: int) -> ContainerSpec:
    """The backend service (flashfit_ops/service_spec.py, which the compose and stack files render
    too) as one replica of one deploy: its name, image, version, socket and identity labels."""
    service = service_spec.backend_service(config)
    labels = dict(service.labels)
    labels.update(
        {
            LABEL_COLOR: color,
            LABEL_VERSION: target.version,
            LABEL_REPLICA: str(replica),
            LABEL_DEPLOY: target.deploy_id,
        }
    )
    name = backend_name(config.project, color, replica, target.deploy_id)
    env = dict(service.env)
    env["APP_VERSION"] = target.version
    env["FLASHFIT_SOCKET"] = f"{SOCKET_DIR}/{backend_socket(name)}"
    return ContainerSpec(
        name=name,
        image=image_ref(config, target.version),
        color=color,
        version=target.version,
        replica=replica,
        deploy_id=target.deploy_id,
        network=config.network_name,
        labels=dict(sorted(labels.items())),
        env=dict(sorted(env.items())),
        mounts=(*backend_mounts(config), Mount(str(sockets_dir(config)), SOCKET_DIR, "bind")),
        memory=service.limits.memory,
        cpus=service.limits.cpus,
        port=service.port,
        gpus=gpu_request(config),
        healthcheck=service.healthcheck,
        logging=service.logging,
    )


# -- GPUs -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineGpus:
    """What the Docker engine says about GPUs: its runtimes, and the GPUs it discovered through
    CDI (Docker 27+ lists them in `docker info`); the backend reads it, nothing here asks."""

    runtimes: tuple[str, ...] = ()
    cdi_gpus: tuple[str, ...] = ()


def gpu_request(config: Config) -> GpuRequest | None:
    gpus = config.resources.gpus
    if gpus is None:
        return None
    if isinstance(gpus, list):
        return GpuRequest(device_ids=tuple(gpus))
    return GpuRequest(count=int(gpus))


# Swarm nodes that have GPUs carry this label (`docker node update --label-add flashfit.gpu=true
# NODE`); the stack's backend is placed only on them and reserves the generic resource "gpu".
GPU_NODE_LABEL = "flashfit.gpu"
GPU_RESOURCE_KIND = "gpu"


def swarm_gpu_problem(config: Config, labelled_nodes: int) -> str | None:
    if config.resources.gpus is None or labelled_nodes:
        return None
    return f"resources.gpus is set but no Swarm node is labelled {GPU_NODE_LABEL}=true"


def gpu_problem(config: Config, engine: EngineGpus) -> str | None:
    """Why this engine cannot give the backend its GPUs (checked before any step runs), or None.

    Docker creates a container with a GPU request it cannot honour and only fails at start (or
    starts it without the GPU under some runtimes): a deploy would roll back late and obscurely."""
    request = gpu_request(config)
    if request is None:
        return None
    if "nvidia" not in engine.runtimes and not engine.cdi_gpus:
        return (
            f"resources.gpus is {config.resources.gpus!r} but the Docker engine reports no NVIDIA runtime "
            f"(runtimes: {', '.join(engine.runtimes) or 'none'}) and no CDI GPUs"
        )
    if engine.cdi_gpus and "nvidia" not in engine.runtimes:
        # CDI names each GPU by index and by UUID ("nvidia.com/gpu=0", "…=GPU-3f2a…").
        missing = [i for i in request.device_ids if i not in engine.cdi_gpus]
        if missing:
            return f"resources.gpus names {', '.join(missing)}, which the engine does not have ({', '.join(engine.cdi_gpus)})"
        count = sum(1 for i in engine.cdi_gpus if i.isdigit()) or len(engine.cdi_gpus)
        if request.count > count:
            return f"resources.gpus asks for {request.count} GPUs per container; the engine has {count}"
    return None


def proxy_spec(config: Config) -> ProxySpec:
    tls_files: list[Mount] = []
    if config.tls.enabled:

        for path in (config.tls.certificate, config.tls.key):
            if path:
                host = config.resolve_path(path)
                tls_files.append(Mount(str(host), f"{CONTAINER_SSL_DIR}/{host.name}", "bind", read_only=True))
    return ProxySpec(
        name=proxy_name(config.project),
        image=config.services.nginx.image,
        network=config.network_name,
        config_dir=str(proxy_dir(config)),
        sockets_dir=str(sockets_dir(config)),
        http_port=config.ports.http,
        https_port=config.ports.https if config.tls.enabled else None,
        tls_files=tuple(tls_files),
        labels=dict(sorted(project_labels(config, ROLE_PROXY).items())),
    )


def base_steps(config: Config, observed: Observed) -> list[Step]:
    steps: list[Step] = [EnsureNetwork(config.network_name)]
    for mount in backend_mounts(config):
        if mount.kind == "volume":
            steps.append(EnsureVolume(mount.source))
    return steps


def upstreams(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(names)


def slot_layout(config: Config, proxy: ProxyState, replicas: int) -> tuple[int, str]:
    """How many slots the upstream lists after a switch to `replicas` containers, and why nginx
    must reload for it ("" when relinking the slots suffices). The upstream lists a fixed number
    of slots (deploy.max_replicas, more only for more replicas), so a replica-count change within
    it is relinks only; a proxy that is not running is started on the file (no reload)."""
    wanted = max(config.deploy.max_replicas, replicas)
    if not proxy.running or proxy.legacy:
        return wanted, ""
    current = proxy.slot_count
    if current == 0:
        return wanted, "nginx.conf lists no replica slots"
    if current < replicas:
        return wanted, f"{replicas} replicas need more than the {current} slots nginx.conf lists"
    if current < config.deploy.max_replicas:
        return wanted, f"nginx.conf lists {current} slot(s), deploy.max_replicas asks for {wanted}"
    if not proxy.settings_current:
        return current, "the proxy settings changed (TLS, rate limit or the nginx template)"
    return current, ""


def traffic_step(
    config: Config,
    proxy_running: bool,
    new: tuple[str, ...],
    previous: tuple[str, ...],
    *,
    standby: tuple[str, ...] = (),
    slot_count: int = 0,
    reload: str = "",
) -> Step:
    """Point the slots at `new`: a switch when the proxy runs, else start the proxy on `new`."""
    if proxy_running:
        return SwitchUpstreams(slots=new, previous=previous, standby=standby, slot_count=slot_count, reload=reload)
    return EnsureProxy(spec=proxy_spec(config), slots=new, slot_count=slot_count)


def warm_window(config: Config) -> bool:
    """Whether the previous version stays running, out of rotation, through the monitor window."""
    return config.deploy.warm_standby and config.deploy.monitor_window > 0


def window_behaviour(config: Config) -> str:
    """One line for dry runs: what a failure inside the monitor window does with this config."""
    window = config.deploy.monitor_window
    if window <= 0:
        return "no monitor window (deploy.monitor_window: 0): the previous version is stopped right after the switch"
    if warm_window(config):
        return (
            f"monitor window {window:g}s: the previous version stays running, out of rotation, behind the standby slots; "
            "a failure in the window moves traffic back by relinking the slots (no cold start)"
        )
    return (
        f"monitor window {window:g}s: the previous version is stopped at the switch (deploy.warm_standby: false); "
        "a failure in the window starts it again (a cold start: no service until it is ready)"
    )


def cutover(config: Config, proxy: ProxyState, new: tuple[str, ...], old: tuple[str, ...]) -> list[Step]:
    """Gate the new containers, move every slot to them, watch them through the monitor window,
    and only then drain the old ones, which meanwhile stay running behind the standby slots
    (deploy.warm_standby): a failure in the window is a relink back, no cold start. Opted out,
    the old ones are drained right after the switch."""
    switching = proxy.running and bool(old)
    count, reload = slot_layout(config, proxy, len(new))
    warm = warm_window(config) and switching
    steps: list[Step] = [
        WaitReady(names=new, deadline=config.deploy.deadline),
        traffic_step(config, switching, new, old, standby=old if warm else (), slot_count=count, reload=reload),
    ]
    window = config.deploy.monitor_window
    monitor = Monitor(names=new, window=window, fallback=old, warm=warm) if window > 0 else None
    if warm:
        assert monitor is not None  # a warm window is a monitor window
        steps += [monitor, ReleaseStandby(names=new, previous=old), Drain(names=old, timeout=config.deploy.drain_timeout)]
        return steps
    if old:
        steps.append(Drain(names=old, timeout=config.deploy.drain_timeout))
    if monitor is not None:
        steps.append(monitor)
    return steps


def retained_generations(observed: Observed) -> list[list[ContainerState]]:
    """Stopped, not-live containers grouped by deploy, newest first."""
    live = set(observed.live_names)
    groups: dict[str, list[ContainerState]] = {}
    for container in observed.containers:
        if container.name not in live and not container.running:
            groups.setdefault(container.deploy_id, []).append(container)
    return [sorted(groups[d], key=lambda c: c.replica) for d in sorted(groups, reverse=True)]


def kept_for_rollback(config: Config, observed: Observed, previous: tuple[str, ...], going_live: str) -> set[str]:
    """The containers a finished deploy keeps (stopped) for `flashfit rollback`: those of the
    previous live version and of the newest retained ones, deploy.keep_versions versions in all;
    a version equal to the one going live is not worth keeping."""
    generations = [[name for name in previous]] if previous else []
    generations += [[c.name for c in generation] for generation in retained_generations(observed)]
    keep: set[str] = set()
    versions: set[str] = set()
    for names in generations:
        found = [observed.by_name(n) for n in names]
        version = next((c.version for c in found if c is not None), "")
        if version == going_live or version in versions:
            continue
        if len(versions) >= config.deploy.keep_versions:
            break
        versions.add(version)
        keep.update(names)
    return keep


def retention_cleanup(observed: Observed, keep: set[str]) -> list[Step]:
    """After a successful switch: remove stopped containers that are neither live nor kept."""
    live = set(observed.live_names)
    steps: list[Step] = []
    for container in observed.containers:
        if container.name in live or container.name in keep or container.running:
            continue
        steps.append(RemoveContainer(container.name, reason=f"older retained version {container.version}"))
    return steps


def proxy_view(observed: Observed) -> ProxyState:
    return observed.proxy
