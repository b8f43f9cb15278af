"""Backups to a local folder (the default target), restore safety (hostile manifests, no space,
a server that does not come back), and the round trip through a real server's snapshot endpoint."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from flashfit_ops.backup.blobs import sha256_bytes
from flashfit_ops.backup.engine import create_backup, restore_backup
from flashfit_ops.backup.service import NoServiceControl
from flashfit_ops.backup.snapshot import HttpSnapshotter, admin_token
from flashfit_ops.backup.store import LocalStore, open_store
from flashfit_ops.config import load_config
from flashfit_ops.errors import IntegrityFailure, OperationFailed

from .test_backup_helpers import free_port, make_data, read_tree, run_cli, wait_for_port, write_config

pytestmark = pytest.mark.integration


@pytest.fixture
def site(tmp_path: Path) -> dict:
    config = write_config(tmp_path / "site", target="file://./backups")
    data = tmp_path / "site" / "data"
    return {"config": config, "data": data, "files": make_data(data, seed=3), "backups": tmp_path / "site" / "backups"}


def cli(site: dict, *args: str):  # noqa: ANN201
    return run_cli(*args, "-c", str(site["config"]), "--json")


def test_local_round_trip_with_the_default_target(site: dict) -> None:
    (site["data"] / "outside-link").symlink_to("/etc/hostname")
    code, result, out = cli(site, "backup", "create", "--no-server")
    assert code == 0, out
    assert any("outside-link" in w for w in result["warnings"])  # links are skipped, and said so
    assert (site["backups"] / "snapshots" / f"{result['id']}.json").is_file()
    again = cli(site, "backup", "create", "--no-server")[1]
    assert again["uploaded_bytes"] == 0
    shutil.rmtree(site["data"])
    code, restored, out = cli(site, "restore", result["id"])
    assert code == 0, out
    assert read_tree(site["data"]) == site["files"]
    assert restored["previous"] is None  # nothing was there to keep


def test_interrupted_manifest_write_leaves_no_backup(site: dict) -> None:
    code, _, _ = cli(site, "backup", "create", "--no-server")
    snapshots = site["backups"] / "snapshots"
    (snapshots / ".tmp-0123456789abcdef").write_bytes(b'{"format": 1, "id": "half')  # killed mid-write
    code, listing, _ = cli(site, "backup", "list")
    assert code == 0 and len(listing["backups"]) == 1


def _hostile_manifest(site: dict, entry: dict) -> str:
    """A manifest written by an attacker who controls the backup target."""
    backup_id = "20990101T000000Z-deadbeef"
    data = b"owned"
    sha = sha256_bytes(data)
    blob = site["backups"] / "blobs" / sha[:2] / sha
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    files = [{"path": "data/ok.json", "size": 5, "sha256": sha, "blob": sha, "compression": "none",
              "stored_size": 5, "mode": 0o644, "encryption": None}]
    files.append({**files[0], **entry})
    doc = {"format": 1, "id": backup_id, "time": "2099-01-01T00:00:00+00:00", "files": files}
    (site["backups"] / "snapshots").mkdir(parents=True, exist_ok=True)
    (site["backups"] / "snapshots" / f"{backup_id}.json").write_text(json.dumps(doc))
    return backup_id


@pytest.mark.parametrize(
    "entry",
    [
        {"path": "data/../../../../tmp/flashfit-owned"},
        {"path": "/tmp/flashfit-owned"},
        {"path": "data/link", "type": "symlink", "target": "/etc"},
        {"path": "data/dev", "mode": 0o20666},
        {"path": "config/../../flashfit-owned"},
    ],
)
def test_hostile_manifest_paths_are_refused(site: dict, entry: dict, tmp_path: Path) -> None:
    cli(site, "backup", "create", "--no-server")
    backup_id = _hostile_manifest(site, entry)
    before = read_tree(site["data"])
    code, error, out = cli(site, "restore", backup_id)
    assert code == 5, out
    assert "unsafe" in error["message"]
    assert read_tree(site["data"]) == before
    assert not Path("/tmp/flashfit-owned").exists()
    assert not list(site["data"].parent.glob(".data.restore-*"))
    code, report, out = cli(site, "backup", "verify", backup_id)
    assert code == 5, out


def test_link_planted_in_the_staging_path_is_not_followed(site: dict, tmp_path: Path) -> None:
    config = load_config(site["config"])
    store = LocalStore(site["backups"])
    backup_id = create_backup(config, store)["id"]
    outside = tmp_path / "outside"
    outside.mkdir()
    staging = site["data"].parent / f".data.restore-{backup_id}"
    staging.mkdir()
    (staging / "images").symlink_to(outside)  # left by someone else; the restore starts clean
    restore_backup(config, store, backup_id, service=NoServiceControl())
    assert list(outside.iterdir()) == []
    assert read_tree(site["data"]) == site["files"]


def test_no_space_left_is_a_clear_message_and_touches_nothing(site: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(site["config"])
    store = LocalStore(site["backups"])
    backup_id = create_backup(config, store)["id"]
    (site["data"] / "items.json").write_text("{}")
    before = read_tree(site["data"])
    with pytest.raises(OperationFailed, match="no space left") as caught:
        restore_backup(config, store, backup_id, service=NoServiceControl(), disk_free=lambda p: 10_000)
    assert "need" in caught.value.message
    assert read_tree(site["data"]) == before

    # The check passed but the disk fills up while writing: same message, staging removed.
    def full(self: LocalStore, key: str, path: Path, on_bytes=None) -> None:  # noqa: ANN001
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(LocalStore, "get_file", full)
    with pytest.raises(OperationFailed, match="no space left"):
        restore_backup(config, store, backup_id, service=NoServiceControl())
    assert read_tree(site["data"]) == before
    assert not list(site["data"].parent.glob(".data.restore-*"))


def test_server_that_does_not_come_back_gets_the_previous_data(site: dict) -> None:
    config = load_config(site["config"])
    store = LocalStore(site["backups"])
    backup_id = create_backup(config, store)["id"]
    (site["data"] / "items.json").write_text('{"items": "current"}')
    before = read_tree(site["data"])
    calls = []

    class Broken:
        name = "broken"

        def stop(self) -> None:
            calls.append("stop")

        def start(self) -> None:
            calls.append("start")

        def wait_ready(self, timeout: float) -> None:
            calls.append("wait")
            if calls.count("wait") == 1:
                raise OperationFailed("not ready within 1s")

    with pytest.raises(OperationFailed, match="previous data was put back"):
        restore_backup(config, store, backup_id, service=Broken(), ready_timeout=1)
    assert calls[:3] == ["stop", "start", "wait"] and calls[3:] == ["stop", "start", "wait"]  # back, and ready, on the old data
    assert read_tree(site["data"]) == before
    assert list(site["data"].parent.glob("data.failed-*"))


def test_restore_refuses_while_an_unmanaged_server_answers(site: dict) -> None:
    cli(site, "backup", "create", "--no-server")
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    class Ok(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        text = site["config"].read_text()
        import re

        site["config"].write_text(re.sub(r"backend: \d+", f"backend: {server.server_address[1]}", text))
        before = read_tree(site["data"])
        code, error, out = cli(site, "restore", "latest")
        assert code == 2 and "server answers" in error["message"], out
        assert read_tree(site["data"]) == before
    finally:
        server.shutdown()


# --- through the real server -----------------------------------------------------------------------


class UvicornService:
    """A ServiceControl for a server run by uvicorn in a subprocess (what the Docker one does with
    containers)."""

    name = "uvicorn"

    def __init__(self, port: int, env: dict[str, str], log: Path):
        self.port, self.env, self.log = port, env, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "flashfit_server.main:app", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None

    def wait_ready(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc is not None and self.proc.poll() is not None:
                raise OperationFailed(f"the server exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        raise OperationFailed(f"not ready within {timeout}s: {self.log.read_text()[-2000:]}")


def test_round_trip_through_the_servers_snapshot_endpoint(tmp_path: Path) -> None:
    from flashfit_server.models.tiny import make_checkpoints

    from tests.server.conftest import image_bytes

    models = tmp_path / "models"
    make_checkpoints(models, seed=0)
    port = free_port()
    secret = "a-test-jwt-secret-that-is-long-enough-0123"
    site_dir = tmp_path / "site"
    config_path = write_config(site_dir, target="file://./backups")
    config_path.write_text(config_path.read_text().replace("backend:", f"backend: {port} #"))
    data = site_dir / "data"
    data.mkdir()
    env = {**os.environ, "MODEL_CACHE_DIR": str(models), "VECTOR_STORE_DIR": str(data), "JWT_SECRET_KEY": secret,
           "ENVIRONMENT": "development", "LOG_FORMAT": "text", "HF_HUB_OFFLINE": "1", "TORCH_THREADS": "1"}
    service = UvicornService(port, env, tmp_path / "server.log")
    service.start()
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {admin_token(secret)}"}

    def add(seed: int, name: str) -> None:
        response = httpx.post(f"{base}/api/items", headers=headers, data={"name": name},
                              files={"image": (f"{name}.png", image_bytes(seed), "image/png")}, timeout=60)
        assert response.status_code == 201, response.text

    def names() -> list[str]:
        response = httpx.get(f"{base}/api/items", params={"limit": 100}, timeout=10)
        return sorted(item["name"] for item in response.json()["items"])

    try:
        service.wait_ready(120)
        add(1, "shirt")
        add(2, "shoes")
        assert names() == ["shirt", "shoes"]

        # the backup goes through POST /api/admin/snapshot (JWT from the environment, as an operator has it)
        code, result, out = run_cli("backup", "create", "-c", str(config_path), "--json", env={"JWT_SECRET_KEY": secret})
        assert code == 0, out
        assert result["source"] == "server-snapshot" and result["server_version"]
        assert not list((data / "_snapshots").iterdir())  # the snapshot folder is removed afterwards
        paths = {e["path"] for e in json.loads((site_dir / "backups" / "snapshots" / f"{result['id']}.json").read_text())["files"]}
        assert {"data/catalog.sqlite3", "data/manifest.json"} <= paths and any(p.startswith("data/images/") for p in paths)
        assert any(p.startswith("data/segments/") for p in paths)
        assert not any(p.endswith(("-wal", "-shm")) for p in paths)  # the live catalogue's log never
        assert not any(p.startswith("data/_snapshots") for p in paths)

        add(3, "hat")
        assert names() == ["hat", "shirt", "shoes"]
        code, error, out = run_cli("restore", "latest", "-c", str(config_path), "--json")
        assert code == 2, out  # the CLI has no way to restart this server: it refuses

        config = load_config(config_path)
        restored = restore_backup(config, open_store(config.backup.target, config), result["id"], service=service,
                                  config_file=config_path, ready_timeout=120)
        assert names() == ["shirt", "shoes"]
        assert restored["previous"] and Path(restored["previous"]).is_dir()
    finally:
        service.stop()


@pytest.mark.parametrize(
    "hostile",
    [
        {"items.json": {"items": [{"id": 1, "name": "x", "image_file": "../../../etc/passwd"}]}},
        {"items.json": {"items": [{"id": 1, "name": "x", "image_file": "/etc/shadow"}]}},
        {"clip.json": {"name": "clip", "index_file": "../../secrets/flashfit.env", "size": 1}},
        {"manifest.json": {"format": "flashfit-store/2", "generation": 1, "dims": {"clip": 2, "blip": 2, "fashion": 2},
                           "stores": {"clip": [{"file": "segments/../../../etc/passwd", "seq": 1, "count": 1,
                                                "size": 1, "sha256": "0" * 64}], "blip": [], "fashion": []},
                           "tombstones": []}},
    ],
)
def test_restore_refuses_data_that_names_files_outside_the_data_folder(site: dict, hostile: dict) -> None:
    for rel, doc in hostile.items():
        (site["data"] / rel).write_text(json.dumps(doc))
    code, created, out = cli(site, "backup", "create", "--no-server")
    assert code == 0, out
    for rel in hostile:
        (site["data"] / rel).unlink()
    before = read_tree(site["data"])
    code, error, out = cli(site, "restore", created["id"])
    assert code == 5, out
    assert "unsafe data" in error["message"] and ("image_file" in error["message"] or "file" in error["message"])
    assert read_tree(site["data"]) == before
    assert not list(site["data"].parent.glob(".data.restore-*"))


def test_a_backup_after_one_new_item_uploads_only_that_items_small_files(site: dict) -> None:
    """Segments are immutable and content-addressed: the second backup reuses every old one."""
    from flashfit_server.catalog import Item
    from flashfit_server.datastore import DataStore, NewItem
    from flashfit_server.storebench import random_unit_vectors

    shutil.rmtree(site["data"])
    dims = {"clip": 512, "blip": 512, "fashion": 512}
    store = DataStore(site["data"], compact_in_background=False)
    store.open(dims, background=False)
    ids = np.arange(1, 5001, dtype=np.int64)
    store.add_vectors_unchecked(ids, {n: random_unit_vectors(5000, d, seed=i) for i, (n, d) in enumerate(dims.items())},
                                [Item(id=int(i), name=f"item {i}") for i in ids])
    config = load_config(site["config"])
    first = create_backup(config, LocalStore(site["backups"]))
    store.add_items([NewItem(b"\x89PNG new", "png", {n: random_unit_vectors(1, d, 9)[0] for n, d in dims.items()},
                             name="new", caption="")])
    second = create_backup(config, LocalStore(site["backups"]))
    segment_bytes = sum(p.stat().st_size for p in (site["data"] / "segments").iterdir())
    assert first["uploaded_bytes"] >= segment_bytes // 2  # float32 barely compresses
    # new: 3 small segments, the image, the manifest, the catalogue and its WAL and shared-memory files
    assert second["new_blobs"] <= 8
    assert second["uploaded_bytes"] < first["uploaded_bytes"] / 20
    print(f"first backup uploaded {first['uploaded_bytes']} bytes, after one new item {second['uploaded_bytes']}")
