"""Two worker processes behind one port: a write through one is seen by the other."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import image_bytes
from tests.server.integration.conftest import LiveServer, start_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("workers"), tiny_models, workers=2)
    yield server
    server.stop()


def _per_worker_counts(server: LiveServer, attempts: int = 60) -> dict[int, int]:
    """Fresh connections land on either worker; collect what each one reports."""
    seen: dict[int, int] = {}
    for _ in range(attempts):
        with httpx.Client(base_url=server.url, timeout=10) as client:  # new connection each time
            try:
                response = client.get("/api/fusion/stats")
            except httpx.TransportError:
                continue  # a worker restarting under a starved CPU; the assertions below still hold
            if response.status_code != 200:
                continue
            stats = response.json()
            seen[stats["worker"]["pid"]] = stats["catalogue"]["items"]
        if len(seen) == 2 and attempts > 20:
            break
    return seen


def _wait_both_ready(server: LiveServer) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = set()
        for _ in range(20):
            with httpx.Client(base_url=server.url, timeout=10) as client:
                try:
                    response = client.get("/api/fusion/stats")
                    ready = client.get("/ready").status_code == 200
                except httpx.TransportError:
                    continue  # as in _per_worker_counts: ask again until the deadline
                if ready and response.status_code == 200:
                    pids.add(response.json()["worker"]["pid"])
        if len(pids) == 2:
            return
        time.sleep(0.5)
    pytest.fail("both workers never became ready:\n" + server.log())


def test_an_item_added_through_one_worker_is_seen_by_both_within_a_second(two_workers: LiveServer) -> None:
    _wait_both_ready(two_workers)
    before = _per_worker_counts(two_workers)
    assert len(before) == 2, f"expected two worker pids, saw {before}"
    with httpx.Client(base_url=two_workers.url, timeout=30) as client:
        response = client.post(
            "/api/items", files={"image": ("a.png", image_bytes(1), "image/png")}, headers=two_workers.auth
        )
        assert response.status_code == 201, response.text
        item_id = response.json()["id"]
    time.sleep(1.0)
    after = _per_worker_counts(two_workers)
    assert len(after) == 2 and set(after.values()) == {max(before.values()) + 1}, (before, after)
    # And every worker can serve it and recommend from it.
    for _ in range(10):
        with httpx.Client(base_url=two_workers.url, timeout=10) as client:
            assert client.get(f"/api/items/{item_id}").status_code == 200
            assert client.post("/api/fusion/recommend", json={"item_id": item_id}).status_code == 200


def test_deletes_propagate_too(two_workers: LiveServer) -> None:
    with httpx.Client(base_url=two_workers.url, timeout=30) as client:
        item_id = client.post(
            "/api/items", files={"image": ("b.png", image_bytes(2), "image/png")}, headers=two_workers.auth
        ).json()["id"]
        assert client.delete(f"/api/items/{item_id}", headers=two_workers.auth).status_code == 200
    time.sleep(1.0)
    for _ in range(10):
        with httpx.Client(base_url=two_workers.url, timeout=10) as client:
            assert client.get(f"/api/items/{item_id}").status_code == 404


def test_metrics_are_summed_across_workers(two_workers: LiveServer) -> None:
    for _ in range(30):
        with httpx.Client(base_url=two_workers.url, timeout=10) as client:
            client.get("/health")
    with httpx.Client(base_url=two_workers.url, timeout=10) as client:
        text = client.get("/metrics").text
    line = next(
        l for l in text.splitlines()
        if l.startswith("http_requests_total") and 'endpoint="/health"' in l and 'status="200"' in l
    )
    assert float(line.rsplit(" ", 1)[1]) >= 30  # one worker alone would show only its share


def test_ready_means_every_worker_and_a_killed_one_makes_it_wait(two_workers: LiveServer) -> None:
    _wait_both_ready(two_workers)
    ready = httpx.get(two_workers.url + "/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["checks"]["workers_ready"] == "2/2"
    victim, _ = _per_worker_counts(two_workers).popitem()
    os.kill(victim, signal.SIGKILL)
    # Until the supervisor's replacement has loaded, no worker may call the server ready.
    seen_waiting = False
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            response = httpx.get(two_workers.url + "/ready", timeout=10)
        except httpx.TransportError:
            continue
        if response.status_code == 503:
            assert response.json()["checks"]["workers_ready"] in {"0/2", "1/2"}, response.text
            seen_waiting = True
        elif seen_waiting:
            break
        time.sleep(0.05)
    assert seen_waiting, "a killed worker never made /ready wait"
    assert response.status_code == 200, two_workers.log()
    # And once ready, every worker that answers is ready.
    for _ in range(20):
        with httpx.Client(base_url=two_workers.url, timeout=10) as client:
            assert client.get("/api/fusion/stats").json()["worker"]["ready"] is True


def test_a_listing_through_the_other_worker_shows_an_item_added_a_moment_ago(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: Path
) -> None:
    """Read-your-writes for listings: the background refresh is made too slow to help here, so
    only the listing's own catch-up can show the new item through the worker that did not add it."""
    server = start_server(tmp_path_factory.mktemp("listing"), tiny_models, workers=2, env={"REFRESH_INTERVAL": "60"})
    try:
        _wait_both_ready(server)
        for seed in range(3):
            with httpx.Client(base_url=server.url, timeout=30) as client:
                response = client.post(
                    "/api/items", files={"image": (f"l{seed}.png", image_bytes(10 + seed), "image/png")}, headers=server.auth
                )
                assert response.status_code == 201, response.text
                item_id = response.json()["id"]
            listed_by: dict[int, bool] = {}
            for _ in range(20):  # fresh connections land on either worker
                with httpx.Client(base_url=server.url, timeout=10) as client:
                    ids = {item["id"] for item in client.get("/api/items", params={"limit": 100}).json()["items"]}
                    pid = client.get("/api/fusion/stats").json()["worker"]["pid"]
                listed_by[pid] = listed_by.get(pid, True) and item_id in ids
            assert all(listed_by.values()), (item_id, listed_by)
    finally:
        server.stop()
