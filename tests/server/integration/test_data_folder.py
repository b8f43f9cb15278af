"""A real server on a hostile data folder: what a restore could bring (issue 14, category 1)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import image_bytes
from tests.server.integration.conftest import LiveServer, start_server

pytestmark = pytest.mark.integration

SECRET_TEXT = b"top-secret-not-for-callers"


def _add(server: LiveServer, seed: int) -> int:
    with server.client() as client:
        response = client.post("/api/items", files={"image": (f"i{seed}.png", image_bytes(seed), "image/png")},
                               headers=server.auth)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _point_image_at(data_dir: Path, item_id: int, name: str) -> None:
    with sqlite3.connect(data_dir / "catalog.sqlite3") as conn:
        conn.execute("UPDATE items SET image_file = ? WHERE id = ?", (name, item_id))


def _not_ready_reason(server: LiveServer, timeout: float = 90.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = httpx.get(server.url + "/ready", timeout=5)
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        assert response.status_code == 503, response.text
        errors = response.json()["checks"].get("errors", {})
        if "startup" in errors:
            return errors["startup"]
        time.sleep(0.2)
    pytest.fail(f"no not-ready reason within {timeout}s:\n{server.log()}")


@pytest.mark.parametrize("hostile", ["../../secret.txt", "/SECRET", "x/../../../secret.txt"])
def test_a_catalogue_naming_a_file_outside_is_never_served(tmp_path: Path, tiny_models: Path, hostile: str) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET_TEXT)
    hostile = hostile.replace("/SECRET", str(secret))
    server = start_server(tmp_path / "a", tiny_models)
    try:
        item_id = _add(server, 1)
        _point_image_at(server.data_dir, item_id, hostile)  # a hostile row arriving while it runs
        response = server.client().get(f"/api/items/{item_id}/image")
        assert response.status_code == 404 and SECRET_TEXT not in response.content
    finally:
        server.stop()
    # The same folder brought in by a restore: refused on open, with the field named in /ready.
    restarted = start_server(tmp_path / "a", tiny_models, wait_ready=False)
    try:
        reason = _not_ready_reason(restarted)
        assert "data folder" in reason and f"items[{item_id}].image_file" in reason
        response = restarted.client().get(f"/api/items/{item_id}/image")
        assert response.status_code in (404, 503) and SECRET_TEXT not in response.content
        assert f"items[{item_id}].image_file" in restarted.log()
    finally:
        restarted.stop()


def test_a_tampered_segment_gives_a_named_not_ready_reason(tmp_path: Path, tiny_models: Path) -> None:
    server = start_server(tmp_path / "b", tiny_models)
    try:
        _add(server, 2)
    finally:
        server.stop()
    segment = sorted((server.data_dir / "segments").glob("fashion-*.seg"))[-1]
    segment.write_bytes(segment.read_bytes()[:-4] + b"\x00\x00\x80\x7f")
    restarted = start_server(tmp_path / "b", tiny_models, wait_ready=False)
    try:
        reason = _not_ready_reason(restarted)
        assert segment.name in reason and "sha256" in reason
    finally:
        restarted.stop()


def _break_manifest(data_dir: Path) -> str:
    """A restore (or a hand edit) leaves a manifest naming a segment outside the folder."""
    manifest = json.loads((data_dir / "manifest.json").read_text())
    manifest["generation"] += 1
    manifest["stores"]["clip"][0]["file"] = "../outside.seg"
    (data_dir / "manifest.tmp").write_text(json.dumps(manifest))
    (data_dir / "manifest.tmp").replace(data_dir / "manifest.json")
    return "stores.clip[0].file leaves the data folder"


def _ready_errors(server: LiveServer) -> dict:
    response = httpx.get(server.url + "/ready", timeout=5)
    assert response.status_code == 503, response.text
    return response.json()["checks"].get("errors", {})


def test_a_write_to_a_folder_gone_malformed_is_a_503_naming_the_reason(tmp_path: Path, tiny_models: Path) -> None:
    server = start_server(tmp_path / "c", tiny_models)
    try:
        _add(server, 3)
        reason = _break_manifest(server.data_dir)
        with server.client() as client:
            response = client.post("/api/items", files={"image": ("x.png", image_bytes(4), "image/png")},
                                   headers=server.auth)
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "not_ready" and reason in error["message"], error
        assert "Traceback" not in server.log()
        assert reason in _ready_errors(server)["data_folder"]  # the same reason /ready names
    finally:
        server.stop()


def test_a_delete_in_a_folder_gone_malformed_is_a_503_naming_the_reason(tmp_path: Path, tiny_models: Path) -> None:
    server = start_server(tmp_path / "d", tiny_models)
    try:
        item_id = _add(server, 5)
        reason = _break_manifest(server.data_dir)
        with server.client() as client:
            response = client.delete(f"/api/items/{item_id}", headers=server.auth)
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "not_ready" and reason in error["message"], error
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def test_a_write_to_a_folder_refused_at_start_names_the_reason(tmp_path: Path, tiny_models: Path) -> None:
    server = start_server(tmp_path / "e", tiny_models)
    try:
        _add(server, 6)
    finally:
        server.stop()
    reason = _break_manifest(server.data_dir)
    restarted = start_server(tmp_path / "e", tiny_models, wait_ready=False)
    try:
        assert reason in _not_ready_reason(restarted)
        with restarted.client() as client:
            response = client.post("/api/items", files={"image": ("y.png", image_bytes(7), "image/png")},
                                   headers=restarted.auth)
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "not_ready" and reason in error["message"], error
    finally:
        restarted.stop()
