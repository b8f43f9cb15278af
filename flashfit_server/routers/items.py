"""Catalogue items: upload (embeds with all three models), list, read, image, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from flashfit_server.auth import require_auth
from flashfit_server.errors import ApiError
from flashfit_server.images import MEDIA_TYPES, decode_image, too_large
from flashfit_server.schemas import MAX_ITEM_ID, PLAIN_DIGITS, ErrorBody, ItemOut, ItemPage
from flashfit_server.service import ItemFields

router = APIRouter(prefix="/api/items", tags=["items"])

ItemId = Annotated[int, Path(ge=1, le=MAX_ITEM_ID), PLAIN_DIGITS]
ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorBody} for status in (400, 401, 404, 413, 415, 422, 503)}
MAX_TAGS = 32


def _tags(raw: str | None) -> list[str]:
    tags = [t.strip() for t in (raw or "").split(",") if t.strip()]
    if len(tags) > MAX_TAGS:
        raise ApiError(400, "too_many_tags", f"at most {MAX_TAGS} tags")
    return tags


async def _read_upload(upload: UploadFile, limit: int) -> bytes:
    content_type = (upload.content_type or "application/octet-stream").split(";")[0].strip().lower()
    if not (content_type.startswith("image/") or content_type == "application/octet-stream"):
        raise ApiError(415, "unsupported_media_type", f"image part has content type {content_type}, not image/*")
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise too_large(limit)
    return data


@router.post("", status_code=201, response_model=ItemOut, responses=ERRORS)
async def add_item(
    request: Request,
    image: Annotated[UploadFile, File(description="jpeg, png, webp, gif or bmp")],
    name: Annotated[str | None, Form(max_length=200)] = None,
    category: Annotated[str | None, Form(max_length=100)] = None,
    color: Annotated[str | None, Form(max_length=100)] = None,
    tags: Annotated[str | None, Form(max_length=2000, description="comma separated")] = None,
    user_id: Annotated[str | None, Form(max_length=128)] = None,
    _claims: dict = Depends(require_auth),
) -> dict:
    service = request.app.state.service
    settings = request.app.state.settings
    data = await _read_upload(image, settings.max_image_bytes)
    decoded = await service.decoder.run(decode_image, data, settings.max_image_bytes, settings.max_image_pixels)
    fields = ItemFields(
        name=(name or "").strip() or (image.filename or "item").rsplit(".", 1)[0][:200] or "item",
        category=category or None, color=color or None, tags=_tags(tags), user_id=user_id or None,
    )
    item = await service.add_item(decoded, fields)
    return item.to_api()


@router.get("", response_model=ItemPage, responses=ERRORS)
def list_items(
    request: Request,
    offset: Annotated[int, Query(ge=0, le=MAX_ITEM_ID), PLAIN_DIGITS] = 0,
    limit: Annotated[int, Query(ge=1, le=100), PLAIN_DIGITS] = 20,
    user_id: Annotated[str | None, Query(max_length=128)] = None,
) -> dict:
    service = request.app.state.service
    # A listing shows what is there now: apply a write another worker or replica committed a
    # moment ago (one stat when nothing changed), as a lookup that misses an item does.
    if service.datastore.is_open:
        service.datastore.catch_up()
    with service.read() as state:
        page, total = state.catalog.page(offset, limit, user_id)
    return {"items": [i.to_api() for i in page], "total": total, "offset": offset, "limit": limit}


@router.get("/{item_id}", response_model=ItemOut, responses=ERRORS)
def get_item(request: Request, item_id: ItemId) -> dict:
    return request.app.state.service.get_item(item_id).to_api()


@router.get("/{item_id}/image", response_class=FileResponse, responses=ERRORS)
def get_item_image(request: Request, item_id: ItemId) -> FileResponse:
    service = request.app.state.service
    item = service.get_item(item_id)
    try:
        path = service.datastore.image_path(item)  # refused unless inside the data folder's images/
    except ValueError:
        raise ApiError(404, "not_found", f"image of item {item_id} is missing") from None
    if not path.is_file():
        raise ApiError(404, "not_found", f"image of item {item_id} is missing")
    extension = item.image_file.rsplit(".", 1)[-1]
    return FileResponse(path, media_type=MEDIA_TYPES.get(extension, "application/octet-stream"))


@router.delete("/{item_id}", responses=ERRORS)
async def delete_item(request: Request, item_id: ItemId, _claims: dict = Depends(require_auth)) -> dict:
    item = await run_in_threadpool(request.app.state.service.delete_item, item_id)
    return {"status": "deleted", "item_id": item.id}
