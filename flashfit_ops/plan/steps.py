"""The steps of a plan: plain, frozen data. A strategy returns a list of them; the executor
carries them out (and undoes the ones done when a later one fails). Nothing here touches Docker.

Secrets are never part of a plan: the executor adds them to a container's environment at run time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from flashfit_ops.service_spec import CONTAINER_PORT, Healthcheck, Logging, Mount  # Mount: re-exported for the steps' users


@dataclass(frozen=True)
class GpuRequest:
    """GPUs for one container, as Docker's DeviceRequest has them: a count or device ids."""

    count: int = 0
    device_ids: tuple[str, ...] = ()
    driver: str = "nvidia"
    capabilities: tuple[str, ...] = ("gpu",)


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create a backend container (without its secrets)."""

    name: str
    image: str
    color: str
    version: str
    replica: int
    deploy_id: str
    network: str
    labels: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    memory: str | None = None
    cpus: float | None = None
    port: int = CONTAINER_PORT
    gpus: GpuRequest | None = None
    healthcheck: Healthcheck | None = None
    logging: Logging | None = None


@dataclass(frozen=True)
class ProxySpec:
    name: str
    image: str
    network: str
    config_dir: str  # host folder mounted at /etc/flashfit in the proxy
    http_port: int
    sockets_dir: str = ""  # host folder of the backends' and slots' Unix sockets, at /run/flashfit
    https_port: int | None = None
    tls_files: tuple[Mount, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    kind: ClassVar[str] = "step"

    def describe(self) -> str:  # pragma: no cover - every step overrides it
        return self.kind

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "description": self.describe()}
        for f in fields(self):
            value = getattr(self, f.name)
            data[f.name] = asdict(value) if hasattr(value, "__dataclass_fields__") else _plain(value)
        return data


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return value


@dataclass(frozen=True)
class EnsureNetwork(Step):
    kind: ClassVar[str] = "ensure_network"
    name: str

    def describe(self) -> str:
        return f"ensure network {self.name}"


@dataclass(frozen=True)
class EnsureVolume(Step):
    kind: ClassVar[str] = "ensure_volume"
    name: str

    def describe(self) -> str:
        return f"ensure volume {self.name}"


@dataclass(frozen=True)
class CleanProxyFiles(Step):
    """Remove temporary files a crashed switch left in the proxy folder."""

    kind: ClassVar[str] = "clean_proxy_files"
    files: tuple[str, ...]

    def describe(self) -> str:
        return f"remove {len(self.files)} leftover proxy file(s): {', '.join(self.files)}"


@dataclass(frozen=True)
class StartContainer(Step):
    """Create and start a new backend container."""

    kind: ClassVar[str] = "start_container"
    spec: ContainerSpec

    def describe(self) -> str:
        s = self.spec
        return f"start {s.name} ({s.image}, {s.color}, replica {s.replica})"


@dataclass(frozen=True)
class RestartContainer(Step):
    """Start an existing stopped container again (a retained version, for rollback)."""

    kind: ClassVar[str] = "restart_container"
    name: str

    def describe(self) -> str:
        return f"start retained container {self.name}"


@dataclass(frozen=True)
class WaitReady(Step):
    """The health gate: every container must become ready before the deadline."""

    kind: ClassVar[str] = "wait_ready"
    names: tuple[str, ...]
    deadline: float

    def describe(self) -> str:
        return f"wait until ready (deadline {self.deadline:g}s): {', '.join(self.names)}"


def describe_slots(slots: tuple[str, ...], count: int = 0) -> str:
    """`slots` are the containers in slot order; the upstream's `count` slots cycle over them."""
    if not slots:
        return "nothing"
    count = max(count, len(slots))
    return f"{count} slot{'s' if count != 1 else ''} over {', '.join(slots)}"


def describe_reload(reload: str) -> str:
    # Measured (benchmarks/bench_zero_downtime.py): a reload closes idle keep-alive client
    # connections, and clients that reuse one at that moment see a failed request.
    return f"; nginx reload ({reload}): idle keep-alive client connections are closed" if reload else ""


