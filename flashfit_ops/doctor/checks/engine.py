"""The Docker engine: reachable, and what it warns about itself (`docker info` Warnings)."""

from __future__ import annotations

from flashfit_ops.doctor.context import DoctorContext
from flashfit_ops.doctor.registry import check
from flashfit_ops.doctor.result import Finding, ok, warning

WARNINGS_HINT = "read `docker info`: the engine names each problem (storage driver, cgroups, swap limits...)"


def evaluate_info(info: dict, version: dict) -> Finding:
    server = version.get("Version") or info.get("ServerVersion") or "?"
    api = version.get("ApiVersion", "?")
    engine_warnings = [w for w in (info.get("Warnings") or []) if w]
    details = {
        "server_version": server,
        "api_version": api,
        "containers_running": info.get("ContainersRunning"),
        "storage_driver": info.get("Driver"),
        "warnings": engine_warnings,
    }
    if engine_warnings:
        first = engine_warnings[0].strip().splitlines()[0]
        more = f" (+{len(engine_warnings) - 1} more)" if len(engine_warnings) > 1 else ""
        return warning(f"engine {server} reachable; it warns: {first}{more}", WARNINGS_HINT, **details)
    return ok(f"engine {server} reachable (API {api})", **details)


@check("docker", "Docker engine reachable, and the engine's own warnings", timeout=10.0)
def docker_engine(ctx: DoctorContext) -> Finding:
    client = ctx.docker()  # Unavailable -> failure with the engine hint
    return evaluate_info(client.info(), client.version())
