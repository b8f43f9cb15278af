"""Issue 11 on a real engine with a real nginx proxy (the fake backend, for speed and for faults
on cue): a killed proxy and a stopped live backend are restored from what is healthy, first; a
deploy killed right after its switch is completed, not undone; a version that says it failed stops
the gate at once with its cause; rollback keeps the replica count; stop / start / down."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from flashfit_ops.proxy_files import read_files, slot_links, slot_target
from tests.integration.ops.fake_backend.harness import Load, docker_client, fake_image, make_project, wait_on_condition

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    return {
        "good": fake_image("good", BOOT_DELAY=1),
        "slow": fake_image("slow", BOOT_DELAY=6),
        "failed": fake_image("failed", FAILED="model folder /models/clip not found"),
    }


@pytest.fixture
def project(tmp_path: Path, images):
    project = make_project(tmp_path, "sh")
    project.write_config(
        healthcheck__start_period="2s",
        deploy__deadline="120s",
        deploy__monitor_window="1s",
        deploy__drain_timeout="5s",
        deploy__strategy="blue-green",
    )
    for version, source in (("v1", "good"), ("v2", "good"), ("slow", "slow"), ("failed", "failed")):
        project.tag(images[source], version)
    yield project
    project.cleanup()


def deploy(project, *args: str) -> dict:
    result = project.flashfit("deploy", *args, "--json")
    assert result.code == 0, result.stderr
    return result.json()


def proxy(project):
    return project.containers(role="proxy")[0]


def without_keeper(project) -> None:
    """Stop the keeper: what repair and deploy do when nothing brought the service back (a remote
    engine has no keeper; a keeper can be killed too)."""
    keeper = project.containers(role="keeper")
    assert [k.status for k in keeper] == ["running"]
    keeper[0].stop(timeout=5)


# -- without an operator: the keeper ------------------------------------------------------------------
def test_keeper_brings_a_killed_proxy_back_without_an_operator(project) -> None:
    deploy(project, "--version", "v1")
    proxy(project).kill()  # the engine's restart policy leaves a killed container down
    assert wait_on_condition(project.served_version, 60, what="the proxy to serve again") == "v1"
    assert proxy(project).status == "running"


def test_keeper_brings_a_stopped_live_backend_back_but_not_a_drained_one(project) -> None:
    deploy(project, "--version", "v1")
    deploy(project, "--version", "v2")  # v1 drained and kept, stopped: no slot links to it
    live = project.backends(version="v2")[0]
    live.stop(timeout=5)
    assert wait_on_condition(project.served_version, 60, what="the backend to serve again") == "v2"
    assert [c.name for c in project.backends(state="running")] == [live.name]
    assert [c.status for c in project.backends(version="v1")] == ["exited"]


# -- a killed proxy ----------------------------------------------------------------------------------
def test_killed_proxy_status_says_so_and_repair_restores_it(project) -> None:
    deploy(project, "--version", "v1")
    without_keeper(project)
    proxy(project).kill()
    status = project.flashfit("status", "--json")
    assert status.code == 1
    doc = status.json()
    assert not doc["serving"] and doc["live_version"] == "v1"
    assert any("proxy" in d and "exited" in d for d in doc["disagreements"])
    assert "flashfit repair" in doc["hint"]
    assert proxy(project).status == "exited"  # status is read-only
    plan = project.flashfit("repair", "--dry-run", "--json")
    assert plan.code == 0, plan.stderr
    assert [s["kind"] for s in plan.json()["plan"]] == ["ensure_proxy"]  # dry run: the repair itself
    repaired = project.flashfit("repair", "--json")
    assert repaired.code == 0, repaired.stderr
    assert project.served_version() == "v1"
    assert project.flashfit("status", "--json").json()["consistent"]
    assert project.flashfit("history", "--json").json()["history"][-1]["kind"] == "repair"
    assert [k.status for k in project.containers(role="keeper")] == ["running"]  # back too


def test_deploy_after_a_killed_proxy_serves_the_live_version_before_the_new_one_is_ready(project) -> None:
    deploy(project, "--version", "v1")
    without_keeper(project)
    proxy(project).kill()
    running = project.popen("deploy", "--version", "slow")
    try:
        # The first answer through the proxy comes from v1: service was restored before the slow
        # version (6 s to become ready) could take over.
        first = wait_on_condition(project.served_version, 120, what="the proxy to serve again")
        assert first == "v1"
        assert running.wait(timeout=120) == 0, running.stderr.read()
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    assert project.served_version() == "slow"
    kinds = [h["kind"] for h in project.flashfit("history", "--json").json()["history"]]
    assert kinds == ["deploy", "repair", "deploy"]


# -- a stopped live backend --------------------------------------------------------------------------
def test_stopped_live_backend_is_started_again_by_repair(project) -> None:
    deploy(project, "--version", "v1")
    without_keeper(project)
    live = project.backends(state="running")[0]
    live.stop(timeout=5)
    status = project.flashfit("status", "--json")
    assert status.code == 1
    assert any(live.name in d and "exited" in d for d in status.json()["disagreements"])
    repaired = project.flashfit("repair", "--json")
    assert repaired.code == 0, repaired.stderr
    assert [s["kind"] for s in repaired.json()["plan"]] == ["restart_container", "wait_ready", "switch_upstreams", "ensure_keeper"]
    assert project.served_version() == "v1"
    assert [c.name for c in project.backends(state="running")] == [live.name]  # the same container, not a new one


def test_a_stopped_replica_is_routed_around_without_a_failed_request(project) -> None:
    deploy(project, "--version", "v1", "--strategy", "rolling", "--replicas", "2")
    first, second = sorted(project.backends(state="running"), key=lambda c: c.labels["io.flashfit.replica"])
    without_keeper(project)
    second.stop(timeout=5)
    with Load(project.url + "/health") as load:
        repaired = project.flashfit("repair", "--json")
    assert repaired.code == 0, repaired.stderr
    load.assert_no_failed_request()
    sockets = project.root / ".flashfit" / "sockets"
    assert set(slot_links(sockets).values()) == {first.name}  # every slot re-pointed at the live replica
    assert repaired.json()["execution"]["reloads"] == 0  # the slot count stayed: no nginx reload


# -- a deploy killed right after its switch ----------------------------------------------------------
def test_deploy_killed_between_the_relink_and_its_record_is_completed_not_undone(project) -> None:
    """The state a SIGKILL right after the slot links were renamed leaves: links on v2, the record
    (applied.json) still on v1, v1 still running, the deploy's history entry without a finish."""
    deploy(project, "--version", "v1")
    folder = project.root / ".flashfit" / "proxy"
    before = (folder / "applied.json").read_text()
    v1 = project.backends(version="v1")[0]
    deploy(project, "--version", "v2")
    v2 = project.backends(version="v2")[0]
    (folder / "applied.json").write_text(before)
    v1.start()
    wait_on_condition(lambda: (project.root / ".flashfit" / "sockets" / f"{v1.name}.sock").exists(), 60, what="v1's socket")
    history = project.root / ".flashfit" / "history.jsonl"
    lines = history.read_text().splitlines()
    history.write_text("\n".join(line for line in lines if not ('"finish"' in line and line == lines[-1])) + "\n")

    status = project.flashfit("status", "--json")
    assert status.code == 0, status.stderr
    doc = status.json()
    assert doc["live_version"] == "v2" and doc["serving"]  # what nginx routes to, not the record
    assert any("interrupted during its switch" in d for d in doc["disagreements"])
    assert any("was interrupted" in d for d in doc["disagreements"])
    assert "flashfit repair" in doc["hint"]
    with Load(project.url + "/health") as load:
        repaired = project.flashfit("repair", "--json")
    assert repaired.code == 0, repaired.stderr
    load.assert_no_failed_request()
    assert load.versions.keys() <= {"v2"}
    assert project.served_version() == "v2"
    assert [c.status for c in project.backends(version="v2")] == ["running"] and v2.name in read_files(folder).applied
    assert [c.status for c in project.backends(version="v1")] == ["exited"]  # drained, kept for rollback


