"""Container memory against its limit, and CPU (what `docker stats --no-stream` shows)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flashfit_ops.doctor.context import DoctorContext, attrs_of
from flashfit_ops.doctor.registry import check
from flashfit_ops.doctor.result import FAILURE, OK, WARNING, Finding, combine, failure

MEMORY_WARN = 0.85
MEMORY_FAIL = 0.95
CPU_WARN = 0.90  # of the container's CPU limit (or of the host)
MEMORY_HINT = "raise resources.limits.memory, or lower WORKERS / MAX_BATCH_SIZE; `flashfit-server clear-cache` frees caches"
CPU_HINT = "the container is CPU-bound: raise resources.limits.cpus or add replicas"


def memory_used(stats: dict) -> int:
    """Usage minus reclaimable page cache, as `docker stats` computes it (cgroup v1 and v2)."""
    memory = stats.get("memory_stats") or {}
    usage = int(memory.get("usage") or 0)
    inner = memory.get("stats") or {}
    cache = inner.get("inactive_file", inner.get("total_inactive_file", 0)) or 0
    return max(0, usage - int(cache))


def cpu_fraction(first: dict, second: dict) -> float | None:
    """CPU used between two samples, in CPUs (1.0 = one full core)."""
    try:
        cpu = second["cpu_stats"]["cpu_usage"]["total_usage"] - first["cpu_stats"]["cpu_usage"]["total_usage"]
        system = second["cpu_stats"]["system_cpu_usage"] - first["cpu_stats"]["system_cpu_usage"]
        online = second["cpu_stats"].get("online_cpus") or len(second["cpu_stats"]["cpu_usage"].get("percpu_usage") or []) or 1
    except (KeyError, TypeError):
        return None
    if system <= 0 or cpu < 0:
        return None
    return cpu / system * online


def judge(name: str, stats: dict, cpus_used: float | None, memory_limit_set: int, cpu_limit: float | None,
          host_cpus: int) -> tuple[list[tuple[str, str, str | None]], dict[str, Any]]:
    used = memory_used(stats)
    limit = int((stats.get("memory_stats") or {}).get("limit") or 0)
    if memory_limit_set:
        limit = memory_limit_set
    entry: dict[str, Any] = {"memory_bytes": used, "memory_limit_bytes": limit or None,
                             "memory_limit_set": bool(memory_limit_set)}
    parts: list[tuple[str, str, str | None]] = []
    if limit:
        fraction = used / limit
        entry["memory_percent"] = round(fraction * 100, 1)
        what = "its limit" if memory_limit_set else "host memory (no limit set)"
        if fraction >= MEMORY_FAIL:
            parts.append((FAILURE, f"{name} uses {fraction:.0%} of {what} ({_mib(used)}/{_mib(limit)})", MEMORY_HINT))
        elif fraction >= MEMORY_WARN:
            parts.append((WARNING, f"{name} uses {fraction:.0%} of {what} ({_mib(used)}/{_mib(limit)})", MEMORY_HINT))
    if cpus_used is not None:
        capacity = cpu_limit or float(host_cpus or 1)
        entry["cpu_percent"] = round(cpus_used * 100, 1)
        entry["cpu_limit"] = cpu_limit
        if cpus_used / capacity >= CPU_WARN:
            parts.append((WARNING, f"{name} uses {cpus_used:.2f} of {capacity:g} CPUs", CPU_HINT))
    return parts or [(OK, name, None)], entry


def _mib(value: int) -> str:
    return f"{value / (1 << 20):.0f}MiB"


@check("resources", "Container memory against its limit, and CPU (docker stats)", timeout=10.0)
def resources(ctx: DoctorContext) -> Finding:
    running = [c for c in ctx.containers() if (attrs_of(c).get("State") or {}).get("Status") == "running"]
    if not running:
        return failure("no container of this project is running", "`flashfit deploy`")
    host_cpus = int(ctx.docker().info().get("NCPU") or 1)

    def sample(container: Any) -> tuple[dict, dict]:
        started = time.monotonic()
        first = container.stats(stream=False, one_shot=True)
        # The engine may take most of a second per sample already; wait only for the rest.
        time.sleep(max(0.0, ctx.settings.cpu_sample_s - (time.monotonic() - started)))
        return first, container.stats(stream=False, one_shot=True)

    with ThreadPoolExecutor(max_workers=min(8, len(running))) as pool:
        samples = list(pool.map(sample, running))
    parts: list[tuple[str, str, str | None]] = []
    details: dict[str, Any] = {}
    for container, (first, second) in zip(running, samples, strict=True):
        host_config = attrs_of(container).get("HostConfig") or {}
        nano = host_config.get("NanoCpus") or 0
        cpu_limit = nano / 1e9 if nano else None
        found, entry = judge(container.name, second, cpu_fraction(first, second), int(host_config.get("Memory") or 0),
                             cpu_limit, host_cpus)
        parts.extend(found)
        details[container.name] = entry
    summary = ", ".join(
        f"{name} {_mib(e['memory_bytes'])}"
        + (f"/{_mib(e['memory_limit_bytes'])}" if e["memory_limit_set"] else "")
        + (f" cpu {e['cpu_percent']:.0f}%" if "cpu_percent" in e else "")
        for name, e in details.items()
    )
    return combine(parts, summary, containers=details)
