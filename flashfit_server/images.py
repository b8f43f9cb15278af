"""Turning untrusted bytes into RGB images, or a 4xx that says what was wrong.

Guards: a byte limit (413), PIL's pixel limit against decompression bombs (400; the bomb
*warning* band is treated as an error too), a decoder allow-list, and a full decode so truncated
files fail here rather than inside a model.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from flashfit_server.errors import ApiError

ALLOWED_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
MEDIA_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif", "bmp": "image/bmp"}
_DATA_URL = re.compile(r"^data:[\w/+.-]+;base64,", re.IGNORECASE)


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, fully loaded
    data: bytes  # the original bytes, stored as uploaded
    extension: str


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"image is larger than the {limit} byte limit")


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
                probe.load()  # a full decode: truncated data fails here
                image = probe.convert("RGB")
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