@dataclass(frozen=True)
class EnsureProxy(Step):
    """Create (or start) the proxy with one replica slot per entry of `slots` (slot n -> the
    container slots[n-1]); when it already runs, the same as a switch to `slots`."""

    kind: ClassVar[str] = "ensure_proxy"
    spec: ProxySpec
    slots: tuple[str, ...]
    slot_count: int = 0  # how many slots the upstream lists (0: the executor's choice)

    def describe(self) -> str:
        return f"start proxy {self.spec.name} on port {self.spec.http_port}: {describe_slots(self.slots, self.slot_count)}"


@dataclass(frozen=True)
class SwitchUpstreams(Step):
    """Point the upstream's `slot_count` slots at the containers `slots` (slot n -> slots[(n-1) %
    len]), and its standby (backup) slots at `standby` (empty: at `slots`): atomic renames of links
    in the sockets folder, then a request through each container's slot and the proxy. nginx is
    reloaded only when its config must change: the plan names why in `reload`. Undone by pointing
    every slot, standby included, back at `previous`."""

    kind: ClassVar[str] = "switch_upstreams"
    slots: tuple[str, ...]
    previous: tuple[str, ...]
    standby: tuple[str, ...] = ()
    slot_count: int = 0  # 0: keep the current count (at least deploy.max_replicas and len(slots))
    reload: str = ""

    def describe(self) -> str:
        text = f"switch traffic: {describe_slots(self.slots, self.slot_count)} (from {', '.join(self.previous) or 'nothing'})"
        if self.standby and self.standby != self.slots:
            verb = "stays" if len(self.standby) == 1 else "stay"
            text += f"; {', '.join(self.standby)} {verb} running, out of rotation, behind the standby slots"
        return text + describe_reload(self.reload)


@dataclass(frozen=True)
class ReleaseStandby(Step):
    """The monitor window closed clean: the standby slots leave the previous version and point at
    the live containers `names`, so the previous version can be drained and stopped."""

    kind: ClassVar[str] = "release_standby"
    names: tuple[str, ...]
    previous: tuple[str, ...]

    def describe(self) -> str:
        return f"window closed clean: standby slots -> {', '.join(self.names)} (from {', '.join(self.previous)})"


@dataclass(frozen=True)
class Drain(Step):
    """The old containers no longer get new connections (no slot points at them): SIGTERM each,
    let it finish its in-flight requests for up to `timeout` seconds (then it is killed), and keep
    it, stopped. Undone by starting it again and gating it."""

    kind: ClassVar[str] = "drain"
    names: tuple[str, ...]
    timeout: float

    def describe(self) -> str:
        return f"drain and stop {', '.join(self.names)} (grace up to {self.timeout:g}s)"


@dataclass(frozen=True)
class StopContainer(Step):
    """Stop a container (kept, so it can be started again). Undone by starting it and gating it.
    Plans stop containers that served through Drain; this is for anything else."""

    kind: ClassVar[str] = "stop_container"
    name: str
    timeout: float = 10.0

    def describe(self) -> str:
        return f"stop {self.name}"


@dataclass(frozen=True)
class RemoveContainer(Step):
    """Remove a container (stopping it first). Irreversible: plans put these where no rollback
    can need the container any more (leftovers, or after the monitor window)."""

    kind: ClassVar[str] = "remove_container"
    name: str
    reason: str = ""

    def describe(self) -> str:
        return f"remove {self.name}" + (f" ({self.reason})" if self.reason else "")


@dataclass(frozen=True)
class Monitor(Step):
    """Watch the new containers until `window` seconds after the last switch; a death rolls back."""

    kind: ClassVar[str] = "monitor"
    names: tuple[str, ...]
    window: float
    # What a failure in the window goes back to, and whether it still runs (deploy.warm_standby).
    fallback: tuple[str, ...] = ()
    warm: bool = False

    def describe(self) -> str:
        text = f"monitor {', '.join(self.names)} for {self.window:g}s after the switch"
        if self.fallback and self.warm:
            text += f"; a failure moves traffic back to {', '.join(self.fallback)}, still running (no cold start)"
        elif self.fallback:
            text += f"; a failure starts {', '.join(self.fallback)} again (stopped at the switch: a cold start)"
        return text


