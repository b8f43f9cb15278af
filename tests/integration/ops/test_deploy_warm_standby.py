"""Failures after the switch and replica-count changes, end to end with the real server image,
a real engine and a real nginx proxy, under keep-alive load on /ready and on recommend:

- a version that passes the gate and crashes inside the monitor window: traffic goes back to the
  previous version, which stayed running (warm) out of rotation, with no failed request; the same
  for a rolling batch;
- a replica-count change (1 -> 3 -> 1) relinks the fixed slots: no nginx reload, no failed request;
- a rolling deploy keeps the previous version (stopped) for `flashfit rollback`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.ops.fake_backend.harness import Load, docker_client, make_project, real_server_image, tiny_models
from tests.integration.ops.fault_images import crash_after_switch_image

pytestmark = pytest.mark.integration

RECOMMEND = {"text": "red summer dress", "limit": 5}


@pytest.fixture
def project(tmp_path: Path, tmp_path_factory):
    project = make_project(tmp_path, "ws")
    models = tiny_models(tmp_path_factory.getbasetemp())
    # A generous gate deadline: the engine is shared and a loaded host boots the server slowly.
    project.write_config(volumes__models=str(models), rate_limit__enabled=False, deploy__monitor_window="8s", deploy__deadline="300s")
    image = real_server_image()
    project.tag(image, "v1")
    project.tag(image, "v2")
    yield project
    project.cleanup()


def crash_version(project, seconds: float) -> str:
    tag = f"{project.repo}:crash{seconds:g}"
    crash_after_switch_image(docker_client(), real_server_image(), seconds, tag)
    project.tags.append(tag)
    return f"crash{seconds:g}"


def started_at(container) -> str:
    container.reload()
    return container.attrs["State"]["StartedAt"]


def under_load(project, *args: str):
    """Run `flashfit *args` with 3 keep-alive clients on /ready and 3 on recommend; no retries."""
    with Load(project.url + "/ready", threads=3) as ready, Load(project.url + "/api/fusion/recommend", threads=3, json_body=RECOMMEND) as rec:
        result = project.flashfit(*args)
    return result, ready, rec


def assert_no_failed_request(*loads: Load) -> None:
    for load in loads:
        load.assert_no_failed_request()


def test_crash_inside_the_monitor_window_goes_back_to_the_warm_old_version(project) -> None:
    first = project.flashfit("deploy", "--strategy", "blue-green", "--version", "v1")
    assert first.code == 0, first.stderr
    [old] = project.backends(version="v1")
    old_start = started_at(old)
    # 4 s: past the switch's own checks (a crash during those fails the switch, undone the same way)
    crash = crash_version(project, 4)
    result, ready, rec = under_load(project, "deploy", "--strategy", "blue-green", "--version", crash)
    assert result.code == 1, result.stderr
    assert_no_failed_request(ready, rec)
    # the old version was never stopped: the rollback was a relink, not a cold start
    assert old.status == "running" and started_at(old) == old_start
    assert project.served_version() == "v1"
    assert "monitor window" in result.stderr and "crash-after-switch: killing the server" in result.stderr
    assert not project.backends(version=crash)


def test_crash_in_a_rolling_batch_goes_back_to_that_batch_warm_replica(project) -> None:
    first = project.flashfit("deploy", "--strategy", "rolling", "--replicas", "2", "--version", "v1")
    assert first.code == 0, first.stderr
    olds = {c.name: started_at(c) for c in project.backends(version="v1")}
    crash = crash_version(project, 4)
    result, ready, rec = under_load(project, "deploy", "--strategy", "rolling", "--replicas", "2", "--version", crash)
    assert result.code == 1, result.stderr
    assert_no_failed_request(ready, rec)
    assert {c.name: started_at(c) for c in project.backends(version="v1", state="running")} == olds


def test_replica_count_changes_are_relinks_without_a_reload(project) -> None:
    first = project.flashfit("deploy", "--strategy", "rolling", "--version", "v1", "--json")
    assert first.code == 0, first.stderr
    for replicas, version in (("3", "v2"), ("1", "v1")):
        result, ready, rec = under_load(project, "deploy", "--strategy", "rolling", "--replicas", replicas, "--version", version, "--json")
        assert result.code == 0, result.stderr
        assert result.json()["execution"]["reloads"] == 0
        assert not any("nginx reload" in step["description"] for step in result.json()["plan"])
        assert_no_failed_request(ready, rec)
        assert len(project.backends(state="running")) == int(replicas)
    links = sorted((project.root / ".flashfit" / "sockets").glob("slot-[0-9]*.sock"))
    assert len(links) == 8  # deploy.max_replicas slots, each on the live replica
    assert {p.readlink().name for p in links} == {f"{project.backends(state='running')[0].name}.sock"}


def test_rolling_keeps_the_previous_version_for_rollback(project) -> None:
    for version in ("v1", "v2"):
        result = project.flashfit("deploy", "--strategy", "rolling", "--replicas", "2", "--version", version)
        assert result.code == 0, result.stderr
    assert sorted(c.status for c in project.backends(version="v1")) == ["exited", "exited"]
    listed = project.flashfit("rollback", "--json")
    assert listed.code == 0, listed.stderr
    assert listed.json()["versions"][0] == {
        "version": "v1",
        "how": "restart retained containers",
        "containers": sorted(c.name for c in project.backends(version="v1")),
    }
