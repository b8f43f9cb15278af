"""The deployed-stack pieces of backup and restore against a fake engine: the snapshot goes to the
deployed server (never a silent fallback to the folder), the restore holds the deploy lock, stops,
swaps, starts, gates and records itself in the history; a damaged backup stops nothing; a server
that does not come back gets the previous data and is started on it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from flashfit_ops.backup.deployed import Deployment, DeployedSnapshotter, find_deployment, restore_deployed
from flashfit_ops.backup.engine import create_backup
from flashfit_ops.backup.store import LocalStore
from flashfit_ops.config import load_config
from flashfit_ops.errors import IntegrityFailure, LockHeld, OperationFailed, Unavailable
from flashfit_ops.execute import history as hist
from flashfit_ops.execute.backend import ContainerInfo
from flashfit_ops.execute.health import ProbeResult
from flashfit_ops.execute.lock import DeployLock, LockInfo, lock_status
from flashfit_ops.execute.service import history_path, lock_path
from flashfit_ops.plan.common import proxy_dir
from tests.integration.ops.test_backup_helpers import make_data, read_tree

PROJECT = "bkunit"
A = f"{PROJECT}-backend-blue-1-20250101000000000aa"
B = f"{PROJECT}-backend-blue-2-20250101000000000aa"


class FakeEngine:
    """The DockerBackend methods the backup code uses, over a dict of container states."""

    def __init__(self, names: tuple[str, ...], proxy_state: str = "exited"):
        self.states = {name: "running" for name in names}
        self.proxy_state = proxy_state
        self.calls: list[tuple[str, str]] = []
        self.on_stop = lambda name: None
        self.on_start = lambda name: None

    def _labels(self, name: str) -> dict[str, str]:
        replica = name.split("-")[3]
        return {"io.flashfit.project": PROJECT, "io.flashfit.role": "backend", "io.flashfit.color": "blue",
                "io.flashfit.version": "v1", "io.flashfit.replica": replica, "io.flashfit.deploy": "20250101000000000aa"}

    def list_containers(self, project: str) -> list[ContainerInfo]:
        found = [ContainerInfo(n, n, self._labels(n), s, "img:v1", 0) for n, s in self.states.items()]
        proxy_labels = {"io.flashfit.project": PROJECT, "io.flashfit.role": "proxy"}
        return found + [ContainerInfo(f"{PROJECT}-proxy", "p", proxy_labels, self.proxy_state, "nginx", 0)]

    def network_exists(self, name: str) -> bool:
        return True

    def container(self, name: str) -> ContainerInfo | None:
        state = self.states.get(name)
        return None if state is None else ContainerInfo(name, name, self._labels(name), state, "img:v1", 1 if state == "exited" else 0)

    def stop(self, name: str, timeout: float = 10.0) -> None:
        self.calls.append(("stop", name))
        self.on_stop(name)
        self.states[name] = "exited"

    def start(self, name: str) -> None:
        self.calls.append(("start", name))
        self.states[name] = "running"
        self.on_start(name)

    def ip_address(self, name: str, network: str) -> str | None:
        return "10.0.0.2" if self.states.get(name) == "running" else None

    def logs(self, name: str, tail: int = 20) -> str:
        return "boom"


@pytest.fixture
def site(tmp_path: Path) -> dict:
    root = tmp_path / "site"
    root.mkdir()
    (root / "flashfit.yml").write_text(
        f"project: {PROJECT}\nvolumes:\n  data: ./data\nhealthcheck:\n  interval: 50ms\ndeploy:\n  lock_wait: 0s\n")
    config = load_config(root / "flashfit.yml")
    data = root / "data"
    files = make_data(data, seed=1, index_mb=0.01)
    store = LocalStore(root / "backups")
    backup_id = create_backup(config, store)["id"]
    (data / "items.json").write_text('{"items": "changed after the backup"}')
    folder = proxy_dir(config)
    folder.mkdir(parents=True)
    (folder / "applied.json").write_text(json.dumps({"upstreams": [A, B]}))
    return {"config": config, "data": data, "files": files, "store": store, "id": backup_id}


def ready_probe(engine: FakeEngine, ready_when=lambda name: True):
    def probe_for(name: str | None):
        def probe(path: str, timeout: float) -> ProbeResult:
            ok = name is None or (engine.states.get(name) == "running" and ready_when(name))
            return ProbeResult(ok, 200 if ok else 503)

        return probe

    return probe_for


def test_restore_holds_the_lock_stops_swaps_starts_and_records_history(site: dict) -> None:
    config, engine = site["config"], FakeEngine((A, B))
    seen = {}

    def on_stop(name: str) -> None:
        seen.setdefault("lock_held", lock_status(lock_path(config)).held)
        seen.setdefault("data_at_stop", (site["data"] / "items.json").read_bytes())

    def on_start(name: str) -> None:
        seen.setdefault("data_at_start", (site["data"] / "items.json").read_bytes())

    engine.on_stop, engine.on_start = on_stop, on_start
    result = restore_deployed(config, site["store"], "latest", backend=engine,
                              service_options={"probe_for": ready_probe(engine)})
    assert seen["lock_held"] and b"changed" in seen["data_at_stop"]
    assert seen["data_at_start"] == site["files"]["items.json"]  # swapped while stopped
    assert sorted(engine.calls) == sorted([("stop", A), ("stop", B), ("start", A), ("start", B)])
    assert [c[0] for c in engine.calls] == ["stop", "stop", "start", "start"]
    assert read_tree(site["data"]) == site["files"]
    assert result["service"]["calls"] == ["stop", "start", "wait_ready"]
    assert result["service"]["downtime_seconds"] is not None
    assert any("proxy was not running" in w for w in result["warnings"])
    assert not lock_status(lock_path(config)).held
    entry = hist.entries(history_path(config))[-1]
    assert entry["kind"] == "restore" and entry["result"] == "success" and entry["backup"] == site["id"]
    assert entry["containers"] == [A, B]
    assert hist.successful_versions(history_path(config)) == []  # a restore is not a deploy of a version


def test_a_damaged_backup_stops_nothing(site: dict) -> None:
    config, engine = site["config"], FakeEngine((A, B))
    blobs = sorted(p for p in (site["store"].root / "blobs").rglob("*") if p.is_file())
    for blob in blobs:
        raw = bytearray(blob.read_bytes())
        raw[0] ^= 0xFF
        blob.write_bytes(bytes(raw))
    before = read_tree(site["data"])
    with pytest.raises(IntegrityFailure):
        restore_deployed(config, site["store"], "latest", backend=engine, service_options={"probe_for": ready_probe(engine)})
    assert engine.calls == []
    assert read_tree(site["data"]) == before
    assert hist.entries(history_path(config))[-1]["result"] == "refused"
    assert not lock_status(lock_path(config)).held


def test_a_server_that_does_not_come_back_gets_the_previous_data_and_is_started_on_it(site: dict) -> None:
    config, engine = site["config"], FakeEngine((A, B))
    before = read_tree(site["data"])
    starts = []

    def on_start(name: str) -> None:
        starts.append(name)
        if len(starts) <= 2:  # the first start (on the restored data) crashes
            engine.states[name] = "exited"

    engine.on_start = on_start
    with pytest.raises(OperationFailed, match="previous data was put back and the server is ready on it again") as caught:
        restore_deployed(config, site["store"], "latest", backend=engine, service_options={"probe_for": ready_probe(engine)})
    assert caught.value.details["undone"] is True
    assert caught.value.details["service"]["calls"] == ["stop", "start", "wait_ready", "stop", "start", "wait_ready"]
    assert read_tree(site["data"]) == before
    assert engine.states == {A: "running", B: "running"}
    assert list(site["data"].parent.glob("data.failed-*"))
    assert hist.entries(history_path(config))[-1]["result"] == "rolled_back"
    assert not lock_status(lock_path(config)).held


def test_a_running_deploy_holds_the_lock(site: dict) -> None:
    config, engine = site["config"], FakeEngine((A, B))
    deploy = DeployLock(lock_path(config))
    deploy.acquire(LockInfo.mine(command="flashfit deploy"))
    try:
        with pytest.raises(LockHeld):
            restore_deployed(config, site["store"], "latest", backend=engine, lock_wait=0.2,
                             service_options={"probe_for": ready_probe(engine)})
    finally:
        deploy.release()
    assert engine.calls == []
    assert hist.entries(history_path(config)) == []


def test_find_deployment_lists_running_containers_live_first(site: dict) -> None:
    engine = FakeEngine((B, A), proxy_state="running")
    deployment, backend = find_deployment(site["config"], engine)
    assert deployment == Deployment(live=(A, B), running=(A, B), live_version="v1", proxy_running=True)
    engine.states = {}
    assert find_deployment(site["config"], engine)[0] is None


SNAPSHOT = {"files": [{"path": "items.json", "size": 2, "sha256": "ab" * 32}], "app_version": "1.0"}


def snapshotter(site: dict, engine: FakeEngine, handler) -> DeployedSnapshotter:
    deployment, _ = find_deployment(site["config"], engine)
    assert deployment is not None
    return DeployedSnapshotter(site["config"], deployment, engine, "k" * 32, transport=httpx.MockTransport(handler))


def test_the_snapshot_goes_to_a_live_container_then_the_proxy(site: dict) -> None:
    engine = FakeEngine((A, B), proxy_state="running")
    asked = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.host)
        if request.url.host == "10.0.0.2":
            raise httpx.ConnectError("refused", request=request)
        assert request.headers["authorization"].startswith("Bearer ")
        return httpx.Response(200, json=SNAPSHOT)

    snap = snapshotter(site, engine, handler).snapshot(site["data"], "_snapshots/x")
    assert asked == ["10.0.0.2", "10.0.0.2", "127.0.0.1"]
    assert snap.via == f"the proxy at http://127.0.0.1:{site['config'].ports.http}"
    assert snap.folder == site["data"] / "_snapshots/x"


def test_a_deployed_server_that_does_not_answer_is_an_error_not_a_folder_read(site: dict) -> None:
    engine = FakeEngine((A,), proxy_state="running")
    engine.states[A] = "exited"  # deployed (live), not running: only the proxy can be asked

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>bad gateway</html>")

    with pytest.raises(Unavailable, match="did not answer the snapshot request") as caught:
        snapshotter(site, engine, handler).snapshot(site["data"], "_snapshots/x")
    assert "--no-server" in (caught.value.hint or "")
    assert any("502" in line for line in caught.value.details["tried"])


def test_a_stop_that_fails_swaps_nothing_and_starts_what_was_stopped(site: dict) -> None:
    config, engine = site["config"], FakeEngine((A, B))
    before = read_tree(site["data"])

    def on_stop(name: str) -> None:
        if name == B:
            raise OperationFailed("the Docker engine refused stop: boom")

    engine.on_stop = on_stop
    with pytest.raises(OperationFailed, match="refused stop"):
        restore_deployed(config, site["store"], "latest", backend=engine, service_options={"probe_for": ready_probe(engine)})
    assert read_tree(site["data"]) == before
    assert engine.states == {A: "running", B: "running"} and ("start", A) in engine.calls
    assert not list(site["data"].parent.glob(".data.restore-*"))  # no staging left behind
    assert hist.entries(history_path(config))[-1]["result"] == "failed"
    assert not lock_status(lock_path(config)).held