STEP_TYPES: dict[str, type[Step]] = {
    cls.kind: cls
    for cls in (
        EnsureNetwork,
        EnsureVolume,
        CleanProxyFiles,
        StartContainer,
        RestartContainer,
        WaitReady,
        EnsureProxy,
        SwitchUpstreams,
        ReleaseStandby,
        Drain,
        StopContainer,
        RemoveContainer,
        Monitor,
    )
}


# -- lifecycle (flashfit down): kept apart so the executor's table above stays as it was ---------
@dataclass(frozen=True)
class RemoveNetwork(Step):
    kind: ClassVar[str] = "remove_network"
    name: str

    def describe(self) -> str:
        return f"remove network {self.name}"


@dataclass(frozen=True)
class RemoveVolume(Step):
    """Irreversible: the data in it is gone. Only with `flashfit down --volumes`, confirmed."""

    kind: ClassVar[str] = "remove_volume"
    name: str

    def describe(self) -> str:
        return f"remove volume {self.name} (its data is deleted)"


STEP_TYPES.update({cls.kind: cls for cls in (RemoveNetwork, RemoveVolume)})


@dataclass(frozen=True)
class EnsureKeeper(Step):
    """Run the keeper (flashfit_ops/execute/keeper_main.py) in its own container from `image`:
    it starts the proxy and the backends the slots link to again when they stop while no flashfit
    command holds the lock. Recreated when its image changed; never undone."""

    kind: ClassVar[str] = "ensure_keeper"
    name: str
    image: str
    proxy: str
    state_dir: str
    engine_socket: str
    labels: dict[str, str] = field(default_factory=dict)
    ready_path: str = "/ready"  # what a spare must answer 200 on before slots are relinked to it
    # Monitoring on: the folder of Prometheus's scrape targets file, which a failover rewrites ("" when off).
    targets_dir: str = ""

    def describe(self) -> str:
        return (
            f"ensure keeper {self.name} ({self.image}): fails a killed or stopped live backend over to a warm spare, "
            "restarts the proxy and routed backends that stop"
        )


STEP_TYPES[EnsureKeeper.kind] = EnsureKeeper


@dataclass(frozen=True)
class EnsureSpares(Step):
    """Keep warm spares of the live version (deploy.spare_replicas): create and start `start`,
    start the stopped `restart` again, gate them all on /ready, then point the standby slots at
    every ready spare (`keep` ones included), so nginx falls over to them the moment every live
    slot fails, and the keeper relinks the slots of a killed or stopped backend to them. Only then
    are `remove` (spares of an earlier version) removed. A spare that does not become ready is a
    warning, never a rollback: what serves already passed its gate."""

    kind: ClassVar[str] = "ensure_spares"
    live: tuple[str, ...]
    start: tuple[ContainerSpec, ...] = ()
    restart: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    deadline: float = 120.0

    @property
    def spares(self) -> tuple[str, ...]:
        return (*self.keep, *self.restart, *(s.name for s in self.start))

    def describe(self) -> str:
        parts = []
        if self.start:
            parts.append("start " + ", ".join(s.name for s in self.start))
        if self.restart:
            parts.append("start again " + ", ".join(self.restart))
        if self.start or self.restart:
            parts.append(f"gate (deadline {self.deadline:g}s)")
        parts.append(f"standby slots -> {', '.join(self.spares) or ', '.join(self.live)}")
        if self.remove:
            parts.append("remove earlier spare(s) " + ", ".join(self.remove))
        count = len(self.spares)
        return f"warm spare{'s' if count != 1 else ''} of the live version, out of rotation: " + "; ".join(parts)


STEP_TYPES[EnsureSpares.kind] = EnsureSpares
