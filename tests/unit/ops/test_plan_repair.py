"""Repair and lifecycle plans, asserted as data (issue 11): service first from what is healthy,
never undo a switch that happened, stop/start/down."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flashfit_ops.plan.common import proxy_spec
from flashfit_ops.plan.lifecycle import plan_down, plan_start, plan_stop
from flashfit_ops.plan.repair import plan_repair
from flashfit_ops.plan.steps import (
    CleanProxyFiles,
    Drain,
    EnsureProxy,
    RemoveContainer,
    RemoveNetwork,
    RemoveVolume,
    RestartContainer,
    StopContainer,
    SwitchUpstreams,
    WaitReady,
)
from tests.unit.ops.test_plan_strategies import OLD, OLDER, backend, make_config, observed

NEWER = "20291231000000000aa"


def with_health(state, **health):
    return dataclasses.replace(
        state, containers=tuple(dataclasses.replace(c, health=health.get(c.name, c.health)) for c in state.containers)
    )


def test_consistent_state_needs_nothing(tmp_path: Path) -> None:
    blue = backend("blue", 1)
    repair = plan_repair(make_config(tmp_path), observed([blue], live=[blue]))
    assert repair.steps == () and repair.findings == ()


def test_killed_proxy_is_started_on_the_live_backends_first(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    a, b = backend("blue", 1), backend("blue", 2)
    orphan = backend("green", 1, deploy_id=NEWER, version="v2")
    repair = plan_repair(config, observed([a, b, orphan], live=[a, b], proxy_state="exited"))
    assert repair.steps == (
        EnsureProxy(proxy_spec(config), (a.name, b.name)),
        RemoveContainer(orphan.name, reason="leftover of a deploy that never switched"),
    )
    assert "the proxy shop-proxy is exited" in repair.findings
    assert repair.view.proxy.running and repair.view.live_names == (a.name, b.name)


def test_slots_are_pointed_away_from_a_dead_or_unready_backend(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    a, b, c = backend("blue", 1), backend("blue", 2, state="exited"), backend("blue", 3)
    state = with_health(observed([a, b, c], live=[a, b, c]), **{c.name: "unready"})
    repair = plan_repair(config, state)
    assert repair.steps == (SwitchUpstreams((a.name, a.name, a.name), (a.name, a.name, a.name)),)
    assert repair.view.live_names == (a.name,)
    assert f"{b.name} is routed to but is exited" in repair.findings and f"{c.name} runs but is not ready" in repair.findings


def test_stopped_live_backend_is_started_again_and_gated_when_nothing_runs(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    blue = backend("blue", 1, state="exited")
    repair = plan_repair(config, observed([blue], live=[blue]))
    assert repair.steps == (
        RestartContainer(blue.name),
        WaitReady((blue.name,), 60.0),
        SwitchUpstreams((blue.name,), (blue.name,)),
    )
    # Inside a deploy's own plan (its explicit repair ran first) and after `flashfit stop`: not.
    assert plan_repair(config, observed([blue], live=[blue]), restart_stopped=False).steps == ()


def test_stopped_proxy_and_backend_restart_backend_first_then_proxy(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    blue = backend("blue", 1, state="exited")
    steps = plan_repair(config, observed([blue], live=[blue], proxy_state="exited")).steps
    assert steps == (RestartContainer(blue.name), WaitReady((blue.name,), 60.0), EnsureProxy(proxy_spec(config), (blue.name,)))


def test_sigkill_right_after_the_switch_is_completed_not_undone(tmp_path: Path) -> None:
    """Links on v2 (healthy), applied.json still on v1, v1 still running: record v2, drain v1;
    nothing of v2 is removed."""
    config = make_config(tmp_path)
    v1 = backend("blue", 1, deploy_id=OLD)
    v2 = backend("green", 1, deploy_id=NEWER, version="v2")
    state = with_health(observed([v1, v2], live=[v1], config_names=[v2.name]), **{v2.name: "ready"})
    state = dataclasses.replace(state, proxy=dataclasses.replace(state.proxy, served=(v1.name,)))
    repair = plan_repair(config, state)
    assert repair.steps == (SwitchUpstreams((v2.name,), (v2.name,)), Drain((v1.name,), 5.0))
    assert repair.view.live_version == "v2"
    assert any("interrupted during its switch" in f for f in repair.findings)


def test_mid_switch_to_an_unready_container_goes_back_to_the_recorded_one(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    v1 = backend("blue", 1, deploy_id=OLD)
    v2 = backend("green", 1, deploy_id=NEWER, version="v2")
    state = with_health(observed([v1, v2], live=[v1], config_names=[v2.name]), **{v2.name: "unready"})
    assert plan_repair(config, state).steps[0] == SwitchUpstreams((v1.name,), (v1.name,))


def test_nothing_left_to_restore_is_a_finding(tmp_path: Path) -> None:
    state = observed([], live=[])
    state = dataclasses.replace(state, proxy=dataclasses.replace(state.proxy, applied=("shop-backend-blue-1-x",), config=("shop-backend-blue-1-x",)))
    repair = plan_repair(make_config(tmp_path), state)
    assert repair.steps == ()
    assert "no container that served is left to restore: deploy a version" in repair.findings


def test_stray_files_are_cleaned_first(tmp_path: Path) -> None:
    blue = backend("blue", 1)
    steps = plan_repair(make_config(tmp_path), observed([blue], live=[blue], proxy_state="missing", stray=["slot-1.sock.tmp"])).steps
    assert steps[0] == CleanProxyFiles(("slot-1.sock.tmp",)) and isinstance(steps[1], EnsureProxy)


# -- lifecycle ----------------------------------------------------------------------------------------
def test_stop_stops_the_proxy_then_drains_every_running_backend(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    a, b = backend("blue", 1), backend("blue", 2)
    kept = backend("green", 1, deploy_id=OLDER, version="v0", state="exited")
    assert plan_stop(config, observed([a, b, kept], live=[a, b])) == [StopContainer("shop-proxy"), Drain((a.name, b.name), 5.0)]
    assert plan_stop(config, observed([kept], live=[], proxy_state="exited")) == []


def test_start_restarts_the_last_live_version_gated_then_the_proxy(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    a, b = backend("blue", 1, state="exited"), backend("blue", 2, state="exited")
    older = backend("green", 1, deploy_id=OLDER, version="v0", state="exited")
    steps = plan_start(config, observed([older, a, b], live=[a, b], proxy_state="exited"))
    assert steps == [
        RestartContainer(a.name),
        RestartContainer(b.name),
        WaitReady((a.name, b.name), 60.0),
        EnsureProxy(proxy_spec(config), (a.name, b.name)),
    ]


def test_down_removes_proxy_containers_state_network_and_only_asked_volumes(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    a, old = backend("blue", 1), backend("green", 1, deploy_id=OLDER, state="exited")
    state = observed([old, a], live=[a])
    steps = plan_down(config, state, volumes=False, slot_count=2)
    assert steps == [
        RemoveContainer("shop-proxy", reason="down"),
        RemoveContainer(old.name, reason="down"),
        RemoveContainer(a.name, reason="down"),
        CleanProxyFiles(("nginx.conf", "applied.json", "slot-1.sock", "slot-2.sock")),
        RemoveNetwork("shop_net"),
    ]
    with_volumes = plan_down(config, state, volumes=True)
    assert with_volumes[-2:] == [RemoveVolume("shop_model_cache"), RemoveVolume("shop_vector_indices")]


def test_lifecycle_plans_serialise(tmp_path: Path) -> None:
    import json

    config = make_config(tmp_path)
    a = backend("blue", 1)
    steps = plan_down(config, observed([a], live=[a]), volumes=True)
    data = json.loads(json.dumps([s.to_dict() for s in steps]))
    assert [d["kind"] for d in data][-3:] == ["remove_network", "remove_volume", "remove_volume"]


def test_standby_slots_left_on_the_previous_version_follow_the_live_ones(tmp_path: Path) -> None:
    """A deploy killed inside its monitor window leaves the previous version running behind the
    standby slots: repair points them at the live version too (else the keeper, which starts what
    any slot links to, would start the old version again after repair drained it)."""
    config = make_config(tmp_path)
    blue = backend("blue", 1, deploy_id=OLD, version="v1")
    green = backend("green", 1, deploy_id=NEWER, version="v2")
    state = observed([blue, green], live=[green])
    state = dataclasses.replace(state, proxy=dataclasses.replace(state.proxy, standby=(blue.name,)))
    steps = plan_repair(config, state).steps
    assert steps[0] == SwitchUpstreams((green.name,), (green.name,))
    assert any(isinstance(s, Drain) and blue.name in s.names for s in steps)
    # Standby already on the live version: nothing to do.
    settled = dataclasses.replace(state.proxy, standby=(green.name,))
    assert plan_repair(config, dataclasses.replace(state, proxy=settled, containers=(green,))).steps == ()
