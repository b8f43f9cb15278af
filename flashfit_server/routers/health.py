"""Liveness (/health: always 200 while the process runs), readiness (/ready: 200 only when
every model is loaded and the stores are open, in every worker) and the Prometheus exposition
(/metrics)."""

from __future__ import annotations

from datetime import UTC, datetime

import psutil
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from flashfit_contract import health as fields
from flashfit_contract.slots import MODELS

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
        fields.STATUS: "healthy",
        "timestamp": datetime.now(UTC).isoformat(),
        fields.VERSION: request.app.state.settings.app_version,
        "system": _system(),
        fields.MODELS: {f"{slot}{fields.MODEL_LOADED_SUFFIX}": service.registry.is_loaded(slot) for slot in MODELS},
        fields.VECTOR_STORES: {f"{name}{fields.INDEX_SIZE_SUFFIX}": size for name, size in sizes.items()},
        fields.DEVICE: service.registry.device_info(),
    } | ({fields.CATALOG_SYNC: service.replica.status()} if service.replica is not None else {})


@router.get("/ready", responses={503: {"description": "still loading, or a model failed to load"}})
def ready(request: Request) -> JSONResponse:
    service = request.app.state.service
    registry = service.registry
    checks: dict[str, object] = {
        fields.MODELS_LOADED: registry.all_loaded,
        fields.VECTOR_STORES_READY: service.datastore.is_open,
    }
    readiness, workers_ready = request.app.state.readiness, True
    if readiness.shared:  # several workers: each must have loaded, not just the one asked
        count = readiness.ready_workers()
        checks[fields.WORKERS_READY] = f"{count}/{readiness.expected}"
        workers_ready = count >= readiness.expected
    problems = {slot: s.error for slot, s in registry.slots.items() if s.status == "failed"}
    if request.app.state.startup_error:
        problems["startup"] = request.app.state.startup_error
    if service.datastore.problem:  # a newer data folder on disk that this worker refused
        problems["data_folder"] = service.datastore.problem
    sync_ready = True
    if service.replica is not None:  # a shared catalogue: not ready before this node has caught up
        replica = service.replica
        checks[fields.CATALOG_SYNC] = replica.readiness() or f"following: commit {replica.applied_seq} applied"
        sync_ready = replica.caught_up
        if replica.problem and not replica.caught_up and replica.refused:
            problems[fields.CATALOG_SYNC] = replica.problem
        elif replica.problem:
            checks[fields.CATALOG_SYNC] = f"{checks['catalog_sync']}; {replica.problem}"
    if problems:
        checks[fields.ERRORS] = problems
    is_ready = bool(checks[fields.MODELS_LOADED] and checks[fields.VECTOR_STORES_READY]) and not problems
    is_ready = is_ready and workers_ready and sync_ready
    # "failed": it will never become ready (a model or a store failed to load), so a deploy gate
    # stops at once instead of waiting out its deadline; "not_ready": still loading.
    state = fields.READY if is_ready else (fields.FAILED if problems else fields.NOT_READY)
    return JSONResponse({fields.STATUS: state, fields.CHECKS: checks}, status_code=200 if is_ready else 503)


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type)
