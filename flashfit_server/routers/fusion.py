"""Fused recommendations, feedback on them, and the fusion statistics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from flashfit_server.auth import require_auth
from flashfit_server.schemas import ErrorBody, FeedbackRequest, RecommendRequest, RecommendResponse

router = APIRouter(prefix="/api/fusion", tags=["fusion"])
ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorBody} for status in (400, 401, 404, 413, 415, 422, 503)}


@router.post("/recommend", response_model=RecommendResponse, responses=ERRORS)
async def recommend(request: Request, body: RecommendRequest) -> dict:
    return await request.app.state.service.recommend(body)


@router.post("/feedback", responses=ERRORS)
async def feedback(request: Request, body: FeedbackRequest, _claims: dict = Depends(require_auth)) -> dict:
    return await run_in_threadpool(request.app.state.service.feedback, body)


@router.get("/stats")
def stats(request: Request) -> dict:
    return request.app.state.service.stats()
