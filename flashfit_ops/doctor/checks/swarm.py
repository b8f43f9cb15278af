"""Swarm state for `target: swarm`: nodes ready and active, each service converged, and tasks
that failed recently (the document's `docker service ps` reading, done for you)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from flashfit_ops.doctor.context import DoctorContext
from flashfit_ops.doctor.registry import check
from flashfit_ops.doctor.result import FAILURE, WARNING, Finding, combine, ok

RECENT = timedelta(minutes=15)
FAILED_TASK_STATES = frozenset({"failed", "rejected", "orphaned"})


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    # Docker writes nanoseconds; datetime takes microseconds.
    head, _, rest = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(rest + '000000')[:6]}+00:00")


def evaluate(info: dict, nodes: list[dict], services: list[dict], now: datetime) -> Finding:
    """info: `docker info`; nodes: node attrs; services: {name, desired, running, update_state, tasks}."""
    swarm = info.get("Swarm", {})
    if swarm.get("LocalNodeState") != "active":
        return Finding(FAILURE, "this engine is not part of a swarm", "run `docker swarm init` or join one, then `flashfit deploy`")
    parts: list[tuple[str, str, str | None]] = []
    for node in nodes:
        name = node["Description"]["Hostname"]
        state, availability = node["Status"]["State"], node["Spec"].get("Availability", "active")
        if state != "ready":
            parts.append((FAILURE, f"node {name} is {state}", "check the node's engine and network; `docker node ls`"))
        elif availability != "active":
            parts.append((WARNING, f"node {name} is {availability}", "`docker node update --availability active` when it should take tasks"))
    if not services:
        parts.append((WARNING, "no services of this project run in the swarm", "run `flashfit deploy`"))
    for service in services:
        name = service["name"]
        if service["update_state"] in ("paused", "rollback_paused"):
            parts.append((FAILURE, f"{name}: update {service['update_state']}", "`flashfit rollback` or deploy a fixed version"))
        elif service["update_state"] == "rollback_completed":
            parts.append((WARNING, f"{name}: Swarm rolled the last update back", "`flashfit history` and `flashfit logs` show why it failed"))
        if service["running"] < service["desired"]:
            parts.append((FAILURE, f"{name}: {service['running']}/{service['desired']} tasks running", "`flashfit status` lists the tasks and their errors"))
        failed = [
            t for t in service["tasks"]
            if t["Status"]["State"] in FAILED_TASK_STATES and (_time(t["Status"].get("Timestamp")) or now) > now - RECENT
        ]
        if failed:
            error = failed[0]["Status"].get("Err") or failed[0]["Status"]["State"]
            parts.append((WARNING, f"{name}: {len(failed)} task(s) failed in the last 15 min ({error})", "`flashfit logs` shows why"))
    summary = f"{len(nodes)} node(s) ready, {len(services)} service(s) converged"
    return combine(parts, summary, nodes=len(nodes), services=[s["name"] for s in services])


@check("swarm", "Swarm nodes ready, services converged, recently failed tasks (target: swarm)", timeout=10.0)
def swarm(ctx: DoctorContext) -> Finding:
    if ctx.config.target != "swarm":
        return ok("not a swarm target (target: local)")
    client = ctx.docker()
    info = client.info()
    if info.get("Swarm", {}).get("LocalNodeState") != "active":
        return evaluate(info, [], [], ctx.now())
    services = []
    for service in client.services.list(filters={"label": f"com.docker.stack.namespace={ctx.project}"}):
        spec = service.attrs["Spec"]
        image = spec["TaskTemplate"]["ContainerSpec"]["Image"]
        tasks = service.tasks()
        running = [t for t in tasks if t["DesiredState"] == "running" and t["Status"]["State"] == "running" and t["Spec"]["ContainerSpec"]["Image"] == image]
        services.append(
            {
                "name": spec["Name"],
                "desired": spec.get("Mode", {}).get("Replicated", {}).get("Replicas", 0),
                "running": len(running),
                "update_state": (service.attrs.get("UpdateStatus") or {}).get("State"),
                "tasks": tasks,
            }
        )
    nodes: list[dict[str, Any]] = [node.attrs for node in client.nodes.list()]
    return evaluate(info, nodes, services, ctx.now())
