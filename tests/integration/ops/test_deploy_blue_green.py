"""Blue-green end to end with the real server image, a real engine and a real nginx proxy:
fresh install, a deploy under keep-alive load with no failed request, the old color kept
stopped, `rollback` to it through the gate, status, history."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.ops.fake_backend.harness import Load, make_project, real_server_image, tiny_models

pytestmark = pytest.mark.integration


@pytest.fixture
def project(tmp_path: Path, tmp_path_factory):
    project = make_project(tmp_path, "bg")
    models = tiny_models(tmp_path_factory.getbasetemp())
    project.write_config(volumes__models=str(models), deploy__strategy="blue-green")
    image = real_server_image()
    project.tag(image, "v1")
    project.tag(image, "v2")
    yield project
    project.cleanup()


def test_blue_green_deploy_rollback_status_history(project) -> None:
    first = project.flashfit("deploy", "--version", "v1", "--json")
    assert first.code == 0, first.stderr
    result = first.json()
    assert result["result"] == "success" and result["live_color"] == "blue"
    assert project.served_version() == "v1"
    assert project.get("/ready").status_code == 200

    with Load(project.url + "/health", threads=4) as load:  # keep-alive clients
        second = project.flashfit("deploy", "--version", "v2", "--json")
    assert second.code == 0, second.stderr
    load.assert_no_failed_request()
    assert second.json()["live_color"] == "green"
    assert second.json()["execution"]["reloads"] == 0  # the switch renamed a slot link; nginx kept running
    slot = project.root / ".flashfit" / "sockets" / "slot-1.sock"
    assert slot.is_symlink() and slot.readlink().name == f"{second.json()['live'][0]}.sock"
    assert project.served_version() == "v2"
    # blue is kept, stopped, for a fast rollback
    assert [c.status for c in project.backends(color="blue")] == ["exited"]
    assert [c.status for c in project.backends(color="green")] == ["running"]

    listed = project.flashfit("rollback", "--json")
    assert listed.code == 0, listed.stderr
    assert [v["version"] for v in listed.json()["versions"]] == ["v1"]
    assert listed.json()["versions"][0]["how"] == "restart retained containers"

    with Load(project.url + "/health", threads=4) as load:  # keep-alive clients
        back = project.flashfit("rollback", "v1", "--json")
    assert back.code == 0, back.stderr
    load.assert_no_failed_request()
    assert project.served_version() == "v1"
    assert [c.status for c in project.backends(version="v1")] == ["running"]
    assert [c.status for c in project.backends(version="v2")] == ["exited"]
    assert len(project.backends()) == 2  # no new container: the retained one was started again

    status = project.flashfit("status", "--json")
    assert status.code == 0, status.stderr
    doc = status.json()
    assert doc["serving"] and doc["live_version"] == "v1" and doc["live_color"] == "blue"
    assert doc["url"] == f"http://127.0.0.1:{project.http_port}/"
    assert doc["proxy"]["state"] == "running" and doc["proxy"]["config_consistent"]
    assert doc["proxy"]["slots"] == {"slot-1": project.backends(version="v1")[0].name}
    assert {c["version"]: c["ready"] for c in doc["containers"]} == {"v1": True, "v2": False}
    assert doc["leftovers"] == [] and doc["lock"]["held"] is False

    history = project.flashfit("history", "--json").json()["history"]
    assert [(h["kind"], h["version"], h["result"]) for h in history] == [
        ("deploy", "v1", "success"),
        ("deploy", "v2", "success"),
        ("rollback", "v1", "success"),
    ]
    assert all(h["strategy"] == "blue-green" and h["duration_s"] > 0 and h["who"] for h in history)


def test_dry_run_prints_the_plan_and_changes_nothing(project) -> None:
    result = project.flashfit("deploy", "--version", "v1", "--dry-run", "--json")
    assert result.code == 0, result.stderr
    plan = result.json()
    assert plan["dry_run"] and [s["kind"] for s in plan["plan"]][-3:] == ["wait_ready", "ensure_proxy", "monitor"]
    assert project.containers() == []
    human = project.flashfit("deploy", "--version", "v1", "--dry-run")
    assert human.code == 0 and "start proxy" in human.stdout and "dry run: nothing changed" in human.stderr
