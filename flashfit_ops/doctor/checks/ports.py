"""Host ports the config needs: free, or held by this project's own containers."""

from __future__ import annotations

import errno
import socket
from typing import Any, Callable

from flashfit_ops.doctor.context import LABEL_PROJECT, DoctorContext, attrs_of, labels_of
from flashfit_ops.doctor.registry import check
from flashfit_ops.doctor.result import FAILURE, OK, WARNING, Finding, combine

FREE = "free"
IN_USE = "in use"
UNKNOWN = "unknown"


def probe_port(port: int, host: str = "0.0.0.0") -> str:
    """Can a new listener bind this port? (what Docker needs to publish it)"""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers do not count
        sock.bind((host, port))
        return FREE
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            return IN_USE
        if error.errno == errno.EACCES:
            return _probe_by_connect(port)
        return UNKNOWN
    finally:
        sock.close()


def _probe_by_connect(port: int) -> str:
    """Without the right to bind a low port: something accepting connections holds it."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return IN_USE
    except ConnectionRefusedError:
        return FREE
    except OSError:
        return UNKNOWN


def published_by(containers: list[Any]) -> dict[int, list[tuple[str, str | None]]]:
    """host port -> [(container name, project label)] for every running container's bindings."""
    out: dict[int, list[tuple[str, str | None]]] = {}
    for container in containers:
        attrs = attrs_of(container)
        if (attrs.get("State") or {}).get("Status") != "running":
            continue
        bindings = ((attrs.get("NetworkSettings") or {}).get("Ports") or {}) or (
            (attrs.get("HostConfig") or {}).get("PortBindings") or {}
        )
        for binds in bindings.values():
            for bind in binds or []:
                port = str(bind.get("HostPort") or "")
                if port.isdigit():
                    entry = (container.name, labels_of(container).get(LABEL_PROJECT))
                    if entry not in out.setdefault(int(port), []):
                        out[int(port)].append(entry)
    return out


def process_holding(port: int) -> str | None:
    """'pid 123 (python3)' for a local listener on `port`, when psutil can tell."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.pid and conn.status in ("LISTEN", "NONE"):
                try:
                    return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
                except psutil.Error:
                    return f"pid {conn.pid}"
    except (psutil.Error, OSError):
        return None
    return None


def evaluate(
    needed: dict[str, int],
    project: str,
    publishers: dict[int, list[tuple[str, str | None]]],
    probe: Callable[[int], str],
    holder: Callable[[int], str | None] = lambda _port: None,
) -> Finding:
    parts: list[tuple[str, str, str | None]] = []
    details: dict[str, Any] = {}
    for path, port in sorted(needed.items(), key=lambda kv: kv[1]):
        owners = publishers.get(port, [])
        ours = [name for name, owner in owners if owner == project]
        theirs = [f"{name} (project {owner})" if owner else name for name, owner in owners if owner != project]
        if ours:
            details[path] = {"port": port, "state": "ours", "by": ours}
            continue
        if theirs:
            details[path] = {"port": port, "state": "other container", "by": theirs}
            parts.append((FAILURE, f"port {port} ({path}) is published by {', '.join(theirs)}",
                          f"stop that container or change {path} in the config"))
            continue
        state = probe(port)
        details[path] = {"port": port, "state": state}
        if state == IN_USE:
            who = holder(port)
            if who:
                details[path]["by"] = who
            parts.append((FAILURE, f"port {port} ({path}) is taken by {who or 'another process'}",
                          f"stop what listens there (`ss -ltnp 'sport = :{port}'`) or change {path}"))
        elif state == UNKNOWN:
            parts.append((WARNING, f"could not test port {port} ({path})", "run doctor as root to test low ports"))
        else:
            parts.append((OK, f"{port} free", None))
    held = sum(1 for d in details.values() if d["state"] == "ours")
    free = sum(1 for d in details.values() if d["state"] == FREE)
    return combine(parts, f"{len(needed)} ports: {held} held by this project, {free} free", ports=details)


def needed_ports(ctx: DoctorContext) -> dict[str, int]:
    """The host ports this deployment publishes: the proxy's HTTP (and HTTPS with TLS), plus the
    enabled optional services. (The compose-only backend ports are not published by deploys.)"""
    from flashfit_ops.config.rules import published_ports

    ports = published_ports(ctx.config)
    for compose_only in ("ports.backend", "ports.blue", "ports.green"):
        ports.pop(compose_only, None)
    return ports


@check("ports", "Host ports the config needs: free, or held by this project's containers", timeout=10.0)
def ports_check(ctx: DoctorContext) -> Finding:
    client = ctx.docker()
    everyone = client.containers.list(ignore_removed=True)  # running containers of every project
    return evaluate(needed_ports(ctx), ctx.project, published_by(everyone), probe_port, process_holding)
