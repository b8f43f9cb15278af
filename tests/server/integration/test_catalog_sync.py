"""Real servers (flashfit-server serve, tiny checkpoints) on separate data folders, one shared
catalogue log in moto's S3 server: what a write through one node looks like through the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.ops.test_backup_helpers import s3_client
from tests.server.conftest import image_bytes
from tests.server.integration.conftest import LiveServer, start_server
from tests.server.integration.sync_helpers import new_bucket, server_env, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path,
            moto_endpoint: str) -> Iterator[tuple[str, list[LiveServer]]]:
    bucket = new_bucket(moto_endpoint)
    servers: list[LiveServer] = []
    try:
        for name in "abc":  # C runs two workers: they share one folder and take turns applying the log
            servers.append(start_server(tmp_path_factory.mktemp(f"node-{name}"), tiny_models,
                                        workers=2 if name == "c" else 1, env=server_env(moto_endpoint, bucket)))
        yield bucket, servers
    finally:
        for server in servers:
            server.stop()


def _add(server: LiveServer, seed: int) -> int:
    with server.client() as client:
        response = client.post("/api/items", files={"image": (f"{seed}.png", image_bytes(seed), "image/png")},
                               data={"name": f"item {seed}"}, headers=server.auth)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def _ids(server: LiveServer) -> set[int]:
    ids: set[int] = set()
    with server.client() as client:
        offset = 0
        while True:
            page = client.get("/api/items", params={"offset": offset, "limit": 100}).json()
            ids |= {item["id"] for item in page["items"]}
            offset += 100
            if offset >= page["total"]:
                return ids


def _recommendable(server: LiveServer, item_id: int) -> bool:
    with server.client() as client:
        return client.post("/api/fusion/recommend", json={"item_id": item_id, "limit": 5}).status_code == 200


def test_an_item_added_through_one_node_is_recommendable_through_every_other(cluster: tuple[str, list[LiveServer]]) -> None:
    _, (a, b, c) = cluster
    item_id = _add(a, 1)
    for server in (b, c):
        wait_for(lambda s=server: _recommendable(s, item_id), f"item {item_id} recommendable through {server.url}")
        with server.client() as client:
            assert client.get(f"/api/items/{item_id}").json()["name"] == "item 1"
            assert client.get(f"/api/items/{item_id}/image").content == image_bytes(1)
    # And the other way round: a delete through C reaches A.
    with c.client() as client:
        assert client.delete(f"/api/items/{item_id}", headers=c.auth).status_code == 200
    wait_for(lambda: item_id not in _ids(a), f"delete of {item_id} seen through A")


def test_concurrent_writers_on_two_nodes_lose_no_acknowledged_item(cluster: tuple[str, list[LiveServer]]) -> None:
    _, (a, b, c) = cluster
    acknowledged: list[int] = []
    lock = threading.Lock()
    failures: list[str] = []

    def write(server: LiveServer, seeds: range) -> None:
        for seed in seeds:
            try:
                item_id = _add(server, seed)
            except AssertionError as exc:
                failures.append(str(exc))
                continue
            with lock:
                acknowledged.append(item_id)

    threads = [threading.Thread(target=write, args=(server, range(100 + 10 * k, 104 + 10 * k)))
               for k, server in enumerate((a, b, a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert len(acknowledged) == len(set(acknowledged)) == 16
    for server in (a, b, c):
        wait_for(lambda s=server: set(acknowledged) <= _ids(s), f"all 16 items through {server.url}")
    with c.client() as client:
        health = client.get("/health").json()["catalog_sync"]
    assert health["problem"] is None and health["applied_seq"] >= 16


def test_a_late_node_with_an_empty_folder_serves_the_whole_catalogue_before_it_is_ready(
        cluster: tuple[str, list[LiveServer]], moto_endpoint: str, tiny_models: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    bucket, (a, _, _) = cluster
    _add(a, 300)
    expected = _ids(a)
    late = start_server(tmp_path_factory.mktemp("node-late"), tiny_models, env=server_env(moto_endpoint, bucket),
                        wait_ready=False)
    answers: set[int] = set()
    try:
        def ready() -> bool:
            try:
                answers.add(httpx.get(late.url + "/ready", timeout=5).status_code)
            except httpx.HTTPError:
                return False
            return 200 in answers

        wait_for(ready, "the late node ready")
        assert answers <= {200, 503}, answers  # while loading and catching up: 503, never a 500
        assert expected <= _ids(late)  # at the first 200 of /ready, not a moment later
        with late.client() as client:
            assert client.get("/ready").json()["checks"]["catalog_sync"].startswith("following")
    finally:
        late.stop()


def test_a_node_refuses_a_tampered_segment_and_is_not_ready_with_the_reason_named(
        cluster: tuple[str, list[LiveServer]], moto_endpoint: str, tiny_models: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    bucket, (a, _, _) = cluster
    _add(a, 400)
    s3 = s3_client(moto_endpoint)
    # A segment the log names (the last record's): the bucket also holds segments of writers that
    # lost a race, which no record names and no joiner reads.
    newest = s3.list_objects_v2(Bucket=bucket, Prefix="shop/log/")["Contents"][-1]["Key"]
    record = json.loads(s3.get_object(Bucket=bucket, Key=newest)["Body"].read())
    key = f"shop/segments/{next(iter(record['segments'].values()))['sha256']}"
    data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[-1] ^= 0x01
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    late = start_server(tmp_path_factory.mktemp("node-tampered"), tiny_models,
                        env=server_env(moto_endpoint, bucket), wait_ready=False)
    try:
        def refused() -> bool:
            try:
                response = httpx.get(late.url + "/ready", timeout=5)
            except httpx.HTTPError:
                return False
            return response.json().get("status") == "failed"

        wait_for(refused, "the node reports the tampered segment")
        with late.client() as client:
            body = client.get("/ready")
        assert body.status_code == 503
        reason = body.json()["checks"]["errors"]["catalog_sync"]
        assert key.removeprefix("shop/") in reason and "does not match its sha256" in reason
    finally:
        late.stop()
        s3.put_object(Bucket=bucket, Key=key, Body=bytes(data[:-1] + bytes([data[-1] ^ 0x01])))


def test_ingest_on_any_node_commits_through_the_shared_log(cluster: tuple[str, list[LiveServer]], moto_endpoint: str,
                                                           tiny_models: Path, tmp_path: Path) -> None:
    bucket, (a, _, _) = cluster
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for seed in (501, 502):
        (pictures / f"ingested-{seed}.png").write_bytes(image_bytes(seed))
    env = {**os.environ, **server_env(moto_endpoint, bucket), "MODEL_CACHE_DIR": str(tiny_models),
           "VECTOR_STORE_DIR": str(tmp_path / "ingest-node"), "TORCH_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "flashfit_server.cli", "ingest", str(pictures)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    wait_for(lambda: {"ingested-501", "ingested-502"} <= _all_names(a), "ingested items through A")


def _all_names(server: LiveServer) -> set[str]:
    with server.client() as client:
        return {client.get(f"/api/items/{i}").json()["name"] for i in _ids(server)}


def test_doctor_judges_what_the_replicas_report_healthy(cluster: tuple[str, list[LiveServer]]) -> None:
    """The doctor check reads /health's catalog_sync: the format the servers write is the one it judges."""
    from flashfit_ops.doctor.checks.catalog import judge
    from flashfit_ops.doctor.result import OK

    bucket, servers = cluster
    _add(servers[0], 600)
    head = max(_health(s)["log_head_seq"] for s in servers)
    wait_for(lambda: all(_health(s)["applied_seq"] >= head for s in servers), "every replica at the head")
    statuses = {s.url: _health(s) for s in servers}
    finding = judge(statuses, f"s3://{bucket}/shop")
    assert finding.status == OK, finding


def _health(server: LiveServer) -> dict:
    with server.client() as client:
        return client.get("/health").json()["catalog_sync"]
