"""What Prometheus says, over its HTTP API on 127.0.0.1:<ports.prometheus>: whether it is up,
the backend job's targets, and the alerts firing. Used by `flashfit status` and the doctor.
The transport is a seam: tests of the logic hand in an httpx.MockTransport."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from flashfit_ops.config.model import Config

BACKEND_JOB = "flashfit-backend"


@dataclass
class MonitoringView:
    url: str
    up: bool
    error: str = ""
    # Nothing listens on the port (Prometheus not running), as against slow or not ready yet.
    refused: bool = False
    # {container: "up" | "down" | "unknown"} for the backend job's active targets.
    targets: dict[str, str] = field(default_factory=dict)
    target_errors: dict[str, str] = field(default_factory=dict)
    firing: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prometheus_url(config: Config) -> str:
    return f"http://127.0.0.1:{config.ports.prometheus}"


def read_view(config: Config, *, timeout: float = 3.0, transport: Any = None) -> MonitoringView:
    import httpx

    url = prometheus_url(config)
    view = MonitoringView(url=url, up=False)
    try:
        with httpx.Client(base_url=url, timeout=timeout, transport=transport) as client:
            ready = client.get("/-/ready")
            if ready.status_code != 200:
                view.error = f"/-/ready answered HTTP {ready.status_code}"
                return view
            view.up = True
            active = client.get("/api/v1/targets", params={"state": "active"}).json()["data"]["activeTargets"]
            alerts = client.get("/api/v1/alerts").json()["data"]["alerts"]
    except httpx.HTTPError as error:
        view.refused = isinstance(error, httpx.ConnectError)
        view.error = f"{type(error).__name__} on {url}"
        return view
    except (ValueError, KeyError, TypeError):
        view.error = "Prometheus answered something that is not its API"
        return view
    for target in active:
        labels = target.get("labels") or {}
        if labels.get("job") != BACKEND_JOB:
            continue
        name = labels.get("container") or labels.get("instance", "?")
        view.targets[name] = str(target.get("health", "unknown"))
        if target.get("lastError"):
            view.target_errors[name] = str(target["lastError"])
    for alert in alerts:
        if alert.get("state") == "firing":
            labels = alert.get("labels") or {}
            view.firing.append({
                "name": str(labels.get("alertname", "?")),
                "severity": str(labels.get("severity", "")),
                "summary": str((alert.get("annotations") or {}).get("summary", "")),
                "since": str(alert.get("activeAt", "")),
            })
    return view


def status_section(config: Config, live: list[str] | set[str]) -> dict[str, Any] | None:
    """`flashfit status`'s monitoring entry: None when monitoring is off."""
    if not config.monitoring.enabled:
        return None
    view = read_view(config)
    section = view.to_dict()
    section["missing"] = sorted(n for n in live if view.targets.get(n) != "up") if view.up else sorted(live)
    return section
