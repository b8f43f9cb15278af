"""Issue 11, the last row: the only live backend killed or stopped by hand. With
deploy.spare_replicas: 1 a warm spare of the live version runs out of rotation behind the standby
slots; the keeper follows the engine's events and relinks the dead backend's slots to the spare
(no model load while nothing serves), then starts the dead one again as the next spare. Real
engine, real nginx, the fake backend (its BOOT_DELAY stands for the model load)."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from flashfit_ops.execute.proxy import read_files, short_folder, slot_links, slot_target, standby_socket
from tests.integration.ops.fake_backend.harness import docker_client, fake_image, make_project, wait_on_condition

pytestmark = pytest.mark.integration


@pytest.fixture
def project(tmp_path: Path):
    project = make_project(tmp_path, "sp")
    project.write_config(
        healthcheck__start_period="2s",
        deploy__monitor_window="1s",
        deploy__drain_timeout="5s",
        deploy__strategy="blue-green",
        deploy__spare_replicas=1,
    )
    project.tag(fake_image("good", BOOT_DELAY="1"), "v1")
    yield project
    project.cleanup()


def container(name: str):
    return docker_client().containers.get(name)


def sockets(project) -> Path:
    return project.root / ".flashfit" / "sockets"


def ready_on_socket(project, name: str) -> bool:
    with short_folder(sockets(project)) as folder:  # a socket address holds at most 107 bytes
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=f"{folder}/{name}.sock"), timeout=2.0) as client:
                return client.get("http://spare/ready").status_code == 200
        except httpx.HTTPError:
            return False


def standby_links(project) -> set[str]:
    count = len(slot_links(sockets(project)))
    return {slot_target(sockets(project), n, standby_socket(n)) or "" for n in range(1, count + 1)}


def deployed_with_a_spare(project) -> tuple[str, str]:
    """Deploy v1; (the live container, the spare)."""
    result = project.flashfit("deploy", "--version", "v1", "--json")
    assert result.code == 0, result.stderr
    kinds = [s["kind"] for s in result.json()["plan"]]
    assert kinds[-2:] == ["ensure_spares", "ensure_keeper"]
    live = slot_target(sockets(project), 1) or ""
    running = {c.name for c in project.backends(state="running", version="v1")}
    assert live in running and len(running) == 2
    (spare,) = running - {live}
    assert set(slot_links(sockets(project)).values()) == {live}
    assert standby_links(project) == {spare}  # out of rotation: nginx tries it only when every slot fails
    return live, spare


def fails_over(project, dead: str, spare: str) -> None:
    """Every slot now links to the spare, which serves, and the dead one comes back as the spare."""
    wait_on_condition(lambda: set(slot_links(sockets(project)).values()) == {spare}, 60, what="the keeper's failover to the spare")
    assert project.served_version() == "v1"
    assert read_files(project.root / ".flashfit" / "proxy").applied == (spare,)  # status reads the truth
    wait_on_condition(lambda: standby_links(project) == {dead}, 60, what="the dead backend to become the spare")
    wait_on_condition(lambda: ready_on_socket(project, dead), 60, what="the dead backend ready again, as the spare")
    status = project.flashfit("status", "--json")
    assert status.code == 0, status.stdout
    doc = status.json()
    assert doc["serving"] and doc["live_version"] == "v1"
    assert {c["name"]: (c["live"], c["spare"]) for c in doc["containers"]} == {spare: (True, False), dead: (False, True)}


def test_killed_only_live_backend_fails_over_to_the_spare_without_an_operator(project) -> None:
    live, spare = deployed_with_a_spare(project)
    container(live).kill()
    fails_over(project, live, spare)
    # And again the other way: the spare that took over is killed, the restarted one takes over.
    container(spare).kill()
    fails_over(project, spare, live)


def test_stopped_only_live_backend_fails_over_to_the_spare_without_an_operator(project) -> None:
    live, spare = deployed_with_a_spare(project)
    stopped = container(live)
    stopping = threading.Thread(target=stopped.stop, kwargs={"timeout": 10})
    stopping.start()  # the keeper acts on the stop's SIGTERM, while the container still runs
    try:
        fails_over(project, live, spare)
    finally:
        stopping.join()


def test_repair_and_the_next_deploy_keep_the_spare(project) -> None:
    live, spare = deployed_with_a_spare(project)
    repaired = project.flashfit("repair", "--json")
    assert repaired.code == 0 and repaired.json()["plan"] == []  # a spare is not a leftover
    result = project.flashfit("deploy", "--version", "v1", "--json")
    assert result.code == 0, result.stderr
    running = {c.name for c in project.backends(state="running")}
    new_live = slot_target(sockets(project), 1)
    assert live not in running and spare not in running and new_live in running and len(running) == 2
    assert standby_links(project) == running - {new_live}
