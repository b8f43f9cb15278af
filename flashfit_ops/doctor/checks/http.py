"""The service as clients see it: /health and /ready through nginx and directly on each backend,
API latency through nginx, model inference time from /metrics, and the store benchmark that the
server itself runs (`flashfit-server bench-store`)."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from flashfit_ops.doctor import promtext
from flashfit_ops.doctor.context import BACKEND_PORT, DoctorContext, container_ips
from flashfit_ops.doctor.observed import live_backend_names
from flashfit_ops.doctor.registry import check
from flashfit_ops.doctor.result import FAILURE, WARNING, Finding, combine, failure, ok, warning
from flashfit_contract import health as fields
from flashfit_contract.metrics import MODEL_INFERENCE_DURATION_SECONDS

if TYPE_CHECKING:  # pragma: no cover
    import httpx

LATENCY_PATH = "/api/items?limit=1"
STORE_P95_WARN_MS = 100.0
PROXY_HINT = "`docker logs {proxy}` and the containers check; `flashfit deploy` restarts the proxy"
NOT_READY_HINT = "`docker logs {name}`: a model that failed to load, or stores still opening, is named there"


# --- /health and /ready ---------------------------------------------------------------------------


def probe(client: httpx.Client, base: str, ctx: DoctorContext) -> dict[str, Any]:
    """GET liveness and readiness under `base`; what they said, as data."""
    out: dict[str, Any] = {"url": base}
    for key, path in (("health", ctx.config.healthcheck.liveness_path), ("ready", ctx.config.healthcheck.readiness_path)):
        started = time.perf_counter()
        try:
            response = client.get(base + path)
        except Exception as error:  # noqa: BLE001 - httpx errors, OS errors: all "no answer"
            out[key] = {"error": f"{type(error).__name__}: {error}" if str(error) else type(error).__name__}
            continue
        entry: dict[str, Any] = {"status": response.status_code, "ms": round((time.perf_counter() - started) * 1000, 1)}
        try:
            entry["body"] = response.json()
        except ValueError:
            entry["body"] = response.text[:200]
        out[key] = entry
    return out


def not_loaded(health_body: Any) -> tuple[list[str], list[str]]:
    """(models not loaded, stores that are empty) from a /health body."""
    if not isinstance(health_body, dict):
        return [], []
    models = [k.removesuffix(fields.MODEL_LOADED_SUFFIX) for k, v in (health_body.get(fields.MODELS) or {}).items() if not v]
    stores = [k.removesuffix(fields.INDEX_SIZE_SUFFIX) for k, v in (health_body.get(fields.VECTOR_STORES) or {}).items() if not v]
    return models, stores


def judge_probe(label: str, result: dict[str, Any], hint: str) -> list[tuple[str, str, str | None]]:
    parts: list[tuple[str, str, str | None]] = []
    health, ready = result.get("health", {}), result.get("ready", {})
    if "error" in health:
        return [(FAILURE, f"{label} does not answer: {health['error']}", hint)]
    if health.get("status") != 200:
        parts.append((FAILURE, f"{label} /health answers {health.get('status')}", hint))
    models, _empty = not_loaded(health.get("body"))
    if "error" in ready:
        parts.append((FAILURE, f"{label} /ready does not answer: {ready['error']}", hint))
    elif ready.get("status") != 200:
        body = ready.get("body") if isinstance(ready.get("body"), dict) else {}
        checks = body.get(fields.CHECKS) or {}
        why = []
        if models:
            why.append(f"models not loaded: {', '.join(models)}")
        if checks.get(fields.VECTOR_STORES_READY) is False:
            why.append("vector stores not open")
        for slot, error in (checks.get(fields.ERRORS) or {}).items():
            why.append(f"{slot}: {error}")
        reason = "; ".join(why) or f"status {ready.get('status')}"
        parts.append((FAILURE, f"{label} not ready ({reason})", hint))
    elif models:
        parts.append((WARNING, f"{label} ready but models not loaded: {', '.join(models)}", hint))
    return parts


def proxy_base(ctx: DoctorContext) -> tuple[str, bool]:
    """Where clients reach the service, and whether TLS certificate checks must be off (the
    certificate is the tls check's business; localhost is not in it)."""
    if ctx.config.tls.enabled:
        return ctx.proxy_https_url, False
    return ctx.proxy_base_url, True


@check("proxy-health", "/health and /ready through nginx", timeout=10.0)
def proxy_health(ctx: DoctorContext) -> Finding:
    base, verify = proxy_base(ctx)
    with ctx.http(verify=verify) as client:
        result = probe(client, base, ctx)
    hint = PROXY_HINT.format(proxy=f"{ctx.project}-proxy")
    parts = judge_probe(f"nginx at {base}", result, hint)
    health = result.get("health", {})
    if health.get("status") in (502, 503, 504) and not isinstance(health.get("body"), dict):
        parts = [(FAILURE, f"nginx at {base} answers {health['status']}: no backend behind it answers",
                  "the containers and backend-health checks say which backend is down; `flashfit deploy` brings one up")]
    models, empty = not_loaded(health.get("body"))
    return combine(parts, f"{base}: healthy and ready", probe=result, models_not_loaded=models, empty_stores=empty)


def backend_url(ctx: DoctorContext, container: Any) -> str | None:
    ips = container_ips(container, prefer_network=ctx.config.network_name)
    return f"http://{ips[0]}:{BACKEND_PORT}" if ips else None


@check("backend-health", "/health and /ready directly on each backend (container IP:8080)", timeout=10.0)
def backend_health(ctx: DoctorContext) -> Finding:
    backends = ctx.backends(running_only=True)
    live = live_backend_names(ctx)
    if not backends:
        return failure("no backend container is running", "`flashfit deploy`; `docker logs` of the stopped backend says why it stopped")
    parts: list[tuple[str, str, str | None]] = []
    probes: dict[str, Any] = {}
    with ctx.http() as client:
        for container in backends:
            url = backend_url(ctx, container)
            if url is None:
                parts.append((FAILURE, f"{container.name} has no IP address", "it is not attached to a network; redeploy"))
                continue
            probes[container.name] = result = probe(client, url, ctx)
            found = judge_probe(container.name, result, NOT_READY_HINT.format(name=container.name))
            if live is not None and container.name not in live:
                # Not serving traffic: a problem there is worth knowing, not an outage.
                found = [(WARNING if s == FAILURE else s, f"{m} (not live)", h) for s, m, h in found]
            parts.extend(found)
    names = ", ".join(probes)
    return combine(parts, f"{len(probes)} backend(s) healthy and ready: {names}", backends=probes)


# --- latency --------------------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil
    return ordered[int(min(rank, len(ordered))) - 1]


def evaluate_latency(samples: list[float], errors: list[str], limited: int, threshold: float, requested: int) -> Finding:
    details: dict[str, Any] = {"requests": requested, "errors": errors[:5], "error_count": len(errors),
                               "rate_limited": limited, "p95_threshold_s": threshold}
    if not samples:
        if limited and not errors:
            return warning(f"all {limited} requests were rate limited (429)", "run doctor again in a few seconds", **details)
        return failure(f"no request succeeded ({errors[0] if errors else 'no answer'})",
                       "see proxy-health; nothing answers through nginx", **details)
    p50, p95 = percentile(samples, 50), percentile(samples, 95)
    details.update({"p50_ms": round(p50 * 1000, 1), "p95_ms": round(p95 * 1000, 1), "max_ms": round(max(samples) * 1000, 1)})
    text = f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms over {len(samples)} requests"
    if errors:
        return failure(f"{len(errors)}/{requested} requests failed ({errors[0]}); {text}",
                       "`docker logs` of the backends and the proxy name the failing requests", **details)
    if p50 > threshold:
        return failure(f"{text}: even the median is over the {threshold:g}s alert threshold",
                       "the server is overloaded or stuck: check the resources and inference checks; add replicas", **details)
    if p95 > threshold:
        return warning(f"{text}: p95 over the {threshold:g}s alert threshold",
                       "check the resources and inference checks; more replicas or WORKERS help", **details)
    return ok(f"{text} (threshold {threshold:g}s)", **details)


@check("latency", "API latency p50/p95 through nginx against monitoring.alerts.p95_seconds", timeout=20.0)
def latency(ctx: DoctorContext) -> Finding:
    base, verify = proxy_base(ctx)
    count = max(1, ctx.settings.latency_requests)
    samples: list[float] = []
    errors: list[str] = []
    limited = 0
    with ctx.http(verify=verify) as client:
        for _ in range(count):
            started = time.perf_counter()
            try:
                response = client.get(base + LATENCY_PATH)
            except Exception as error:  # noqa: BLE001
                errors.append(f"{type(error).__name__}: {error}")
                continue
            elapsed = time.perf_counter() - started
            if response.status_code == 429:
                limited += 1
            elif response.status_code >= 400:
                errors.append(f"HTTP {response.status_code}")
            else:
                samples.append(elapsed)
    return evaluate_latency(samples, errors, limited, ctx.config.monitoring.alerts.p95_seconds, count)


# --- inference time from /metrics ---------------------------------------------------------------


def evaluate_inference(expositions: dict[str, str], threshold: float) -> Finding:
    samples = []
    for text in expositions.values():
        samples.extend(promtext.parse(text))
    models = promtext.histogram_by(samples, MODEL_INFERENCE_DURATION_SECONDS, "model_name")
    details: dict[str, Any] = {"threshold_s": threshold, "backends": sorted(expositions), "models": {}}
    parts: list[tuple[str, str, str | None]] = []
    pieces = []
    for name, entry in sorted(models.items()):
        if entry["count"] <= 0:
            continue
        mean = entry["sum"] / entry["count"]
        p95 = promtext.quantile(0.95, entry["buckets"])
        details["models"][name] = {"count": int(entry["count"]), "mean_s": round(mean, 4),
                                   "p95_s": round(p95, 4) if p95 is not None else None}
        pieces.append(f"{name} {mean * 1000:.0f} ms")
        if mean > threshold:
            parts.append((WARNING, f"{name} averages {mean * 1000:.0f} ms per batch, over the {threshold:g}s threshold",
                          "CPU-bound inference: check the resources check; lower MAX_BATCH_SIZE or add CPUs/replicas"))
    if not pieces:
        return ok("no inference recorded yet (no recommendation or ingestion since start)", **details)
    return combine(parts, f"mean per batch: {', '.join(pieces)} (threshold {threshold:g}s)", **details)


@check("inference", "Model inference time from the servers' /metrics", timeout=10.0)
def inference(ctx: DoctorContext) -> Finding:
    backends = ctx.backends(running_only=True)
    if not backends:
        return failure("no backend is running: no metrics to read", "`flashfit deploy`")
    expositions: dict[str, str] = {}
    problems: list[str] = []
    with ctx.http() as client:
        for container in backends:
            url = backend_url(ctx, container)
            if url is None:
                problems.append(f"{container.name}: no IP")
                continue
            try:
                response = client.get(url + "/metrics")
                response.raise_for_status()
                expositions[container.name] = response.text
            except Exception as error:  # noqa: BLE001
                problems.append(f"{container.name}: {type(error).__name__}: {error}")
    if not expositions:
        return failure(f"no backend served /metrics ({'; '.join(problems)})", "see backend-health")
    finding = evaluate_inference(expositions, ctx.config.monitoring.alerts.inference_seconds)
    if problems:
        finding.details["unreachable"] = problems
    return finding


# --- store benchmark inside the server ---------------------------------------------------------

_BENCH_LINE = re.compile(r"^(\S+)\s+(\S+)\s+n=(\d+)\s+p50=\s*([\d.]+)\s*ms\s+p95=\s*([\d.]+)\s*ms")


_BENCH_ERROR = re.compile(r"^(clip|blip|fashion|[a-z_]+): (.+)$")


def parse_bench(stdout: str) -> tuple[dict[str, dict], list[str]]:
    timings: dict[str, dict] = {}
    empty: list[str] = []
    for line in stdout.splitlines():
        match = _BENCH_LINE.match(line.strip())
        if match:
            name, kind, size, p50, p95 = match.groups()
            timings[name] = {"kind": kind, "size": int(size), "p50_ms": float(p50), "p95_ms": float(p95)}
        elif line.strip().endswith(": empty"):
            empty.append(line.strip().split(":", 1)[0])
    return timings, empty


def evaluate_bench(exit_code: int, stdout: str, stderr: str, limit_ms: float = STORE_P95_WARN_MS) -> Finding:
    if exit_code in (126, 127) or "executable file not found" in stdout + stderr or "invalid choice" in stderr:
        return warning("this server image has no `flashfit-server bench-store`; store search not timed",
                       "deploy a current server image", exit_code=exit_code)
    timings, empty = parse_bench(stdout)
    errors = []
    for line in stderr.splitlines():
        match = _BENCH_ERROR.match(line.strip())
        if not match:
            continue
        if "does not exist in" in match.group(2):  # never saved: a fresh, empty catalogue
            empty.append(match.group(1))
        else:
            errors.append(line.strip())
    details = {"stores": timings, "empty": empty, "errors": errors[:5]}
    if errors and not (timings or empty):
        return failure(f"bench-store failed: {errors[-1]}", "the stores check compares index files with their metadata", **details)
    parts: list[tuple[str, str, str | None]] = []
    for line in errors:
        parts.append((FAILURE, f"store unreadable: {line}", "see the stores check; restore the store from a backup"))
    for name, timing in timings.items():
        if timing["p95_ms"] > limit_ms:
            parts.append((WARNING, f"{name} search p95 {timing['p95_ms']:.0f} ms over {limit_ms:g} ms",
                          "a flat index grows linearly: set VECTOR_INDEX=hnsw for large catalogues"))
    if not timings:
        return combine(parts, f"all stores empty ({', '.join(empty)}): nothing to time", **details)
    text = ", ".join(f"{n} p95 {t['p95_ms']:.2f} ms (n={t['size']})" for n, t in timings.items())
    return combine(parts, f"search {text}", **details)


@check("store-bench", "Vector store search benchmark inside the running server", timeout=30.0)
def store_bench(ctx: DoctorContext) -> Finding:
    backends = ctx.backends(running_only=True)
    live = live_backend_names(ctx)
    if live:
        backends = [b for b in backends if b.name in live] or backends
    if not backends:
        return failure("no backend is running to benchmark in", "`flashfit deploy`")
    container = backends[0]
    result = ctx.exec(container, ["flashfit-server", "bench-store", "--queries", "50", "--threads", "1"])
    text_out = result.stdout.decode(errors="replace")
    text_err = result.stderr.decode(errors="replace")
    if result.exit_code is None or result.problem:
        return failure(f"could not read `flashfit-server bench-store` in {container.name}: "
                       f"{result.problem or 'the engine did not report how it ended'}",
                       "rerun `flashfit doctor --check store-bench`", container=container.name)
    finding = evaluate_bench(result.exit_code, text_out, text_err)
    finding.details["container"] = container.name
    return finding
