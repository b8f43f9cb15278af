"""What runs, as plain data. Built from the engine (container labels) and the proxy folder by
flashfit_ops.execute.observe; strategies read it and never talk to the engine themselves."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

RUNNING = "running"


@dataclass(frozen=True)
class ContainerState:
    """One backend container of the project, as its labels and the engine describe it."""

    name: str
    color: str
    version: str
    replica: int
    deploy_id: str
    state: str = RUNNING  # created | running | restarting | paused | exited | dead
    image: str = ""
    # "ready" / "unready" when probed (status does), "unknown" otherwise; never needed by plans.
    health: str = "unknown"
    exit_code: int | None = None

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def upstream(self) -> str:
        return upstream_of(self.name)


@dataclass(frozen=True)
class ProxyState:
    """The proxy container and its config folder (.flashfit/proxy)."""

    name: str
    exists: bool = False
    state: str = "missing"  # missing | created | running | exited | ...
    # Container names in the upstream block nginx last reloaded successfully (applied.json).
    applied: tuple[str, ...] = ()
    # Container names in nginx.conf on disk; differs from `applied` after a crash mid-switch.
    config: tuple[str, ...] = ()
    config_present: bool = False
    # Temporary files a crashed switch left in the proxy folder.
    stray_files: tuple[str, ...] = ()
    # Every container that ever took traffic (recent ones), when the proxy folder records it:
    # a container that is not live and never served is a leftover of a deploy that never switched.
    served: tuple[str, ...] | None = None
    # A proxy created before traffic went through socket slots (no sockets folder mounted): the
    # next deploy replaces it at its switch, a moment without a listener on the port, once.
    legacy: bool = False
    # How many replica slots nginx.conf lists, and whether it is what this config renders for that
    # count (False: TLS, rate limit or the template changed, so the next switch reloads nginx).
    slot_count: int = 0
    settings_current: bool = True
    # What the standby slots point to (the previous version through a monitor window).
    standby: tuple[str, ...] = ()

    @property
    def running(self) -> bool:
        return self.exists and self.state == RUNNING

    @property
    def consistent(self) -> bool:
        return self.config_present and self.config == self.applied and not self.stray_files


@dataclass(frozen=True)
class Observed:
    project: str
    containers: tuple[ContainerState, ...] = ()
    proxy: ProxyState = field(default_factory=lambda: ProxyState(name=""))
    network_exists: bool = False
    # The keeper container (flashfit_ops/execute/keeper_main.py): missing | running | exited ...
    keeper_state: str = "missing"

    def by_name(self, name: str) -> ContainerState | None:
        for container in self.containers:
            if container.name == name:
                return container
        return None

    @property
    def live(self) -> tuple[ContainerState, ...]:
        """Containers nginx sends traffic to (last applied config), that still exist."""
        found = (self.by_name(name) for name in dict.fromkeys(self.proxy.applied))  # a repair may link two slots to one
        return tuple(sorted((c for c in found if c is not None), key=lambda c: (c.replica, c.name)))

    @property
    def live_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.live)

    @property
    def live_color(self) -> str | None:
        colors = {c.color for c in self.live}
        if len(colors) == 1:
            return colors.pop()
        return "mixed" if colors else None

    @property
    def live_version(self) -> str | None:
        versions = {c.version for c in self.live}
        if len(versions) == 1:
            return versions.pop()
        return "mixed" if versions else None

    @property
    def newest_live_deploy(self) -> str:
        return max((c.deploy_id for c in self.live), default="")

    def not_live(self) -> tuple[ContainerState, ...]:
        live = set(self.live_names)
        return tuple(c for c in self.containers if c.name not in live)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["live"] = list(self.live_names)
        out["live_color"] = self.live_color
        out["live_version"] = self.live_version
        return out


def upstream_of(name: str, port: int = 8080) -> str:
    return f"{name}:{port}"


def name_of_upstream(upstream: str) -> str:
    return upstream.rsplit(":", 1)[0]
