"""Turning untrusted bytes into RGB images, or a 4xx that says what was wrong.

Guards: a byte limit (413), PIL's pixel limit against decompression bombs (400; the bomb
*warning* band is treated as an error too), a decoder allow-list, and a full decode so truncated
files fail here rather than inside a model.

Work per image is bounded by what the models need (they see at most 384x384): a JPEG is decoded
at a reduced scale (1/2 to 1/8, its draft mode), and every image is shrunk to MODEL_PIXELS before
a model's preprocessing sees it (that preprocessing, not the decoder, held a gigabyte for a 40 M
pixel image). The original bytes are what gets stored. `DecodeSlots` bounds decodes at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from PIL import Image, UnidentifiedImageError

from flashfit_server.errors import ApiError

T = TypeVar("T")

ALLOWED_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
MEDIA_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif", "bmp": "image/bmp"}
_DATA_URL = re.compile(r"^data:[\w/+.-]+;base64,", re.IGNORECASE)
# What a model is handed at most: a 4:3 photo keeps about 1180x890, above every side the models
# resize to (CLIP 224, BLIP 384), so shrinking changes little while bounding their memory.
MODEL_PIXELS = 1024 * 1024


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, fully loaded
    data: bytes  # the original bytes, stored as uploaded
    extension: str


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"image is larger than the {limit} byte limit")


def model_size(size: tuple[int, int], budget: int = MODEL_PIXELS) -> tuple[int, int]:
    """`size` scaled down (aspect kept) to at most `budget` pixels; unchanged when it fits."""
    width, height = size
    if width * height <= budget:
        return size
    scale = math.sqrt(budget / (width * height))
    return max(1, int(width * scale)), max(1, int(height * scale))


def _shrunk_rgb(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    if image.size == target:
        return image.convert("RGB")
    # Shrink by a whole factor before converting, so no full-size RGB copy sits beside the
    # decoded image. Alpha is dropped as the plain conversion drops it: colour channels are
    # reduced one at a time (PIL's own reduce of RGBA would premultiply a full-size copy).
    # Bilevel and palette images have no reduction and are converted first.
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert("RGB")
    factor = min(image.size[0] // target[0], image.size[1] // target[1])
    if factor > 1 and image.mode in ("L", "RGB"):
        image = image.reduce(factor)
    elif factor > 1:
        colours = ("L",) if image.mode == "LA" else ("R", "G", "B")
        bands = [image.getchannel(band).reduce(factor) for band in colours]
        image = bands[0] if len(bands) == 1 else Image.merge("RGB", bands)
    return image.convert("RGB").resize(target, Image.Resampling.BICUBIC)


def decode_image(data: bytes, max_bytes: int, max_pixels: int) -> DecodedImage:
    if len(data) > max_bytes:
        raise too_large(max_bytes)
    if not data:
        raise ApiError(400, "invalid_image", "image is empty")
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS)) as probe:
                fmt = probe.format or ""
                width, height = probe.size
                if width * height > max_pixels:
                    raise Image.DecompressionBombError("too many pixels")
                target = model_size((width, height))
                if fmt == "JPEG" and target != (width, height):
                    probe.draft("RGB", target)  # decodes at the smallest 1/2^k scale still >= target
                probe.load()  # a full decode: truncated data fails here
                image = _shrunk_rgb(probe, model_size(probe.size))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(400, "image_too_many_pixels", f"image has more than {max_pixels} pixels") from None
    except UnidentifiedImageError:
        raise ApiError(400, "invalid_image", "not a supported image (jpeg, png, webp, gif, bmp)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # PIL's ways of saying "corrupt"
        raise ApiError(400, "invalid_image", f"image could not be decoded: {type(exc).__name__}") from None
    if fmt not in ALLOWED_FORMATS:
        raise ApiError(415, "unsupported_media_type", f"image format {fmt or 'unknown'} is not accepted")
    return DecodedImage(image=image, data=data, extension=ALLOWED_FORMATS[fmt])


def base64_payload(text: str, max_bytes: int) -> bytes:
    payload = _DATA_URL.sub("", text.strip(), count=1)
    # Check the size before decoding so a huge string costs nothing.
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise too_large(max_bytes)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_base64", "image_data is not valid base64") from None


def decode_base64_image(text: str, max_bytes: int, max_pixels: int) -> DecodedImage:
    return decode_image(base64_payload(text, max_bytes), max_bytes, max_pixels)


def is_cheap_to_decode(data: bytes, max_bytes: int = 512 * 1024, max_pixels: int = 500_000) -> bool:
    """Whether decoding takes about a millisecond or two (small file, small header size), so it
    may run on the event loop instead of paying for a thread handoff. Reads only the header."""
    if len(data) > max_bytes:
        return False
    try:
        with Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS)) as probe:
            return probe.size[0] * probe.size[1] <= max_pixels
    except Exception:  # noqa: BLE001  (anything odd takes the careful path, which reports it)
        return False


class DecodeSlots:
    """At most `limit` decodes at once in this worker, each in a thread so the event loop (and
    /health) keeps answering. A request that finds no free slot within `wait` seconds gets a 503
    with Retry-After instead of queueing without end."""

    def __init__(self, limit: int, wait: float):
        self.limit = limit
        self.wait = wait
        self._slots = asyncio.Semaphore(limit)

    async def run(self, decode: Callable[..., T], *args: object) -> T:
        from starlette.concurrency import run_in_threadpool

        try:
            await asyncio.wait_for(self._slots.acquire(), self.wait)
        except TimeoutError:
            raise ApiError(
                503, "busy", f"all {self.limit} image decoders are busy; retry shortly", headers={"Retry-After": "1"}
            ) from None
        try:
            return await run_in_threadpool(decode, *args)
        finally:
            self._slots.release()
