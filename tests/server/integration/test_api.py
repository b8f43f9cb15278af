"""The HTTP API of a real server process, spoken to over loopback."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sqlite3
import uuid

import pytest

from flashfit_server.auth import mint_token
from flashfit_contract.metrics import EXPOSED_SERIES
from tests.server.conftest import bomb_png, image_bytes
from tests.server.integration.conftest import SECRET, LiveServer

pytestmark = pytest.mark.integration


def add_item(server: LiveServer, seed: int, user: str | None = None, **fields: str) -> dict:
    data = {k: v for k, v in {"user_id": user, **fields}.items() if v is not None}
    with server.client() as client:
        response = client.post(
            "/api/items", files={"image": (f"look{seed}.png", image_bytes(seed), "image/png")}, data=data,
            headers=server.auth,
        )
    assert response.status_code == 201, response.text
    return response.json()


def catalogue(server: LiveServer, user: str) -> list[dict]:
    with server.client() as client:
        return client.get("/api/items", params={"user_id": user, "limit": 100}).json()["items"]


def assert_error(response, status: int) -> dict:  # noqa: ANN001
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return body["error"]


# --- health, readiness, metrics --------------------------------------------------------------------


def test_health_reports_models_stores_and_system(live_server: LiveServer) -> None:
    body = live_server.client().get("/health").json()
    assert body["status"] == "healthy" and body["version"]
    assert set(body["system"]) == {"cpu_percent", "memory_percent", "disk_percent"}
    assert body["models"] == {"clip_loaded": True, "blip_loaded": True, "fashion_loaded": True}
    assert set(body["vector_stores"]) == {"clip_index_size", "blip_index_size", "fashion_index_size"}


def test_ready_is_200_with_checks(live_server: LiveServer) -> None:
    response = live_server.client().get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"models_loaded": True, "vector_stores_ready": True}}


def test_metrics_expose_exactly_the_declared_names(live_server: LiveServer) -> None:
    add_item(live_server, 1, user=f"m-{uuid.uuid4()}")  # makes model inference series exist
    with live_server.client() as client:
        client.get("/api/items/999999999")
        text = client.get("/metrics").text
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert names == set(EXPOSED_SERIES)
    assert 'endpoint="/api/items/{item_id}"' in text  # route template, not the raw path
    assert "999999999" not in text
    assert re.search(r'model_inference_duration_seconds_count\{model_name="blip"\} [1-9]', text)
    assert re.search(r'vector_store_size\{store="clip"\} [1-9]', text)


# --- items ----------------------------------------------------------------------------------------


def test_item_lifecycle(live_server: LiveServer) -> None:
    user = f"u-{uuid.uuid4()}"
    item = add_item(live_server, 5, user=user, name="Blue shirt", category="top", color="blue", tags="casual, summer")
    assert item["name"] == "Blue shirt" and item["tags"] == ["casual", "summer"] and isinstance(item["caption"], str)
    with live_server.client() as client:
        assert client.get(f"/api/items/{item['id']}").json() == item
        image = client.get(item["image_url"])
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert image.content == image_bytes(5)
        assert [i["id"] for i in catalogue(live_server, user)] == [item["id"]]
        assert client.delete(f"/api/items/{item['id']}", headers=live_server.auth).json()["status"] == "deleted"
        assert_error(client.get(f"/api/items/{item['id']}"), 404)
        assert_error(client.get(f"/api/items/{item['id']}/image"), 404)
        assert_error(client.delete(f"/api/items/{item['id']}", headers=live_server.auth), 404)


def test_listing_pages(live_server: LiveServer) -> None:
    user = f"p-{uuid.uuid4()}"
    ids = [add_item(live_server, 10 + i, user=user)["id"] for i in range(3)]
    with live_server.client() as client:
        page = client.get("/api/items", params={"user_id": user, "offset": 1, "limit": 1}).json()
    assert page["total"] == 3 and [i["id"] for i in page["items"]] == ids[1:2]


# --- recommendations ------------------------------------------------------------------------------


def test_recommend_by_item_excludes_the_query_and_stays_in_the_users_items(live_server: LiveServer) -> None:
    user = f"r-{uuid.uuid4()}"
    ids = [add_item(live_server, 20 + i, user=user, category="top")["id"] for i in range(4)]
    add_item(live_server, 30, user=f"other-{uuid.uuid4()}")
    with live_server.client() as client:
        body = client.post("/api/fusion/recommend", json={"item_id": ids[0], "user_id": user, "limit": 10}).json()
    assert body["status"] == "success"
    got = [r["item_id"] for r in body["recommendations"]]
    assert sorted(got) == sorted(ids[1:])
    meta = body["metadata"]
    assert meta["models_used"] == ["clip", "blip", "fashion"] and meta["total_candidates"] == 3
    weights = meta["fusion_weights"]
    for rec in body["recommendations"]:
        scores = rec["scores"]
        fused = sum(weights[m] * scores[f"{m}_score"] for m in ("clip", "blip", "fashion"))
        assert scores["fusion_score"] == pytest.approx(fused, abs=1e-5)
        assert rec["image_url"] == f"/api/items/{rec['item_id']}/image" and rec["category"] == "top"
    fusion_scores = [r["scores"]["fusion_score"] for r in body["recommendations"]]
    assert fusion_scores == sorted(fusion_scores, reverse=True)


@pytest.mark.parametrize("query", ["text", "image", "preferences"])
def test_recommend_by_text_or_image(live_server: LiveServer, query: str) -> None:
    add_item(live_server, 40, user=f"t-{uuid.uuid4()}")
    payload: dict = {"limit": 3}
    if query == "text":
        payload["text"] = "a red summer dress"
    elif query == "image":
        payload["image_data"] = base64.b64encode(image_bytes(41, fmt="JPEG")).decode()
    else:
        payload |= {"text": "shirt", "preferences": {"style": "casual", "occasion": "party", "season": "summer"}}
    with live_server.client() as client:
        response = client.post("/api/fusion/recommend", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert 1 <= len(body["recommendations"]) <= 3
    assert body["metadata"]["total_candidates"] >= len(body["recommendations"])
    assert all(set(r["scores"]) == {"clip_score", "blip_score", "fashion_score", "fusion_score"} for r in body["recommendations"])


def test_image_query_matches_its_own_item_first(live_server: LiveServer) -> None:
    user = f"self-{uuid.uuid4()}"
    items = [add_item(live_server, 50 + i, user=user) for i in range(3)]
    with live_server.client() as client:
        body = client.post(
            "/api/fusion/recommend",
            json={"image_data": base64.b64encode(image_bytes(51)).decode(), "user_id": user, "limit": 3},
        ).json()
    top = body["recommendations"][0]
    assert top["item_id"] == items[1]["id"]
    assert top["scores"]["clip_score"] == pytest.approx(1.0, abs=1e-4)
    assert top["scores"]["fashion_score"] == pytest.approx(1.0, abs=1e-4)


# --- feedback -------------------------------------------------------------------------------------


def test_feedback_moves_weights_within_bounds_and_persists(live_server: LiveServer) -> None:
    item = add_item(live_server, 60, user=f"f-{uuid.uuid4()}")
    with live_server.client() as client:
        before = client.get("/api/fusion/stats").json()
        scores = {"clip_score": 0.9, "blip_score": 0.1, "fashion_score": 0.2}
        for _ in range(40):
            response = client.post(
                "/api/fusion/feedback", json={"item_id": item["id"], "liked": True, "scores": scores},
                headers=live_server.auth,
            )
            assert response.status_code == 200 and response.json()["applied"] is True
        after = client.get("/api/fusion/stats").json()
        assert_error(client.post("/api/fusion/feedback", json={"item_id": 987654321, "liked": True}, headers=live_server.auth), 404)
    weights = after["fusion_weights"]
    assert weights["clip"] > before["fusion_weights"]["clip"]
    assert sum(weights.values()) == pytest.approx(1.0)
    assert all(after["weight_bounds"]["min"] - 1e-9 <= w <= after["weight_bounds"]["max"] + 1e-9 for w in weights.values())
    assert after["feedback"]["liked"] >= before["feedback"]["liked"] + 40
    with sqlite3.connect(live_server.data_dir / "catalog.sqlite3") as conn:  # persisted in the catalogue
        stored = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'fusion'").fetchone()[0])
    assert stored["weights"] == pytest.approx(weights)


# --- auth -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": f"Bearer {mint_token('wrong-secret-' + 'x' * 30)}"},
        {"Authorization": f"Bearer {mint_token(SECRET, ttl_seconds=-60)}"},
    ],
    ids=["missing", "garbage", "basic", "wrong-secret", "expired"],
)
def test_mutating_endpoints_need_a_valid_token(live_server: LiveServer, headers: dict) -> None:
    with live_server.client() as client:
        before = client.get("/health").json()["vector_stores"]
        calls = [
            client.post("/api/items", files={"image": ("a.png", image_bytes(1), "image/png")}, headers=headers),
            client.delete("/api/items/1", headers=headers),
            client.post("/api/fusion/feedback", json={"item_id": 1, "liked": True}, headers=headers),
            client.post("/api/admin/snapshot", json={"dest": "nope"}, headers=headers),
        ]
        for response in calls:
            assert_error(response, 401)
            assert response.headers.get("www-authenticate") == "Bearer"
        assert client.get("/health").json()["vector_stores"] == before


# --- bad input: 4xx, never 5xx, nothing stored ------------------------------------------------------


def _upload(server: LiveServer, content: bytes, content_type: str = "image/png"):  # noqa: ANN202
    with server.client() as client:
        return client.post("/api/items", files={"image": ("x.png", content, content_type)}, headers=server.auth)


@pytest.mark.parametrize(
    "content,content_type,status",
    [
        (b"hello, not an image", "image/png", 400),
        (image_bytes(7, size=(300, 300), fmt="JPEG")[:900], "image/jpeg", 400),
        (bomb_png(), "image/png", 400),
        (image_bytes(8), "text/plain", 415),
        (b"", "image/png", 400),
        (b"%PDF-1.4\n" + b"0" * 100, "application/pdf", 415),
    ],
    ids=["not-image", "truncated", "bomb", "text-content-type", "empty", "pdf"],
)
def test_bad_uploads_are_rejected_and_store_nothing(live_server: LiveServer, content: bytes, content_type: str, status: int) -> None:
    before = live_server.client().get("/health").json()["vector_stores"]
    files_before = sorted(p.name for p in (live_server.data_dir / "images").iterdir())
    assert_error(_upload(live_server, content, content_type), status)
    assert live_server.client().get("/health").json()["vector_stores"] == before
    assert sorted(p.name for p in (live_server.data_dir / "images").iterdir()) == files_before


def test_an_image_over_the_size_limit_is_a_413(tmp_path, tiny_models) -> None:  # noqa: ANN001
    from tests.server.integration.conftest import start_server

    server = start_server(tmp_path, tiny_models, env={"MAX_IMAGE_BYTES": "20000"})
    try:
        big = image_bytes(9, size=(200, 200))  # ~120 kB of noise
        assert_error(_upload(server, big), 413)
        with server.client() as client:
            b64 = base64.b64encode(big).decode()
            assert_error(client.post("/api/fusion/recommend", json={"image_data": b64}), 413)
            assert_error(client.post("/api/fusion/recommend", content=b"{" + b" " * 400_000 + b"}",
                                     headers={"content-type": "application/json"}), 413)
            assert client.get("/health").json()["vector_stores"]["clip_index_size"] == 0
    finally:
        server.stop()


@pytest.mark.parametrize(
    "payload,status",
    [
        ({"image_data": "!!!not base64!!!"}, 400),
        ({"image_data": base64.b64encode(b"not an image").decode()}, 400),
        ({"item_id": 987654321}, 404),
        ({"text": "x", "limit": 0}, 422),
        ({"text": "x", "limit": 101}, 422),
        ({}, 422),
        ({"text": "x", "item_id": 1}, 422),
        ({"text": ""}, 422),
        ({"text": "x", "preferences": {"mood": "happy"}}, 422),
        ({"item_id": -1}, 422),
        ({"item_id": 2**70}, 422),
        ([1, 2, 3], 422),
        ("just a string", 422),
    ],
)
def test_bad_recommend_requests_are_4xx(live_server: LiveServer, payload: object, status: int) -> None:
    with live_server.client() as client:
        assert_error(client.post("/api/fusion/recommend", json=payload), status)


def test_malformed_json_and_wrong_content_type(live_server: LiveServer) -> None:
    with live_server.client() as client:
        assert_error(client.post("/api/fusion/recommend", content=b"{not json", headers={"content-type": "application/json"}), 422)
        response = client.post("/api/fusion/recommend", content=b"text=hello", headers={"content-type": "text/plain"})
        assert 400 <= response.status_code < 500
        assert_error(client.get("/api/items/abc"), 422)
        assert_error(client.get("/api/items", params={"limit": 1000}), 422)
        assert_error(client.get("/no/such/route"), 404)
        assert_error(client.put("/api/items/1"), 405)


# --- snapshot --------------------------------------------------------------------------------------


def test_snapshot_writes_a_verifiable_manifest(live_server: LiveServer) -> None:
    add_item(live_server, 70, user=f"s-{uuid.uuid4()}")
    dest = f"_snapshots/{uuid.uuid4().hex}"
    with live_server.client() as client:
        response = client.post("/api/admin/snapshot", json={"dest": dest}, headers=live_server.auth)
        assert response.status_code == 200, response.text
        manifest = response.json()
        assert_error(client.post("/api/admin/snapshot", json={"dest": dest}, headers=live_server.auth), 409)
        for bad in ("../escape", "/abs", "a/../../b", "images/x", ""):
            assert client.post("/api/admin/snapshot", json={"dest": bad}, headers=live_server.auth).status_code in (400, 422)
    folder = live_server.data_dir / dest
    assert manifest["format"] == "flashfit-snapshot/1"
    assert json.loads((folder / "snapshot.json").read_text()) == manifest
    paths = {f["path"] for f in manifest["files"]}
    assert {"manifest.json", "catalog.sqlite3"} <= paths
    assert any(p.startswith("segments/") for p in paths) and any(p.startswith("images/") for p in paths)
    for entry in manifest["files"]:
        data = (folder / entry["path"]).read_bytes()
        assert len(data) == entry["size"] and hashlib.sha256(data).hexdigest() == entry["sha256"]
    with sqlite3.connect(folder / "catalog.sqlite3") as conn:
        assert manifest["item_count"] == conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    store_manifest = json.loads((folder / "manifest.json").read_text())
    for name in ("clip", "blip", "fashion"):
        segments = store_manifest["stores"][name]
        assert {s["file"] for s in segments} <= paths and sum(s["count"] for s in segments) >= manifest["item_count"]


@pytest.mark.parametrize("dest", ["manifest.json", "segments", "catalog.sqlite3", ".lock", "images", "snapshots/x",
                                  "_snapshots", "_snapshots/../segments", "segments/x", "_snapshots/a/../../images"])
def test_a_snapshot_can_only_go_into_its_own_folder(live_server: LiveServer, dest: str) -> None:
    with live_server.client() as client:
        before = client.get("/api/items", params={"limit": 1}).json()["total"]
        response = client.post("/api/admin/snapshot", json={"dest": dest}, headers=live_server.auth)
        assert response.status_code in (400, 422), response.text
        assert response.json()["error"]["code"] in ("invalid_dest", "validation_error")
        item = add_item(live_server, 71)  # every store file is still writable
        assert client.delete(f"/api/items/{item['id']}", headers=live_server.auth).status_code == 200
        assert client.get("/api/items", params={"limit": 1}).json()["total"] == before


def test_openapi_is_served(live_server: LiveServer) -> None:
    spec = live_server.client().get("/openapi.json").json()
    assert "/api/fusion/recommend" in spec["paths"] and "/api/items/{item_id}" in spec["paths"]
