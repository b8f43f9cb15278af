"""Hostile requests against a real server process: what one unauthenticated request may cost,
strict parsing of tokens, ids and JSON types, the headers every response carries, and the
temporary folders a multi-worker server leaves behind (none)."""

from __future__ import annotations

import base64
import io
import signal
import time
from pathlib import Path

import httpx
import jwt
import pytest
from PIL import Image

from tests.server.conftest import image_bytes
from tests.server.integration.conftest import SECRET, LiveServer, start_server
from tests.server.integration.test_api import add_item, assert_error

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


# --- category 5: bounded work per request -----------------------------------------------------------


def _peak_rss_growth(server: LiveServer, request) -> tuple[httpx.Response, float]:  # noqa: ANN001
    """The server's peak resident memory above where it stood, over one request, in MiB (Linux
    resets the high-water mark when 5 is written to clear_refs)."""
    status = Path(f"/proc/{server.proc.pid}/status")

    def kib(field: str) -> int:
        line = next(line for line in status.read_text().splitlines() if line.startswith(field))
        return int(line.split()[1])

    Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")
    before = kib("VmRSS:")
    response = request()
    return response, (kib("VmHWM:") - before) / 1024


def _png(mode: str, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def _jpeg(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _recommend_image(server: LiveServer, data: bytes) -> httpx.Response:
    with server.client() as client:
        return client.post("/api/fusion/recommend", json={"image_data": base64.b64encode(data).decode(), "limit": 3})


@pytest.mark.parametrize(
    "data",
    [_png("1", (6320, 6320)), _jpeg((7900, 5000))],
    ids=["png-just-under-the-pixel-limit", "jpeg-just-under-the-pixel-limit"],
)
def test_an_image_just_under_the_pixel_limit_costs_bounded_memory(live_server: LiveServer, data: bytes) -> None:
    """40 M pixels in a few kB (PNG) or 600 kB (JPEG) are accepted, but the worker decodes no more
    than the models need. With the tiny test models the peak once grew by about 600 MB (PNG) and
    410 MB (JPEG), mostly the models' preprocessing of the full-size image; now 80 MB and 5 MB."""
    assert len(data) < MiB
    add_item(live_server, 90, user="hostile-warmup")  # models and stores have done their first run
    assert _recommend_image(live_server, image_bytes(91)).status_code == 200
    response, grown = _peak_rss_growth(live_server, lambda: _recommend_image(live_server, data))
    assert response.status_code == 200, response.text
    assert grown < 200, f"peak RSS grew by {grown:.0f} MiB for one {len(data)} byte image"


def _many_keys(total: int) -> bytes:
    parts = [b'{"text":"shirt"']
    size, n = len(parts[0]), 0
    while size < total:
        part = b',"k%07d":0' % n
        parts.append(part)
        size += len(part)
        n += 1
    return b"".join(parts) + b"}"


@pytest.mark.parametrize(
    "body,code",
    [
        # 13 MB of extra keys held the event loop for seconds (30 s here: the client gave up).
        (_many_keys(13 * MiB), "payload_too_large"),  # over MAX_JSON_BYTES: refused by its length
        (_many_keys(3 * MiB), "payload_too_complex"),  # within it: refused by its shape
        (b'{"text":"shirt","preferences":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "payload_too_complex"),
        (b'{"text":"shirt","user_id":[' + b"0," * MiB + b"0]}", "payload_too_complex"),  # a long array
    ],
    ids=["13MB-of-extra-keys", "3MB-of-extra-keys", "deep-nesting", "long-array"],
)
def test_costly_json_shapes_are_refused_before_parsing(live_server: LiveServer, body: bytes, code: str) -> None:
    with live_server.client() as client:
        error = assert_error(
            client.post("/api/fusion/recommend", content=body, headers={"content-type": "application/json"}), 413
        )
        assert error["code"] == code
        assert client.get("/health").status_code == 200


def test_a_large_image_in_json_still_passes_the_shape_check(live_server: LiveServer) -> None:
    """The shape limit counts structure, not bytes: a 2 MB base64 image is one value."""
    noisy = image_bytes(92, size=(900, 700))
    assert len(noisy) > MiB
    response = _recommend_image(live_server, noisy)
    assert response.status_code == 200, response.text


# --- category 7: strict parsing -------------------------------------------------------------------


def _token(**claims: object) -> dict[str, str]:
    now = int(time.time())
    token = jwt.encode({"sub": "tests", "iat": now, **claims}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": "99999999999"},  # a string: PyJWT reads it as a number that never comes
        {"exp": int(time.time()) + 10 * 365 * 86400},  # a number, ten years away
        {"exp": int(time.time()) + 600, "iat": "1700000000"},  # another time claim as a string
        {"exp": int(time.time()) + 600, "nbf": "0"},
    ],
    ids=["exp-string", "exp-beyond-max-lifetime", "iat-string", "nbf-string"],
)
def test_tokens_with_loose_or_endless_expiry_are_refused(live_server: LiveServer, claims: dict) -> None:
    with live_server.client() as client:
        error = assert_error(client.delete("/api/items/987654321", headers=_token(**claims)), 401)
        assert error["code"] == "unauthorized"
        # A well-formed token of ordinary lifetime still gets through (to the 404 of a missing item).
        ok = _token(exp=int(time.time()) + 600)
        assert_error(client.delete("/api/items/987654321", headers=ok), 404)


def test_a_token_within_a_configured_max_lifetime_passes_and_beyond_fails(tmp_path: Path, tiny_models: Path) -> None:
    server = start_server(tmp_path, tiny_models, env={"JWT_MAX_LIFETIME": "120"})
    try:
        with server.client() as client:
            assert_error(client.delete("/api/items/5", headers=_token(exp=int(time.time()) + 100)), 404)
            assert_error(client.delete("/api/items/5", headers=_token(exp=int(time.time()) + 3600)), 401)
    finally:
        server.stop()


@pytest.mark.parametrize("raw", ["1_0", "+1", "%201", "01", "1.0", "1e1", "\u0661"])
def test_item_ids_in_paths_are_plain_digits(live_server: LiveServer, raw: str) -> None:
    item = add_item(live_server, 93, user="hostile-ids")
    with live_server.client() as client:
        assert client.get(f"/api/items/{item['id']}").status_code == 200
        assert_error(client.get(f"/api/items/{raw}"), 422)
        assert_error(client.get(f"/api/items/{raw}/image"), 422)
        assert_error(client.delete(f"/api/items/{raw}", headers=live_server.auth), 422)


@pytest.mark.parametrize("param", [{"limit": "1_0"}, {"offset": "+0"}, {"limit": " 5"}])
def test_numbers_in_queries_are_plain_digits(live_server: LiveServer, param: dict) -> None:
    with live_server.client() as client:
        assert client.get("/api/items", params={"limit": "10", "offset": "0"}).status_code == 200
        assert_error(client.get("/api/items", params=param), 422)


@pytest.mark.parametrize(
    "path,payload",
    [
        ("/api/fusion/feedback", {"liked": 1}),
        ("/api/fusion/feedback", {"liked": "true"}),
        ("/api/fusion/feedback", {"liked": True, "scores": {"clip_score": True, "blip_score": 0, "fashion_score": 0}}),
        ("/api/fusion/feedback", {"liked": True, "scores": {"clip_score": 0, "blip_score": 0, "fashion_score": 0, "x": 1}}),
        ("/api/fusion/recommend", {"item_id": True}),
        ("/api/fusion/recommend", {"text": "shirt", "limit": "5"}),
        ("/api/fusion/recommend", {"text": "shirt", "limit": 5.0}),
    ],
    ids=["bool-as-1", "bool-as-string", "score-as-bool", "unknown-score-key", "id-as-true", "limit-as-string", "limit-as-float"],
)
def test_json_types_are_taken_as_they_are(live_server: LiveServer, path: str, payload: dict) -> None:
    item = add_item(live_server, 94, user="hostile-types")
    body = {"item_id": item["id"], **payload} if path.endswith("feedback") else payload
    with live_server.client() as client:
        assert_error(client.post(path, json=body, headers=live_server.auth), 422)
        if path.endswith("feedback"):  # the same request with proper types is fine
            good = {"item_id": item["id"], "liked": True}
            good_scores = {"clip_score": 0.5, "blip_score": 0, "fashion_score": 0.1, "fusion_score": 0.3}
            assert client.post(path, json=good, headers=live_server.auth).status_code == 200
            assert client.post(path, json=good | {"scores": good_scores}, headers=live_server.auth).status_code == 200


# --- category 8: headers and temporary folders -----------------------------------------------------------


def test_every_response_says_nosniff(live_server: LiveServer) -> None:
    item = add_item(live_server, 95, user="hostile-headers")
    with live_server.client() as client:
        responses = [
            client.get("/health"),
            client.get(item["image_url"]),  # an uploaded file: must never be sniffed into HTML
            client.get("/api/items/987654321"),  # an error from a route
            client.get("/no/such/route"),
            client.post("/api/fusion/recommend", content=b"x" * (15 * MiB)),  # BodySizeLimit's early 413
            client.post("/api/fusion/recommend", content=_many_keys(100_000), headers={"content-type": "application/json"}),
        ]
    assert [r.status_code for r in responses] == [200, 200, 404, 404, 413, 413]
    for response in responses:
        assert response.headers.get("x-content-type-options") == "nosniff", response.request.url


def _flashfit_folders(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith("flashfit-"))


def _serve_two_workers(tmp_path: Path, tiny_models: Path, wait_ready: bool) -> tuple[LiveServer, Path]:
    temp = tmp_path / "tmp"
    temp.mkdir()
    server = start_server(tmp_path / "srv", tiny_models, workers=2, env={"TMPDIR": str(temp)}, wait_ready=wait_ready)
    return server, temp


def _wait_for(condition, what: str, server: LiveServer, timeout: float = 60) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} never happened:\n{server.log()}"
        time.sleep(0.05)


def test_two_workers_remove_their_folders_on_sigterm(tmp_path: Path, tiny_models: Path) -> None:
    server, temp = _serve_two_workers(tmp_path, tiny_models, wait_ready=True)
    try:
        assert _flashfit_folders(temp) and {n.split("-")[1] for n in _flashfit_folders(temp)} == {"metrics", "ready"}
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(60)
    finally:
        server.stop()
    assert _flashfit_folders(temp) == []


def test_two_workers_remove_their_folders_on_sigint_while_loading(tmp_path: Path, tiny_models: Path) -> None:
    server, temp = _serve_two_workers(tmp_path, tiny_models, wait_ready=False)
    try:
        _wait_for(lambda: len(_flashfit_folders(temp)) == 2, "both folders made", server)
        server.proc.send_signal(signal.SIGINT)
        server.proc.wait(60)
    finally:
        server.stop()
    assert _flashfit_folders(temp) == []


def test_a_metrics_folder_given_by_the_operator_is_kept(tmp_path: Path, tiny_models: Path) -> None:
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {"TMPDIR": str(temp), "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    server = start_server(tmp_path / "srv", tiny_models, workers=2, env=env)
    try:
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(60)
    finally:
        server.stop()
    assert metrics.is_dir() and _flashfit_folders(temp) == []
