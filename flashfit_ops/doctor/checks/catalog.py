"""Does every replica follow the shared catalogue log (catalog.sync_url)? Each backend's /health
reports `catalog_sync`: the last commit it applied, the log head it saw, how long it has been
behind and any record it refused. A replica counts as behind only after BEHIND_LIMIT seconds, so
a commit in flight (a poll interval) is never a failure."""

from __future__ import annotations

import json
from typing import Any

from flashfit_contract import health as fields
from flashfit_ops.doctor.context import DoctorContext
from flashfit_ops.doctor.registry import check
from flashfit_ops.doctor.result import FAILURE, Finding, combine, ok

BEHIND_LIMIT = 10.0  # seconds
HINT = "`flashfit logs`: the replica names the record it refused or the S3 error; see README, multi-node"
NOT_FOLLOWING_HINT = "set catalog.sync_url in flashfit.yml and redeploy (`flashfit render` shows CATALOG_SYNC_URL)"


def judge(statuses: dict[str, Any], url: str) -> Finding:
    """`statuses`: replica name -> its /health `catalog_sync` object (None: the field is missing,
    a string: why /health could not be read)."""
    parts: list[tuple[str, str, str | None]] = []
    reported = {n: s for n, s in statuses.items() if isinstance(s, dict)}
    head = max((max(int(s.get("log_head_seq") or 0), int(s.get("applied_seq") or 0)) for s in reported.values()), default=0)
    for name, status in statuses.items():
        if isinstance(status, str):
            parts.append((FAILURE, f"{name}: {status}", HINT))
        elif status is None:
            parts.append((FAILURE, f"{name} does not follow the shared catalogue log", NOT_FOLLOWING_HINT))
        elif status.get("log") != url:
            parts.append((FAILURE, f"{name} follows {status.get('log')}, not {url}", NOT_FOLLOWING_HINT))
        elif status.get("problem"):
            parts.append((FAILURE, f"{name} is stuck at commit {status.get('applied_seq')}: {status['problem']}", HINT))
        elif not status.get("caught_up"):
            parts.append((FAILURE, f"{name} is still catching up (commit {status.get('applied_seq')} of {head})", HINT))
        elif int(status.get("applied_seq") or 0) < head and float(status.get("behind_seconds") or 0) > BEHIND_LIMIT:
            parts.append((FAILURE, f"{name} is behind the shared log: commit {status.get('applied_seq')} of {head}, "
                          f"for {float(status['behind_seconds']):.0f}s", HINT))
    return combine(parts, f"{len(reported)} replica(s) follow {url} (log head: commit {head})", replicas=statuses)


def _from_health(text: str) -> Any:
    try:
        body = json.loads(text)
    except ValueError:
        return "/health did not answer JSON"
    return body.get(fields.CATALOG_SYNC) if isinstance(body, dict) else "/health did not answer an object"


def task_status(answered: bool, body: str) -> Any:
    """A swarm task's catalogue status from its /health as probe_from read it: an exec output cut
    in transit loses the body, not the answer, and says so instead of "not JSON"."""
    if not answered:
        return "/health does not answer"
    return _from_health(body) if body else "/health answered, but its body did not arrive whole (run doctor again)"


def _local(ctx: DoctorContext) -> dict[str, Any]:
    from flashfit_ops.doctor.checks.http import backend_url

    statuses: dict[str, Any] = {}
    with ctx.http() as client:
        for container in ctx.backends(running_only=True):
            url = backend_url(ctx, container)
            if url is None:
                statuses[container.name] = "no IP address"
                continue
            try:
                statuses[container.name] = _from_health(client.get(url + ctx.config.healthcheck.liveness_path).text)
            except Exception as error:  # noqa: BLE001 - any transport error: no answer
                statuses[container.name] = f"/health does not answer: {type(error).__name__}"
    return statuses


def _swarm(ctx: DoctorContext) -> dict[str, Any]:
    """Task addresses live on the overlay: read each task's /health from inside one of them."""
    from flashfit_ops.doctor.swarm_tasks import local_task_container, probe_from, service_tasks, task_address

    client = ctx.docker()
    name = f"{ctx.project}_backend"
    inside = local_task_container(client, name)
    statuses: dict[str, Any] = {}
    if inside is None:
        return statuses
    for task in service_tasks(client, name, running_only=True):
        address = task_address(task)
        if address is None:
            continue
        answered, body = probe_from(ctx.exec, inside, address, ctx.config.healthcheck.liveness_path, body=True)
        statuses[f"task {task['ID'][:12]} ({address})"] = task_status(answered, body)
    return statuses


@check("catalog-sync", "Every replica follows the shared catalogue log (catalog.sync_url) and is not behind", timeout=15.0)
def catalog_sync(ctx: DoctorContext) -> Finding:
    url = ctx.config.catalog.sync_url
    if url is None:
        return ok("catalog.sync_url is not set: each node keeps its own catalogue (README, multi-node)")
    url = url.rstrip("/")
    statuses = _swarm(ctx) if ctx.config.target == "swarm" else _local(ctx)
    if not statuses:
        return ok(f"no backend to ask on this node; replicas follow {url}")
    return judge(statuses, url)