def test_deploy_sigkilled_after_the_switch_then_repair_keeps_the_new_version(project) -> None:
    deploy(project, "--version", "v1")
    project.write_config(
        healthcheck__start_period="2s", deploy__deadline="60s", deploy__monitor_window="60s", deploy__strategy="blue-green"
    )
    running = project.popen("deploy", "--version", "v2")
    wait_on_condition(lambda: any((slot_target(project.root / ".flashfit" / "sockets", 1) or "") == c.name for c in project.backends(version="v2")), 60, what="the switch")
    running.send_signal(signal.SIGKILL)
    running.wait()
    status = project.flashfit("status", "--json").json()
    assert status["live_version"] == "v2"
    repaired = project.flashfit("repair", "--json")
    assert repaired.code == 0, repaired.stderr
    assert project.served_version() == "v2"
    assert [c.status for c in project.backends(version="v2")] == ["running"]
    assert project.flashfit("status", "--json").json()["consistent"]


# -- fail fast with the cause ------------------------------------------------------------------------
def test_a_version_that_says_it_failed_stops_the_gate_with_its_cause(project) -> None:
    deploy(project, "--version", "v1")
    result = project.flashfit("deploy", "--version", "failed", "--json")
    assert result.code == 1
    error = json.loads(result.stdout)
    assert "the server reports it failed: clip: model folder /models/clip not found" in error["message"]
    assert "deadline" not in error["message"]
    logs = "".join(error["details"]["logs"].values())
    assert "ERROR fake backend: model slot clip failed to load" in logs
    assert project.served_version() == "v1"


