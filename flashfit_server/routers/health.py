"""Liveness (/health: always 200 while the process runs), readiness (/ready: 200 only when
every model is loaded and the stores are open, in every worker) and the Prometheus exposition
(/metrics)."""

from __future__ import annotations

from datetime import UTC, datetime

import psutil
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


def _system() -> dict[str, float]:
    return {
        # interval=None: the change since the previous call, never blocking the event loop.
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_percent": psutil.virtual_memory().percent,
        "disk_percent": psutil.disk_usage("/").percent,
    }


@router.get("/health")
def health(request: Request) -> dict:
    service = request.app.state.service
    sizes = service.datastore.sizes()
    return {
        "status": "healthy",
        "timestamp": datetime.now(UTC).isoformat(),
        "version": request.app.state.settings.app_version,
        "system": _system(),
        "models": {f"{slot}_loaded": service.registry.is_loaded(slot) for slot in ("clip", "blip", "fashion")},
        "vector_stores": {f"{name}_index_size": size for name, size in sizes.items()},
        "device": service.registry.device_info(),
    } | ({"catalog_sync": service.replica.status()} if service.replica is not None else {})


@router.get("/ready", responses={503: {"description": "still loading, or a model failed to load"}})
def ready(request: Request) -> JSONResponse:
    service = request.app.state.service
    registry = service.registry
    checks: dict[str, object] = {
        "models_loaded": registry.all_loaded,
        "vector_stores_ready": service.datastore.is_open,
    }
    readiness, workers_ready = request.app.state.readiness, True
    if readiness.shared:  # several workers: each must have loaded, not just the one asked
        count = readiness.ready_workers()
        checks["workers_ready"] = f"{count}/{readiness.expected}"
        workers_ready = count >= readiness.expected
    problems = {slot: s.error for slot, s in registry.slots.items() if s.status == "failed"}
    if request.app.state.startup_error:
        problems["startup"] = request.app.state.startup_error
    if service.datastore.problem:  # a newer data folder on disk that this worker refused
        problems["data_folder"] = service.datastore.problem
    sync_ready = True
    if service.replica is not None:  # a shared catalogue: not ready before this node has caught up
        replica = service.replica
        checks["catalog_sync"] = replica.readiness() or f"following: commit {replica.applied_seq} applied"
        sync_ready = replica.caught_up
        if replica.problem and not replica.caught_up and replica.refused:
            problems["catalog_sync"] = replica.problem
        elif replica.problem:
            checks["catalog_sync"] = f"{checks['catalog_sync']}; {replica.problem}"
    if problems:
        checks["errors"] = problems
    is_ready = bool(checks["models_loaded"] and checks["vector_stores_ready"]) and not problems
    is_ready = is_ready and workers_ready and sync_ready
    # "failed": it will never become ready (a model or a store failed to load), so a deploy gate
    # stops at once instead of waiting out its deadline; "not_ready": still loading.
    state = "ready" if is_ready else ("failed" if problems else "not_ready")
    return JSONResponse({"status": state, "checks": checks}, status_code=200 if is_ready else 503)


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type)
