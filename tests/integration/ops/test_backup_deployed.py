"""Backup and restore of a stack `flashfit deploy` runs (the real server image behind the real
nginx, no backend port published): the snapshot is taken through the deployed server, and the
restore stops and starts its containers with the deploy machinery, under the deploy lock, recorded
in the history."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from flashfit_server.auth import mint_token
from tests.integration.ops.fake_backend.harness import Project, make_project, real_server_image, tiny_models, wait_on_condition
from tests.server.conftest import image_bytes

pytestmark = pytest.mark.integration

SERVER_UID = 1000  # the server image runs as this user


class Watcher:
    """GET /ready through the proxy every 20 ms on fresh connections, from its own thread: when
    clients were refused, and how (HTTP status from the proxy, or no answer at all)."""

    def __init__(self, url: str):
        self.url = url
        self.seen: list[tuple[float, int | None]] = []  # (monotonic time, status or None for no answer)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status: int | None = httpx.get(self.url, timeout=10, headers={"Connection": "close"}).status_code
            except httpx.HTTPError:
                status = None
            self.seen.append((time.monotonic(), status))
            self._stop.wait(0.02)

    def __enter__(self) -> "Watcher":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    @property
    def failed(self) -> list[tuple[float, int | None]]:
        return [(t, s) for t, s in self.seen if s is None or not 200 <= s < 300]

    @property
    def window(self) -> float:
        failed = self.failed
        return failed[-1][0] - failed[0][0] if failed else 0.0


class Stack:
    def __init__(self, project: Project, data: Path):
        self.project = project
        self.data = data
        secret = next(line.split("=", 1)[1] for line in (project.root / ".env").read_text().splitlines()
                      if line.startswith("JWT_SECRET_KEY="))
        self.headers = {"Authorization": f"Bearer {mint_token(secret, 'backup-tests', 1800)}"}

    def add(self, seed: int, name: str) -> int:
        response = httpx.post(f"{self.project.url}/api/items", headers=self.headers, data={"name": name, "category": "tops"},
                              files={"image": (f"{name}.png", image_bytes(seed), "image/png")}, timeout=60)
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    def delete(self, item_id: int) -> None:
        response = httpx.delete(f"{self.project.url}/api/items/{item_id}", headers=self.headers, timeout=30)
        assert response.status_code == 200, response.text

    def catalogue(self) -> list[tuple[int, str]]:
        response = httpx.get(f"{self.project.url}/api/items", params={"limit": 100}, timeout=10)
        assert response.status_code == 200, response.text
        return sorted((item["id"], item["name"]) for item in response.json()["items"])

    def started_at(self) -> dict[str, str]:
        return {c.name: c.attrs["State"]["StartedAt"] for c in self.project.backends(state="running")}

    def last_history(self) -> dict[str, Any]:
        result = self.project.flashfit("history", "--json")
        assert result.code == 0, result.stderr
        return result.json()["history"][-1]

    def lock_free(self) -> bool:
        result = self.project.flashfit("lock", "status", "--json")
        return result.code == 0 and not result.json()["held"]


def deployed_stack(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, prefix: str, **config: Any):
    project = make_project(tmp_path, prefix)
    try:
        data = tmp_path / "data"
        data.mkdir()
        os.chown(data, SERVER_UID, SERVER_UID)
        models = tiny_models(tmp_path_factory.getbasetemp())
        project.write_config(volumes__models=str(models), volumes__data=str(data), backup__target="file://./backups", **config)
        project.tag(real_server_image(), "v1")
        deployed = project.flashfit("deploy", "--version", "v1")
        assert deployed.code == 0, deployed.stderr
        yield Stack(project, data)
    finally:
        project.cleanup()


@pytest.fixture
def rolling(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory):
    yield from deployed_stack(tmp_path, tmp_path_factory, "bkr", deploy__strategy="rolling", replicas=2)


@pytest.fixture
def single(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory):
    yield from deployed_stack(tmp_path, tmp_path_factory, "bks", deploy__strategy="single")


def test_round_trip_through_a_deployed_server(rolling: Stack) -> None:
    stack = rolling
    shirt = stack.add(1, "shirt")
    stack.add(2, "shoes")
    stack.add(3, "jacket")
    old = stack.catalogue()
    assert [name for _, name in old] == ["shirt", "shoes", "jacket"]

    made = stack.project.flashfit("backup", "create", "--json")
    assert made.code == 0, made.stderr
    backup = made.json()
    assert backup["source"] == "server-snapshot", backup  # through the deployed server, not the live folder
    assert backup["via"].startswith("container ") and stack.project.name in backup["via"]
    assert not any("read the data folder directly" in w for w in backup["warnings"])
    assert not list((stack.data / "_snapshots").iterdir())
    listed = stack.project.flashfit("backup", "list")
    assert listed.code == 0 and "server-snapshot" in listed.stdout, listed.stderr

    stack.add(4, "hat")
    stack.delete(shirt)
    assert [name for _, name in stack.catalogue()] == ["shoes", "jacket", "hat"]
    before = stack.started_at()
    assert len(before) == 2

    with Watcher(f"{stack.project.url}/ready") as watcher:
        restored = stack.project.flashfit("restore", "latest", "--json")
    assert restored.code == 0, restored.stderr
    # The proxy kept running: clients got 502/503/504 from it during the swap, never a dead port,
    # and the server serves again by the time the restore returns.
    assert watcher.failed and {s for _, s in watcher.failed} <= {502, 503, 504}, watcher.failed
    assert watcher.seen[-1][1] == 200
    result = restored.json()
    assert result["id"] == backup["id"]
    service = result["service"]
    assert sorted(service["containers"]) == sorted(before) and service["calls"] == ["stop", "start", "wait_ready"]
    assert service["downtime_seconds"] is not None and service["downtime_seconds"] > 0
    after = stack.started_at()
    assert sorted(after) == sorted(before)  # the same containers, started again
    assert all(after[name] != before[name] for name in before)

    assert stack.catalogue() == old  # exactly the old catalogue, through the proxy
    response = httpx.post(f"{stack.project.url}/api/fusion/recommend", json={"item_id": shirt, "limit": 5}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["recommendations"]
    # The restored tree belongs to the server's user: it can write to it (images/ included).
    scarf = stack.add(5, "scarf")
    # The other replica sees the commit within its refresh interval (0.2 s).
    wait_on_condition(lambda: (scarf, "scarf") in stack.catalogue(), 10, what="the new item on every replica")
    assert list(stack.data.parent.glob("data.previous-*"))

    entry = stack.last_history()
    assert entry["kind"] == "restore" and entry["result"] == "success" and entry["backup"] == backup["id"], entry
    shown = stack.project.flashfit("history")
    assert shown.code == 0 and shown.stdout.splitlines()[-1].split()[2:3] == ["restore"], shown.stdout
    assert stack.lock_free()
    print(f"\nstop {service['stop_seconds']}s; backup {backup['seconds']:.2f}s ({backup['files']} files, via {backup['via']}); restore {result['seconds']:.2f}s, "
          f"downtime {service['downtime_seconds']:.2f}s (clients refused for {watcher.window:.2f}s: "
          f"{len(watcher.failed)} of {len(watcher.seen)} probes), ready {service['ready_seconds']}")


def test_a_damaged_backup_is_refused_and_the_server_keeps_serving(single: Stack) -> None:
    stack = single
    stack.add(1, "shirt")
    stack.add(2, "shoes")
    made = stack.project.flashfit("backup", "create", "--json")
    assert made.code == 0, made.stderr
    backup = made.json()
    assert backup["source"] == "server-snapshot"
    stack.add(3, "hat")
    current = stack.catalogue()
    before = stack.started_at()

    # Damage the blob of the catalogue in place, keeping its size (only its hash can tell).
    backups = stack.project.root / "backups"
    manifest = json.loads((backups / "snapshots" / f"{backup['id']}.json").read_text())
    entry = next(f for f in manifest["files"] if f["path"] == "data/catalog.sqlite3")
    blob = next(p for p in (backups / "blobs").rglob(f"{entry['blob']}*") if p.is_file())
    raw = bytearray(blob.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    blob.write_bytes(bytes(raw))

    refused = stack.project.flashfit("restore", "latest", "--json")
    assert refused.code == 5, (refused.stdout, refused.stderr)
    assert "catalog.sqlite3" in refused.json()["message"]
    assert stack.started_at() == before  # never stopped
    assert stack.catalogue() == current
    assert not list(stack.data.parent.glob("data.previous-*"))
    entry = stack.last_history()
    assert entry["kind"] == "restore" and entry["result"] == "refused", entry
    assert stack.lock_free()

    # A deployed server that does not answer: the backup refuses (exit 3) rather than read the
    # folder it may be writing, unless told to with --no-server.
    for container in stack.project.backends(state="running"):
        container.stop(timeout=10)
    down = stack.project.flashfit("backup", "create", "--json")
    assert down.code == 3, (down.stdout, down.stderr)
    assert "--no-server" in down.json().get("hint", "")
    cold = stack.project.flashfit("backup", "create", "--no-server", "--json")
    assert cold.code == 0, cold.stderr
    assert cold.json()["source"] == "data-folder"