# -- rollback keeps the replica count ----------------------------------------------------------------
def test_rollback_after_a_three_replica_rolling_deploy_keeps_three(project) -> None:
    deploy(project, "--version", "v1", "--strategy", "rolling", "--replicas", "3")
    deploy(project, "--version", "v2", "--strategy", "rolling", "--replicas", "3")
    planned = project.flashfit("rollback", "v1", "--dry-run", "--json")
    assert planned.code == 0, planned.stderr
    assert planned.json()["replicas"] == 3
    back = project.flashfit("rollback", "v1", "--strategy", "rolling", "--json")
    assert back.code == 0, back.stderr
    assert len(project.backends(state="running", version="v1")) == 3
    assert project.served_version() == "v1"
    again = project.flashfit("rollback", "v2", "--strategy", "rolling", "--replicas", "2", "--json")
    assert again.code == 0, again.stderr
    assert len(project.backends(state="running", version="v2")) == 2


# -- stop, start, down -------------------------------------------------------------------------------
def test_stop_start_down(project) -> None:
    deploy(project, "--version", "v1")
    names = sorted(c.name for c in project.containers())
    assert project.flashfit("stop", "--dry-run", "--json").json()["plan"][0]["kind"] == "stop_container"
    stopped = project.flashfit("stop", "--json")
    assert stopped.code == 0, stopped.stderr
    assert sorted(c.name for c in project.containers()) == names  # kept
    assert {c.status for c in project.containers()} == {"exited"}
    assert project.served_version() is None
    # Stopped on purpose: neither repair nor status brings it back on its own.
    assert project.flashfit("repair", "--json").json()["plan"] == []
    assert {c.status for c in project.containers()} == {"exited"}

    started = project.flashfit("start", "--json")
    assert started.code == 0, started.stderr
    assert project.served_version() == "v1"
    assert sorted(c.name for c in project.containers()) == names  # the same containers

    volume = docker_client().volumes.create(f"{project.name}_vector_indices", labels={"io.flashfit.project": project.name})
    down = project.flashfit("down", "--json")
    assert down.code == 0, down.stderr
    assert project.containers() == []
    assert not docker_client().networks.list(names=[f"{project.name}_net"])
    assert docker_client().volumes.get(volume.name)  # data stays unless asked
    refused = project.flashfit("down", "--volumes", "--json")
    assert refused.code == 2 and "--yes" in refused.stdout
    assert project.flashfit("down", "--volumes", "--yes", "--json").code == 0
    assert not docker_client().volumes.list(filters={"name": volume.name})
    assert not project.flashfit("start", "--json").code == 0  # nothing left to start
    kinds = [h["kind"] for h in project.flashfit("history", "--json").json()["history"]]
    assert kinds == ["deploy", "stop", "start", "down", "down"]
    assert os.path.exists(project.root / ".flashfit" / "history.jsonl")
