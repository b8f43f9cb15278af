"""Operator endpoints (authenticated)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from flashfit_server.auth import require_auth
from flashfit_server.errors import ApiError
from flashfit_server.schemas import ErrorBody, SnapshotRequest
from flashfit_server.snapshot import SnapshotError, take_snapshot

router = APIRouter(prefix="/api/admin", tags=["admin"])


@router.post(
    "/snapshot", responses={s: {"model": ErrorBody} for s in (400, 401, 409, 422, 503)},
    description="Consistent copy of stores, weights, catalogue and images into <data dir>/<dest>; "
    "returns the manifest (see flashfit_server.snapshot).",
)
async def snapshot(request: Request, body: SnapshotRequest, _claims: dict = Depends(require_auth)) -> dict:
    service = request.app.state.service
    if not service.datastore.is_open:
        raise ApiError(503, "not_ready", "vector stores are not open yet")
    try:
        return await run_in_threadpool(
            take_snapshot, service.datastore, body.dest, request.app.state.settings.app_version
        )
    except SnapshotError as exc:
        raise ApiError(409 if exc.conflict else 400, "conflict" if exc.conflict else "invalid_dest", str(exc)) from None
