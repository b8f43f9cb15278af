"""The swarm check as pure logic over what the engine reports."""

from __future__ import annotations

from datetime import datetime, timezone

from flashfit_ops.doctor.checks.swarm import evaluate
from flashfit_ops.doctor.result import FAILURE, OK, WARNING

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
ACTIVE = {"Swarm": {"LocalNodeState": "active"}}


def node(name: str, state: str = "ready", availability: str = "active") -> dict:
    return {"Description": {"Hostname": name}, "Status": {"State": state}, "Spec": {"Availability": availability}}


def task(state: str, when: str = "2026-11-26T11:58:00.123456789Z", err: str | None = None) -> dict:
    return {"Status": {"State": state, "Timestamp": when, "Err": err}}


def service(name: str = "shop_backend", desired: int = 3, running: int = 3, update_state: str | None = "completed", tasks=()) -> dict:
    return {"name": name, "desired": desired, "running": running, "update_state": update_state, "tasks": list(tasks)}


def test_healthy_swarm_is_ok() -> None:
    finding = evaluate(ACTIVE, [node("a"), node("b")], [service(tasks=[task("running")] * 3)], NOW)
    assert finding.status == OK and finding.summary == "2 node(s) ready, 1 service(s) converged"


def test_no_swarm_is_a_failure() -> None:
    assert evaluate({"Swarm": {"LocalNodeState": "inactive"}}, [], [], NOW).status == FAILURE


def test_down_node_and_missing_tasks_fail() -> None:
    finding = evaluate(ACTIVE, [node("a"), node("b", state="down")], [service(running=1)], NOW)
    assert finding.status == FAILURE
    assert "node b is down" in finding.summary and "1/3 tasks running" in finding.summary


def test_recent_failed_tasks_and_a_rolled_back_update_warn() -> None:
    tasks = [task("running"), task("failed", err="task: non-zero exit (1)"), task("failed", when="2026-11-26T09:00:00Z")]
    finding = evaluate(ACTIVE, [node("a")], [service(update_state="rollback_completed", tasks=tasks)], NOW)
    assert finding.status == WARNING
    assert "rolled the last update back" in finding.summary
    assert "1 task(s) failed in the last 15 min (task: non-zero exit (1))" in finding.summary


def test_drained_node_warns() -> None:
    assert evaluate(ACTIVE, [node("a", availability="drain")], [service()], NOW).status == WARNING
