"""The health gate: a small function given its probe, so tests pass a fake one.

It probes the readiness path until `success_threshold` consecutive successes, backing off
exponentially (capped at `interval`), each probe bounded by `timeout`, the whole wait bounded by
`deadline`. The liveness path is probed when readiness fails after `start_period`: `retries`
consecutive liveness failures end the wait early, as does the container exiting.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable

from flashfit_contract import health as fields
from flashfit_ops.config.model import Config


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    status: int | None = None  # HTTP status; None when no response came back
    detail: str = ""
    # The server's own word that it cannot become ready (a model that failed to load): waiting
    # longer cannot help, so the gate stops at once with this cause.
    failed: str | None = None


# (path, timeout in seconds) -> result
Probe = Callable[[str, float], ProbeResult]


@dataclass(frozen=True)
class GateSettings:
    readiness_path: str = "/ready"
    liveness_path: str = "/health"
    timeout: float = 5.0
    interval: float = 1.0
    start_period: float = 60.0
    retries: int = 3
    success_threshold: int = 1
    deadline: float = 120.0
    first_delay: float = 0.05

    @classmethod
    def from_config(cls, config: Config, deadline: float | None = None) -> "GateSettings":
        hc = config.healthcheck
        return cls(
            readiness_path=hc.readiness_path,
            liveness_path=hc.liveness_path,
            timeout=hc.timeout,
            interval=hc.interval,
            start_period=hc.start_period,
            retries=hc.retries,
            success_threshold=hc.success_threshold,
            deadline=config.deploy.deadline if deadline is None else deadline,
        )


@dataclass(frozen=True)
class GateResult:
    ready: bool
    elapsed: float
    attempts: int
    reason: str = ""


def wait_ready(
    probe: Probe,
    settings: GateSettings,
    *,
    exited: Callable[[], str | None] = lambda: None,
    on_status: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> GateResult:
    """Wait until ready. `exited()` returns why the container is gone (e.g. "exited with code 1")
    or None while it runs; it is asked only after a failed probe."""
    start = clock()
    delay = min(settings.first_delay, settings.interval)
    successes = 0
    liveness_failures = 0
    attempts = 0
    last = "no probe yet"
    while True:
        elapsed = clock() - start
        remaining = settings.deadline - elapsed
        if remaining <= 0:
            return GateResult(False, elapsed, attempts, f"not ready within the {settings.deadline:g}s deadline (last: {last})")
        attempts += 1
        result = probe(settings.readiness_path, max(0.05, min(settings.timeout, remaining)))
        last = _describe(settings.readiness_path, result)
        if result.ok:
            successes += 1
            if successes >= settings.success_threshold:
                return GateResult(True, clock() - start, attempts)
        else:
            successes = 0
            if result.failed:
                return GateResult(False, clock() - start, attempts, f"the server reports it failed: {result.failed}")
            gone = exited()
            if gone:
                return GateResult(False, clock() - start, attempts, gone)
            if clock() - start >= settings.start_period:
                if result.status is None or result.status >= 500:
                    liveness = probe(settings.liveness_path, max(0.05, min(settings.timeout, remaining)))
                    liveness_failures = 0 if liveness.ok else liveness_failures + 1
                    if not liveness.ok:
                        last = _describe(settings.liveness_path, liveness)
                else:
                    liveness_failures = 0
                if liveness_failures >= settings.retries:
                    return GateResult(
                        False,
                        clock() - start,
                        attempts,
                        f"{liveness_failures} failed liveness probes after the {settings.start_period:g}s start period (last: {last})",
                    )
        if on_status is not None:
            on_status(f"{clock() - start:.1f}s, {last}")
        sleep(max(0.0, min(delay, settings.deadline - (clock() - start))))
        delay = min(delay * 2, settings.interval)


def _describe(path: str, result: ProbeResult) -> str:
    if result.status is not None:
        return f"{path} -> {result.status}"
    return f"{path} -> {result.detail or 'no response'}"


def http_probe(base_url: str) -> Probe:
    """A probe of a container reached directly (its IP on the project network): a fresh connection
    per probe, so probes never hold connections the drain would wait for."""

    def probe(path: str, timeout: float) -> ProbeResult:
        import httpx

        try:
            response = httpx.get(base_url + path, timeout=timeout, headers={"Connection": "close"})
        except httpx.HTTPError as error:
            return ProbeResult(False, None, type(error).__name__)
        ok = 200 <= response.status_code < 300
        return ProbeResult(ok, response.status_code, failed=None if ok else failure_of(response))

    return probe


def failure_of(response) -> str | None:
    """The cause a not-ready server gives in its /ready body ({"status": "failed", "checks":
    {"errors": {...}}}), or None while it is only still loading."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get(fields.STATUS) != fields.FAILED:
        return None
    checks = body.get(fields.CHECKS)
    errors = checks.get(fields.ERRORS) if isinstance(checks, dict) else None
    if isinstance(errors, dict) and errors:
        return "; ".join(f"{k}: {v}" for k, v in sorted(errors.items()))[:500]
    return "failed"


def server_lines(text: str, limit: int = 20) -> str:
    """The last `limit` lines of a container's log that the server wrote itself: request log lines
    (uvicorn.access, `"GET /ready HTTP/1.1" 503`) are the gate's own probes, noise that would hide
    the cause."""
    lines = [line for line in (text or "").splitlines() if not _ACCESS.search(line)]
    return "\n".join(lines[-limit:])


_ACCESS = re.compile(r"uvicorn\.access|\"(GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS) \S+ HTTP/\d(\.\d)?\" \d{3}")
