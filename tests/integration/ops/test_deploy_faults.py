"""Faults, end to end on a real engine with a real nginx proxy, using the fake backend (the real
server cannot be made to never become ready, or to die on cue): auto-rollback of a never-ready
version, of a version that dies after the switch, concurrent deploys and the lock, the CLI killed
mid-deploy (SIGKILL) and recovered, SIGTERM, a broken proxy config, an unreachable engine."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from flashfit_ops.proxy_files import read_files, slot_target
from tests.integration.ops.fake_backend.harness import Load, fake_image, make_project, wait_on_condition

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    return {
        "good": fake_image("good", BOOT_DELAY=1),
        "slow": fake_image("slow", BOOT_DELAY=6),
        "never": fake_image("never", NEVER_READY=1),
        "dies": fake_image("dies", BOOT_DELAY=1, DIE_AFTER=1),
    }


@pytest.fixture
def project(tmp_path: Path, images):
    project = make_project(tmp_path, "ft")
    project.write_config(
        healthcheck__start_period="2s",
        deploy__deadline="8s",
        deploy__monitor_window="5s",
        deploy__drain_timeout="5s",
        deploy__strategy="blue-green",
    )
    for version, source in (("v1", "good"), ("v2", "good"), ("v3", "good"), ("slow", "slow"), ("never", "never"), ("dies", "dies")):
        project.tag(images[source], version)
    yield project
    project.cleanup()


def deploy_v1(project) -> None:
    result = project.flashfit("deploy", "--version", "v1")
    assert result.code == 0, result.stderr
    assert project.served_version() == "v1"


def test_never_ready_version_is_rolled_back_and_old_keeps_serving(project) -> None:
    deploy_v1(project)
    with Load(project.url + "/health") as load:  # keep-alive clients
        result = project.flashfit("deploy", "--version", "never")
    assert result.code == 1
    assert "did not become ready" in result.stderr
    assert "last log lines of" in result.stderr and "will never be ready" in result.stderr
    load.assert_no_failed_request()
    assert load.total == load.ok  # the broken version never received a request
    assert project.served_version() == "v1"
    assert [c.labels["io.flashfit.version"] for c in project.backends()] == ["v1"]
    history = project.flashfit("history", "--json").json()["history"]
    assert history[-1]["result"] == "rolled_back" and history[-1]["version"] == "never"


def test_never_ready_json_error_for_ci(project) -> None:
    deploy_v1(project)
    result = project.flashfit("deploy", "--version", "never", "--json")
    assert result.code == 1
    error = json.loads(result.stdout)
    assert error["error"] == "GateFailed" and error["exit_code"] == 1
    assert error["details"]["execution"]["rolled_back"] is True
    assert any("will never be ready" in text for text in error["details"]["logs"].values())


def test_version_that_dies_after_the_switch_is_rolled_back(project) -> None:
    deploy_v1(project)
    result = project.flashfit("deploy", "--version", "dies")
    assert result.code == 1, result.stderr
    assert "monitor window" in result.stderr and "dying on purpose" in result.stderr
    assert project.served_version() == "v1"
    running = [c.labels["io.flashfit.version"] for c in project.backends(state="running")]
    assert running == ["v1"]  # the old one was started again, the dead one removed
    assert not project.backends(version="dies")


def test_a_second_deploy_fails_with_exit_4_or_waits_with_lock_wait(project) -> None:
    deploy_v1(project)
    first = project.popen("deploy", "--version", "slow")
    try:
        wait_on_condition(lambda: project.flashfit("lock", "status", "--json").json()["held"], 30, what="the first deploy's lock")
        refused = project.flashfit("deploy", "--version", "v3", "--json")
        assert refused.code == 4
        assert json.loads(refused.stdout)["error"] == "LockHeld"
        queued = project.flashfit("deploy", "--version", "v3", "--lock-wait", "120", "--json")
        assert queued.code == 0, queued.stderr
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert project.served_version() == "v3"
    history = project.flashfit("history", "--json").json()["history"]
    assert [h["version"] for h in history] == ["v1", "slow", "v3"]


def test_sigkill_before_the_switch_then_status_reports_and_repair_repairs(project) -> None:
    deploy_v1(project)
    deploy = project.popen("deploy", "--version", "slow")
    wait_on_condition(lambda: project.backends(state="running", version="slow"), 60, what="the new container")
    deploy.send_signal(signal.SIGKILL)
    deploy.wait()
    assert project.served_version() == "v1"  # traffic never left the healthy version
    lock = project.flashfit("lock", "status", "--json").json()
    assert lock["held"] is False and lock["stale"] is True and lock["owner"]["pid"] == deploy.pid
    status = project.flashfit("status", "--json")
    assert status.code == 0, status.stderr
    doc = status.json()  # read-only: it reports, with a hint; `flashfit repair` repairs
    assert any("never switched" in line for line in doc["leftovers"]) and "flashfit repair" in doc["hint"]
    assert project.backends(version="slow")
    repaired = project.flashfit("repair", "--json")
    assert repaired.code == 0, repaired.stderr
    assert any("never switched" in step["description"] for step in repaired.json()["plan"])
    doc = project.flashfit("status", "--json").json()
    assert doc["live_version"] == "v1" and doc["serving"] and doc["leftovers"] == []
    assert not project.backends(version="slow")
    assert project.flashfit("history", "--json").json()["history"][1]["result"] == "interrupted"
    again = project.flashfit("deploy", "--version", "v2")
    assert again.code == 0, again.stderr
    assert project.served_version() == "v2"


def switch_recorded_for(project, version: str) -> bool:
    applied = read_files(project.root / ".flashfit" / "proxy").applied
    wanted = {c.name for c in project.backends(version=version)}
    return bool(wanted) and set(applied) == wanted


def test_sigkill_after_the_switch_leaves_the_new_version_serving(project) -> None:
    deploy_v1(project)
    # A long monitor window keeps the deploy of v2 alive after its switch, for the kill to land in.
    project.write_config(
        healthcheck__start_period="2s", deploy__deadline="8s", deploy__monitor_window="60s", deploy__strategy="blue-green"
    )
    deploy = project.popen("deploy", "--version", "v2")
    # After the switch completed (recorded in applied.json): a kill between the relink and that
    # record is the mid-switch crash the next test covers, which goes back to v1 by design.
    wait_on_condition(lambda: switch_recorded_for(project, "v2"), 60, what="the switch to v2 to be recorded")
    deploy.send_signal(signal.SIGKILL)
    deploy.wait()
    status = project.flashfit("status", "--json")
    assert status.code == 0, status.stderr
    assert status.json()["serving"] and status.json()["live_version"] == "v2"
    assert project.flashfit("repair").code == 0
    doc = project.flashfit("status", "--json").json()
    assert doc["serving"] and doc["live_version"] == "v2" and doc["leftovers"] == []
    # v1 either was stopped by the deploy before it died, or by the repair: never left running.
    assert [c.status for c in project.backends(version="v1")] == ["exited"]
    assert project.served_version() == "v2"


def test_sigkill_between_link_rename_and_record_is_repaired(project) -> None:
    """Simulate the narrowest crash: slot-1 already links to a new container that is not recorded
    as applied (the process died before the record) and no longer exists, and a half-made link is
    left. Repair goes back to what applied.json records, the only healthy thing left."""
    deploy_v1(project)
    sockets = project.root / ".flashfit" / "sockets"
    live = slot_target(sockets, 1)
    assert live and live.startswith(f"{project.name}-backend-blue-1-")
    (sockets / "slot-1.sock").unlink()
    os.symlink(f"{project.name}-backend-green-1-29990101000000000aa.sock", sockets / "slot-1.sock")
    os.symlink(f"{live}.sock", sockets / "slot-1.sock.tmp")
    assert project.flashfit("status", "--json").json()["leftovers"]
    repaired = project.flashfit("repair", "--json")
    assert repaired.code == 0, repaired.stderr
    assert repaired.json()["plan"]
    status = project.flashfit("status", "--json")
    assert status.code == 0, status.stderr
    doc = status.json()
    assert doc["proxy"]["config_consistent"] and doc["serving"] and doc["consistent"]
    assert slot_target(sockets, 1) == live and doc["proxy"]["slots"] == {"slot-1": live}
    assert not (sockets / "slot-1.sock.tmp").exists() and read_files(project.root / ".flashfit" / "proxy").stray == ()
    assert project.served_version() == "v1"


def test_invalid_proxy_config_is_rewritten(project) -> None:
    deploy_v1(project)
    config = project.root / ".flashfit" / "proxy" / "nginx.conf"
    config.write_text(config.read_text().replace("events {", "events {{ broken"))
    assert project.flashfit("status", "--json").json()["leftovers"]
    repaired = project.flashfit("repair", "--json")
    assert repaired.code == 0, repaired.stderr
    assert repaired.json()["plan"]
    assert project.flashfit("status", "--json").json()["serving"]
    proxy = project.containers(role="proxy")[0]
    assert proxy.exec_run(["nginx", "-t", "-c", "/etc/flashfit/nginx.conf"]).exit_code == 0
    assert project.served_version() == "v1"


def test_sigterm_mid_gate_rolls_back_with_exit_130(project) -> None:
    deploy_v1(project)
    deploy = project.popen("deploy", "--version", "slow")
    wait_on_condition(lambda: project.backends(state="running", version="slow"), 60, what="the new container")
    deploy.send_signal(signal.SIGTERM)
    assert deploy.wait(timeout=60) == 130
    assert "rolling back" in deploy.stderr.read()
    assert not project.backends(version="slow")
    assert project.served_version() == "v1"
    assert not project.flashfit("lock", "status", "--json").json()["held"]


def test_engine_unreachable_is_exit_3(project) -> None:
    env = {"DOCKER_HOST": f"unix://{project.root}/no-such-engine.sock"}
    status = project.flashfit("status", env=env)
    assert status.code == 3 and "unreachable" in status.stderr
    deploy = project.flashfit("deploy", "--version", "v1", "--json", env=env)
    assert deploy.code == 3 and json.loads(deploy.stdout)["error"] == "Unavailable"


def test_logs_of_the_live_containers(project) -> None:
    deploy_v1(project)
    logs = project.flashfit("logs", "--tail", "5")
    assert logs.code == 0, logs.stderr
    assert "| fake backend v1 listening on 8080" in logs.stdout
    assert project.flashfit("logs", "--since", "1h", "--proxy").code == 0
    assert project.flashfit("logs", "--since", "soon").code == 2
    follow = project.popen("logs", "--follow")
    try:
        line = follow.stdout.readline()
        assert "fake backend v1 listening" in line
    finally:
        follow.terminate()
        follow.wait(timeout=30)
