from __future__ import annotations

import base64

import pytest

from flashfit_server.errors import ApiError
from flashfit_server.images import decode_base64_image, decode_image
from tests.server.conftest import bomb_png, image_bytes

LIMIT, PIXELS = 1_000_000, 10_000_000


def _error(fn, *args) -> ApiError:  # noqa: ANN001
    with pytest.raises(ApiError) as info:
        fn(*args)
    return info.value


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("BMP", "bmp"), ("GIF", "gif")])
def test_common_formats_decode_to_rgb(fmt: str, ext: str) -> None:
    decoded = decode_image(image_bytes(1, fmt=fmt), LIMIT, PIXELS)
    assert decoded.image.mode == "RGB" and decoded.extension == ext and decoded.image.size == (48, 40)


def test_non_image_bytes_are_a_400() -> None:
    assert _error(decode_image, b"%PDF-1.4 not an image", LIMIT, PIXELS).status == 400


def test_truncated_image_is_a_400() -> None:
    data = image_bytes(2, size=(200, 200), fmt="JPEG")
    assert _error(decode_image, data[: len(data) // 2], LIMIT, PIXELS).status == 400


def test_empty_upload_is_a_400() -> None:
    assert _error(decode_image, b"", LIMIT, PIXELS).status == 400


def test_decompression_bomb_is_refused_before_decoding() -> None:
    err = _error(decode_image, bomb_png(), LIMIT, PIXELS)
    assert err.status == 400 and err.code == "image_too_many_pixels"


def test_pixels_in_pil_warning_band_are_refused_too() -> None:
    # 4000x4000 = 16M: above our 10M limit but below 2x, where PIL only warns.
    assert _error(decode_image, bomb_png(4000), LIMIT, PIXELS).code == "image_too_many_pixels"


def test_oversized_bytes_are_a_413() -> None:
    assert _error(decode_image, b"\0" * (LIMIT + 1), LIMIT, PIXELS).status == 413


def test_base64_with_and_without_data_url_prefix() -> None:
    raw = base64.b64encode(image_bytes(3)).decode()
    assert decode_base64_image(raw, LIMIT, PIXELS).extension == "png"
    assert decode_base64_image("data:image/png;base64," + raw, LIMIT, PIXELS).extension == "png"


@pytest.mark.parametrize("text", ["not base64!!", "abc", "====", "\u00e9\u00e9\u00e9\u00e9"])
def test_malformed_base64_is_a_400(text: str) -> None:
    assert _error(decode_base64_image, text, LIMIT, PIXELS).status == 400


def test_huge_base64_is_a_413_without_decoding() -> None:
    assert _error(decode_base64_image, "A" * (LIMIT * 2), LIMIT, PIXELS).status == 413


def test_only_small_images_count_as_cheap_to_decode() -> None:
    from flashfit_server.images import is_cheap_to_decode

    assert is_cheap_to_decode(image_bytes(4))
    assert not is_cheap_to_decode(bomb_png(2000))  # tiny file, 4M pixels
    assert not is_cheap_to_decode(b"garbage")


def test_large_images_reach_the_models_shrunk_and_jpegs_decode_reduced() -> None:
    from flashfit_server.images import MODEL_PIXELS

    for data in (bomb_png(3000), image_bytes(5, size=(2400, 1800), fmt="JPEG")):
        decoded = decode_image(data, 10 * LIMIT, PIXELS)
        width, height = decoded.image.size
        assert decoded.image.mode == "RGB" and width * height <= MODEL_PIXELS and decoded.data == data
    assert decode_image(image_bytes(5, size=(2400, 1800), fmt="JPEG"), 10 * LIMIT, PIXELS).image.size == (1182, 886)


def test_rgba_shrinks_as_if_alpha_were_dropped() -> None:
    import io

    from PIL import Image

    rgba = Image.new("RGBA", (3000, 2000), (200, 100, 50, 0))  # fully transparent, colour kept
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG")
    decoded = decode_image(buffer.getvalue(), 10 * LIMIT, PIXELS)
    assert decoded.image.getpixel((10, 10)) == (200, 100, 50)


def test_decode_slots_bound_decodes_at_once_and_refuse_after_waiting() -> None:
    import asyncio
    import threading

    from flashfit_server.images import DecodeSlots

    release, running, peak = threading.Event(), [], []

    def slow(tag: str) -> str:
        running.append(tag)
        peak.append(len(running))
        release.wait(10)
        running.remove(tag)
        return tag

    async def scenario() -> None:
        slots = DecodeSlots(limit=2, wait=0.2)
        first = [asyncio.create_task(slots.run(slow, t)) for t in ("a", "b")]
        while len(running) < 2:
            await asyncio.sleep(0.01)
        with pytest.raises(ApiError) as info:  # both slots held until `release`: no third decode
            await slots.run(slow, "c")
        assert info.value.status == 503 and info.value.code == "busy" and info.value.headers == {"Retry-After": "1"}
        release.set()
        assert await asyncio.gather(*first) == ["a", "b"]
        assert await slots.run(slow, "d") == "d"

    asyncio.run(scenario())
    assert max(peak) == 2


def test_json_shape_is_counted_across_chunk_boundaries() -> None:
    from flashfit_server.middleware import MAX_JSON_OPENERS, MAX_JSON_SEPARATORS, JsonShape

    shape = JsonShape()
    assert shape.add(b'{"a":' + b"1," * (MAX_JSON_SEPARATORS - 1)) is None  # exactly at the limit
    assert "values" in (shape.add(b"1,") or "")
    nested = JsonShape()
    assert nested.add(b"[" * MAX_JSON_OPENERS) is None
    assert "arrays" in (nested.add(b"{") or "")
