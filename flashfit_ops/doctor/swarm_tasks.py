"""A swarm service's tasks as doctor sees them: the ones Swarm wants running, a container of the
service on the engine flashfit talks to, and probes sent from inside it (task addresses live on
the overlay network, which only tasks reach, never this host)."""

from __future__ import annotations

from typing import Any, Callable

from flashfit_ops.engine.execs import ExecOutput
from flashfit_ops.engine.protocol import EngineClient

SERVICE_LABEL = "com.docker.swarm.service.name"
BACKEND_PORT = 8080


def service_tasks(client: EngineClient, name: str, running_only: bool = False) -> list[dict]:
    """The service's tasks whose desired state is running (an absent service has none)."""
    from flashfit_ops.engine.errors import NotFound

    try:
        tasks = client.services.get(name).tasks(filters={"desired-state": "running"})
    except NotFound:
        return []
    return [t for t in tasks if t["Status"]["State"] == "running"] if running_only else tasks


def local_task_container(client: EngineClient, service: str) -> Any | None:
    """A running container of the service on the engine flashfit talks to (a manager)."""
    found = client.containers.list(filters={"label": f"{SERVICE_LABEL}={service}", "status": "running"})
    return found[0] if found else None


def task_address(task: dict) -> str | None:
    """The task's address on the stack's own network."""
    for attachment in task.get("NetworksAttachments") or []:
        if attachment.get("Network", {}).get("Spec", {}).get("Labels", {}).get("com.docker.stack.namespace"):
            for address in attachment.get("Addresses") or []:
                return address.split("/")[0]
    return None


def probe_from(run: Callable[[Any, list[str]], ExecOutput], inside: Any, address: str, path: str,
               body: bool = False) -> tuple[bool, str]:  # fmt: skip
    """GET http://address:8080/path from inside the container `inside` (the image's own
    `flashfit-server probe`, run by `run`: DoctorContext.exec): (answered 200, the body when
    asked for and read whole). The exit code says whether it answered 200: output cut in
    transit (ExecOutput.problem) only costs the body, never the verdict."""
    command = ["flashfit-server", "probe", *(["--body"] if body else []), "--url", f"http://{address}:{BACKEND_PORT}{path}"]
    result = run(inside, command)
    answered = result.exit_code == 0
    lines = result.text().split("\n", 1)
    whole = body and answered and result.problem is None and len(lines) == 2
    return answered, lines[1] if whole else ""
