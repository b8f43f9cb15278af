"""Monitoring, when monitoring.enabled: Prometheus answers, every live replica (what the proxy's
slots point to) is an `up` scrape target, and which alerts are firing."""

from __future__ import annotations

from flashfit_ops.doctor.context import DoctorContext
from flashfit_ops.doctor.registry import check
from flashfit_ops.doctor.result import FAILURE, WARNING, Finding, combine, failure, ok
from flashfit_ops.monitoring.api import MonitoringView, read_view

TARGETS_HINT = "`flashfit deploy` (or `flashfit status`) rewrites .flashfit/monitoring/prometheus/targets/backend.json"


def evaluate(view: MonitoringView, live: list[str], project: str, alertmanager_url: str | None) -> Finding:
    if not view.up:
        return failure(
            f"Prometheus does not answer on {view.url} ({view.error})",
            f"`flashfit deploy` starts it; `docker logs {project}-prometheus` says why it stopped",
            url=view.url,
        )
    parts: list[tuple[str, str, str | None]] = []
    for name in live:
        health = view.targets.get(name)
        if health is None:
            parts.append((FAILURE, f"live replica {name} is not a scrape target", TARGETS_HINT))
        elif health != "up":
            error = view.target_errors.get(name, "no scrape yet")
            parts.append((FAILURE, f"live replica {name} is {health} in Prometheus ({error})", f"`docker logs {name}`"))
    where = f" (Alertmanager: {alertmanager_url})" if alertmanager_url else ""
    for alert in view.firing:
        parts.append((WARNING, f"alert {alert['name']} firing ({alert['severity']}): {alert['summary']}", f"see {view.url}/alerts{where}"))
    summary = f"Prometheus up; {len(live)}/{len(live)} live replicas are up targets; no alerts firing"
    return combine(parts, summary, url=view.url, targets=view.targets, firing=[a["name"] for a in view.firing])


@check("monitoring", "Prometheus up, every live replica an `up` target, alerts firing (monitoring.enabled)", timeout=10.0)
def monitoring(ctx: DoctorContext) -> Finding:
    config = ctx.config
    if not config.monitoring.enabled:
        return ok("monitoring is off (monitoring.enabled: false)")
    if config.target == "swarm":
        return ok("monitoring under target: swarm runs from the rendered stack; not checked here")
    from flashfit_ops.proxy_files import read_files
    from flashfit_ops.plan.common import sockets_dir

    live = [n for n in dict.fromkeys(read_files(ctx.proxy_dir, sockets_dir(config)).applied) if n]
    view = read_view(config, transport=ctx._http_transport)
    alertmanager = f"http://127.0.0.1:{config.ports.alertmanager}" if config.services.alertmanager.enabled else None
    return evaluate(view, live, config.project, alertmanager)
