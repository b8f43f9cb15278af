"""Each container of the project: running, health status, restart count, OOM-killed.

Live backends (the ones nginx sends traffic to) and the proxy must run. Stopped backends that are
not live are retained earlier versions (kept for rollback) and are fine. Without the deploy
engine's record of what is live, "live" means every backend that runs, and at least one must.
"""

from __future__ import annotations

from typing import Any

from flashfit_ops.doctor.context import (
    LABEL_COLOR,
    LABEL_ROLE,
    LABEL_VERSION,
    ROLE_BACKEND,
    ROLE_PROXY,
    DoctorContext,
    attrs_of,
    labels_of,
)
from flashfit_ops.doctor.observed import live_backend_names
from flashfit_ops.doctor.registry import check
from flashfit_ops.doctor.result import FAILURE, OK, WARNING, Finding, combine, failure

DEPLOY_HINT = "`flashfit deploy` (or `flashfit rollback`) brings the service back; `docker logs {name}` says why it stopped"
OOM_HINT = "raise resources.limits.memory, or lower WORKERS / MAX_BATCH_SIZE; `docker stats` shows usage"
UNHEALTHY_HINT = "`docker inspect --format '{{{{json .State.Health}}}}' {name}` shows the failing probe"
RESTART_HINT = "`docker logs {name}` shows why it keeps restarting"


def describe(container: Any) -> dict[str, Any]:
    attrs = attrs_of(container)
    state = attrs.get("State") or {}
    labels = labels_of(container)
    return {
        "name": getattr(container, "name", None) or attrs.get("Name", "").lstrip("/"),
        "role": labels.get(LABEL_ROLE),
        "color": labels.get(LABEL_COLOR),
        "version": labels.get(LABEL_VERSION),
        "state": state.get("Status", "unknown"),
        "health": (state.get("Health") or {}).get("Status"),
        "restart_count": int(attrs.get("RestartCount") or 0),
        "oom_killed": bool(state.get("OOMKilled")),
        "exit_code": state.get("ExitCode"),
    }


def judge(item: dict[str, Any], must_run: bool) -> tuple[str, str, str | None]:
    """(status, message, hint) for one container."""
    name = item["name"]
    running = item["state"] == "running"
    if item["oom_killed"] and (must_run or running):
        return FAILURE, f"{name} was OOM-killed", OOM_HINT
    if must_run and not running:
        return FAILURE, f"{name} is {item['state']} (exit {item['exit_code']})", DEPLOY_HINT.format(name=name)
    if running and item["health"] == "unhealthy":
        return FAILURE, f"{name} is unhealthy", UNHEALTHY_HINT.format(name=name)
    if running and item["health"] == "starting":
        return WARNING, f"{name} is still starting", "wait for its start period, then run doctor again"
    if running and item["restart_count"] > 0:
        return WARNING, f"{name} restarted {item['restart_count']} times", RESTART_HINT.format(name=name)
    return OK, f"{name} {item['state']}", None


def evaluate(containers: list[Any], live: set[str] | None) -> Finding:
    items = [describe(c) for c in containers]
    backends = [i for i in items if i["role"] == ROLE_BACKEND]
    proxies = [i for i in items if i["role"] == ROLE_PROXY]
    parts: list[tuple[str, str, str | None]] = []
    if not items:
        return failure(
            "no containers of this project exist", "deploy first: `flashfit deploy`", containers=[]
        )
    if not backends:
        parts.append((FAILURE, "no backend container exists", "deploy first: `flashfit deploy`"))
    elif live is None and not any(b["state"] == "running" for b in backends):
        names = ", ".join(b["name"] for b in backends)
        parts.append((FAILURE, f"no backend is running ({names})", DEPLOY_HINT.format(name=backends[0]["name"])))
    if not proxies:
        parts.append((FAILURE, "no proxy container exists", "deploy first: `flashfit deploy`"))
    for item in items:
        if item["role"] == ROLE_BACKEND:
            must_run = item["name"] in live if live is not None else False
        else:
            must_run = item["role"] == ROLE_PROXY
        item["live"] = must_run if item["role"] == ROLE_BACKEND and live is not None else None
        parts.append(judge(item, must_run))
    running = sum(1 for i in items if i["state"] == "running")
    return combine(parts, f"{running} running: {', '.join(i['name'] for i in items if i['state'] == 'running')}",
                   containers=items)


@check("containers", "Each container of the project: running, health, restarts, OOM-killed", timeout=10.0)
def containers_check(ctx: DoctorContext) -> Finding:
    return evaluate(ctx.containers(), live_backend_names(ctx))
