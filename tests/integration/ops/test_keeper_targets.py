"""Monitoring follows the keeper: with one live backend, one warm spare and monitoring on, the
live backend killed (or stopped) by hand fails over to the spare, and the scrape targets file, and
so Prometheus, then names the spare that serves and no longer the dead container (whose `down`
would page about a replica already replaced). Real engine, real nginx, real Prometheus (built from
Debian packages), the fake backend (it answers /metrics in the text format)."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from flashfit_ops.proxy_files import slot_links
from tests.integration.ops.fake_backend.harness import docker_client, fake_image, free_port, make_project, wait_on_condition
from tests.integration.ops.test_warm_spare import ready_on_socket

pytestmark = pytest.mark.integration

TARGETS = ".flashfit/monitoring/prometheus/targets/backend.json"


@pytest.fixture
def project(tmp_path: Path):
    project = make_project(tmp_path, "kt")
    project.prometheus_port = free_port()
    project.write_config(
        healthcheck__start_period="2s",
        deploy__monitor_window="1s",
        deploy__drain_timeout="5s",
        deploy__spare_replicas=1,
        ports__prometheus=project.prometheus_port,
        ports__alertmanager=free_port(),
        services__grafana={"enabled": False},
        monitoring={"enabled": True, "scrape_interval": "1s"},
    )
    project.tag(fake_image("good", BOOT_DELAY="1"), "v1")
    yield project
    project.cleanup()


def in_targets_file(project) -> list[str]:
    import json

    return [g["labels"]["container"] for g in json.loads((project.root / TARGETS).read_text())]


def scraped(project) -> dict[str, str]:
    """{container: health} of Prometheus's active backend targets ({} while it does not answer)."""
    try:
        response = httpx.get(f"http://127.0.0.1:{project.prometheus_port}/api/v1/targets", params={"state": "active"}, timeout=5)
        active = response.json()["data"]["activeTargets"]
    except (httpx.HTTPError, ValueError, KeyError):
        return {}
    return {t["labels"]["container"]: t["health"] for t in active if t["labels"].get("job") == "flashfit-backend"}


def follows(project, serving: str, dead: str) -> None:
    """The slots link to `serving`; the file and Prometheus name it, and not `dead`, within a
    bounded wait (the keeper acts on the engine's event within a second; Prometheus applies a
    changed file within about 10 s and scrapes the new target within an interval)."""
    sockets = project.root / ".flashfit" / "sockets"
    wait_on_condition(lambda: set(slot_links(sockets).values()) == {serving}, 60, what=f"the failover to {serving}")
    wait_on_condition(lambda: in_targets_file(project) == [serving], 30, what=f"the targets file to name only {serving}")
    wait_on_condition(lambda: scraped(project) == {serving: "up"}, 90, interval=0.5, what=f"Prometheus to scrape only {serving}")
    assert dead not in in_targets_file(project)


def test_prometheus_scrapes_the_spare_after_the_keeper_fails_over(project) -> None:
    result = project.flashfit("deploy", "--version", "v1", "--json")
    assert result.code == 0, result.stderr
    (live,) = result.json()["live"]
    running = {c.name for c in project.backends(state="running")}
    (spare,) = running - {live}
    assert in_targets_file(project) == [live]  # a spare takes no traffic: not a target
    wait_on_condition(lambda: scraped(project) == {live: "up"}, 90, interval=0.5, what="the live backend scraped")

    docker_client().containers.get(live).kill()
    follows(project, spare, live)
    status = project.flashfit("status", "--json")
    assert status.code == 0, status.stderr
    assert status.json()["monitoring"]["missing"] == []  # every live replica is an `up` target

    # One more of the kind: the spare that took over is stopped by hand (the keeper acts on the
    # stop's SIGTERM); the first one, started again as the spare meanwhile, takes over.
    stopping = threading.Thread(target=docker_client().containers.get(spare).stop, kwargs={"timeout": 10})
    wait_on_condition(lambda: ready_on_socket(project, live), 60, what="the killed one ready again, as the spare")
    stopping.start()
    try:
        follows(project, live, spare)
    finally:
        stopping.join()

    # `flashfit repair` finds the keeper's state consistent and leaves the targets as they are.
    repaired = project.flashfit("repair", "--json")
    assert repaired.code == 0, repaired.stderr
    assert in_targets_file(project) == [live]
