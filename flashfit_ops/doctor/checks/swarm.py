"""Swarm state for `target: swarm`: nodes ready and active, each service converged, and tasks
that failed recently (the document's `docker service ps` reading, done for you)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Callable

from flashfit_ops.doctor.context import DoctorContext
from flashfit_ops.doctor.registry import check
from flashfit_ops.doctor.swarm_tasks import local_task_container, probe_from, service_tasks, task_address
from flashfit_ops.doctor.result import FAILURE, WARNING, Finding, combine, failure, ok, warning

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


# -- the swarm's own view, for checks that read containers on this engine ----------------------------
# On `target: swarm` the project's containers are tasks spread over nodes this host cannot see
# into, and their overlay addresses are unreachable from here. These checks answer from the
# swarm instead (tasks per node, task health, the proxy service), or probe from inside a task.


def tasks_per_node(ctx: DoctorContext) -> Finding:
    """Every service's wanted tasks: where they run, and the ones that do not."""
    client = ctx.docker()
    nodes = {n.id: (n.attrs["Description"]["Hostname"], n.attrs["Status"]["State"]) for n in client.nodes.list()}
    parts: list[tuple[str, str, str | None]] = []
    layout: dict[str, list[str]] = {}
    for service in client.services.list(filters={"label": f"com.docker.stack.namespace={ctx.project}"}):
        name = service.attrs["Spec"]["Name"]
        for task in service_tasks(client, name):
            node, node_state = nodes.get(task.get("NodeID", ""), ("unassigned", "unknown"))
            state = task["Status"]["State"]
            if state == "running" and node_state == "ready":
                layout.setdefault(name, []).append(node)
            elif node_state != "ready":
                parts.append((FAILURE, f"{name}: task on node {node}, which is {node_state}", "Swarm reschedules it; `docker node ls`"))
            elif state in ("new", "pending", "assigned", "accepted", "preparing", "ready", "starting"):
                parts.append((WARNING, f"{name}: a task is {state} on {node}", "wait for it, or `flashfit status`"))
            else:
                parts.append((FAILURE, f"{name}: a task is {state} on {node}: {task['Status'].get('Err') or ''}".rstrip(": "), "`flashfit logs`"))
    if not layout:
        parts.append((FAILURE, "no task of this project runs in the swarm", "run `flashfit deploy`"))
    summary = "; ".join(f"{name}: {len(on)} on {', '.join(sorted(on))}" for name, on in sorted(layout.items()))
    return combine(parts, summary, tasks=layout)


def backend_tasks_ready(ctx: DoctorContext) -> Finding:
    """/ready of every running backend task, probed from inside one of them (task addresses
    live on the overlay network, which only tasks reach)."""
    client = ctx.docker()
    name = f"{ctx.project}_backend"
    tasks = service_tasks(client, name, running_only=True)
    if not tasks:
        return failure(f"{name}: no running task", "`flashfit status` lists the tasks and their errors")
    inside = local_task_container(client, name)
    if inside is None:
        return ok(f"{name}: {len(tasks)} running task(s), none on this node to probe from (Swarm's healthcheck gates them)")
    path = ctx.config.healthcheck.readiness_path
    parts: list[tuple[str, str, str | None]] = []
    probed = {}
    for task in tasks:
        address = task_address(task)
        if address is None:
            continue
        probed[address], _ = probe_from(ctx.exec, inside, address, path)
        if not probed[address]:
            parts.append((FAILURE, f"{name}: task {task['ID'][:12]} at {address} is not ready", "`flashfit logs`; Swarm replaces it after its healthcheck retries"))
    return combine(parts, f"{name}: {sum(probed.values())} task(s) ready, probed from inside the overlay", probed=probed)


def proxy_service(ctx: DoctorContext) -> Finding:
    """The proxy is a service: its tasks run, and `nginx -t` passes in the one on this node."""
    client = ctx.docker()
    name = f"{ctx.project}_nginx"
    running = service_tasks(client, name, running_only=True)
    if not running:
        return failure(f"proxy service {name}: no running task", "`flashfit deploy`; `docker service ps` shows why")
    inside = local_task_container(client, name)
    if inside is None:
        return ok(f"proxy service {name}: {len(running)} task(s) running (none on this node to run `nginx -t` in)")
    result = ctx.exec(inside, ["nginx", "-t"])
    if result.exit_code != 0:
        return failure(f"`nginx -t` fails in {name}: {result.text().strip()[-200:]}", "`flashfit render` and redeploy")
    return ok(f"proxy service {name}: {len(running)} task(s) running, `nginx -t` passes")


def published_by_service(ctx: DoctorContext) -> Finding:
    """Ports are the proxy service's, bound by Swarm on the nodes that run it."""
    client = ctx.docker()
    from flashfit_ops.engine.errors import NotFound

    try:
        spec = client.services.get(f"{ctx.project}_nginx").attrs.get("Endpoint", {}).get("Ports") or []
    except NotFound:
        return warning("the proxy service does not exist yet", "run `flashfit deploy`")
    published = {p.get("PublishedPort") for p in spec}
    if ctx.config.ports.http not in published:
        return failure(f"the proxy service does not publish port {ctx.config.ports.http}", "redeploy: `flashfit deploy`")
    return ok(f"port {ctx.config.ports.http} published by the proxy service ({ctx.config.swarm.publish_mode} mode)")


def not_on_swarm(reason: str) -> Callable[[DoctorContext], Finding]:
    return lambda _ctx: ok(f"target: swarm: {reason}")


SWARM_VARIANTS: dict[str, Callable[[DoctorContext], Finding]] = {
    "containers": tasks_per_node,
    "backend-health": backend_tasks_ready,
    "nginx-config": proxy_service,
    "ports": published_by_service,
    "upstream": not_on_swarm("nginx resolves the backend service per request: no upstream list to drift"),
    "resources": not_on_swarm("per-task usage is on each node (`docker stats` there); limits are in the service spec"),
    "stores": not_on_swarm("the vector stores live on each node's volume; check them on the nodes"),
    "store-bench": not_on_swarm("run it on a node: `docker exec` into a backend task"),
    "inference": not_on_swarm("inference metrics are per task; Prometheus scrapes them"),
    "disk": not_on_swarm("data and model volumes are per node; check free disk on each node"),
}


def for_target(name: str, func: Callable[[DoctorContext], Finding], ctx: DoctorContext) -> Callable[[DoctorContext], Finding]:
    """The check to run: its swarm variant when the project runs on a swarm."""
    if getattr(getattr(ctx, "config", None), "target", None) == "swarm":
        return SWARM_VARIANTS.get(name, func)
    return func
