"""Warm spares (deploy.spare_replicas), asserted as data: each deploy strategy, rollback, repair
and start keep that many spares of the live version behind the standby slots; the keeper's
failover swaps a dead live backend with a ready spare on real slot links."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from flashfit_ops.config.load import ConfigError, resolve
from flashfit_ops.execute import keeper_main
from flashfit_ops.plan import plan_deploy
from flashfit_ops.plan.common import Target, backend_spec
from flashfit_ops.plan.keeper import keeper_step
from flashfit_ops.plan.lifecycle import plan_start
from flashfit_ops.plan.repair import plan_repair
from flashfit_ops.plan.rollback import plan_restart
from flashfit_ops.plan.spare import spares_of
from flashfit_ops.plan.steps import Drain, EnsureSpares, RemoveContainer, StartContainer, SwitchUpstreams, WaitReady
from tests.unit.ops.test_plan_strategies import NEW, OLD, backend, make_config, name, observed


def touched(steps) -> set[str]:
    """Containers the steps drain or remove."""
    out: set[str] = set()
    for step in steps:
        if isinstance(step, Drain):
            out.update(step.names)
        elif isinstance(step, RemoveContainer):
            out.add(step.name)
    return out


def with_standby(state, *names: str):
    return dataclasses.replace(state, proxy=dataclasses.replace(state.proxy, standby=tuple(names)))


def test_spare_replicas_is_validated_on_its_field(tmp_path: Path) -> None:
    assert make_config(tmp_path).deploy.spare_replicas == 0  # a spare costs one backend's memory: opt in
    assert make_config(tmp_path).deploy.keeper is True
    for bad in (-1, 9, "one", 1.5):
        with pytest.raises(ConfigError) as raised:
            make_config(tmp_path, **{"deploy.spare_replicas": bad})
        assert "deploy.spare_replicas" in str(raised.value.details or raised.value.message)


def test_no_spare_configured_changes_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    blue = backend("blue", 1)
    steps = plan_deploy("blue-green", config, observed([blue], live=[blue]), Target("v2", NEW, 1))
    assert not any(isinstance(s, EnsureSpares) for s in steps)


@pytest.mark.parametrize("strategy", ["single", "blue-green", "rolling"])
def test_a_fresh_deploy_ends_with_its_spare(tmp_path: Path, strategy: str) -> None:
    config = make_config(tmp_path, **{"deploy.spare_replicas": 1})
    steps = plan_deploy(strategy, config, observed(proxy_state="missing"), Target("v1", NEW, 1))
    spare = backend_spec(config, Target("v1", NEW), "blue", 2)
    assert steps[-1] == EnsureSpares(live=(name("blue", 1),), start=(spare,), deadline=60.0)
    assert spare.name == name("blue", 2) and spare.version == "v1" and spare.image == "flashfit/backend:v1"
    assert steps[-1].describe() == (
        f"warm spare of the live version, out of rotation: start {spare.name}; gate (deadline 60s); standby slots -> {spare.name}"
    )


def test_blue_green_replaces_the_old_spare_after_the_window(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"deploy.spare_replicas": 1})
    blue, blue_spare = backend("blue", 1), backend("blue", 2)
    state = with_standby(observed([blue, blue_spare], live=[blue]), blue_spare.name)
    steps = plan_deploy("blue-green", config, state, Target("v2", NEW, 1))
    green = name("green", 1)
    # The old spare is neither a leftover nor retained: it stays until the new spare is linked.
    assert blue_spare.name not in touched(steps[:-1])
    assert [s.kind for s in steps[3:]] == [
        "start_container", "wait_ready", "switch_upstreams", "monitor", "release_standby", "drain", "ensure_spares",
    ]
    assert steps[-1] == EnsureSpares(
        live=(green,), start=(backend_spec(config, Target("v2", NEW), "green", 2),), remove=(blue_spare.name,), deadline=60.0
    )


def test_rolling_spares_follow_the_replica_count(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"deploy.spare_replicas": 2})
    blues = [backend("blue", i) for i in (1, 2)]
    steps = plan_deploy("rolling", config, observed(blues, live=blues), Target("v2", NEW, 3))
    last = steps[-1]
    assert isinstance(last, EnsureSpares)
    assert last.live == tuple(name("green", i) for i in (1, 2, 3))
    assert [s.name for s in last.start] == [name("green", 4), name("green", 5)] and last.remove == ()


def test_lowering_spare_replicas_to_zero_removes_the_spare_at_the_next_deploy(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    blue, blue_spare = backend("blue", 1), backend("blue", 2)
    state = with_standby(observed([blue, blue_spare], live=[blue]), blue_spare.name)
    steps = plan_deploy("blue-green", config, state, Target("v2", NEW, 1))
    assert steps[-1] == EnsureSpares(live=(name("green", 1),), remove=(blue_spare.name,))


def test_rollback_to_retained_containers_gets_a_spare_of_that_version(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"deploy.spare_replicas": 1})
    green = backend("green", 1, deploy_id=NEW, version="v2")
    green_spare = backend("green", 2, deploy_id=NEW, version="v2")
    blue = backend("blue", 1, version="v1", state="exited")
    state = with_standby(observed([green, green_spare, blue], live=[green]), green_spare.name)
    steps = plan_restart(config, state, "v1")
    assert steps[-1] == EnsureSpares(
        live=(blue.name,), start=(backend_spec(config, Target("v1", OLD), "blue", 2),), remove=(green_spare.name,), deadline=60.0
    )


def test_repair_keeps_a_linked_running_spare_and_needs_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"deploy.spare_replicas": 1})
    blue, spare = backend("blue", 1), backend("blue", 2)
    state = with_standby(observed([blue, spare], live=[blue]), spare.name)
    assert spares_of(state, (blue.name,)) == (spare.name,)
    assert plan_repair(config, state).steps == ()
    # Without the standby link the same container is no spare: it goes, and a spare is made.
    steps = plan_repair(config, observed([blue, spare], live=[blue])).steps
    last = steps[-1]
    assert isinstance(last, EnsureSpares) and spare.name in touched(steps)
    assert [s.name for s in last.start] == [backend("blue", 3).name]


def test_after_a_keeper_failover_repair_starts_the_dead_one_again_as_the_spare(tmp_path: Path) -> None:
    """The keeper relinked the slots to the spare (blue 2) and the standby slots to the killed
    blue 1; with the keeper gone, repair restarts blue 1 as the spare: service is not touched."""
    config = make_config(tmp_path, **{"deploy.spare_replicas": 1})
    dead, serving = backend("blue", 1, state="exited"), backend("blue", 2)
    state = with_standby(observed([dead, serving], live=[serving]), dead.name)
    assert plan_repair(config, state).steps == (EnsureSpares(live=(serving.name,), restart=(dead.name,), deadline=60.0),)


def test_a_killed_spare_is_started_again_and_the_switch_keeps_running_spares(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"deploy.spare_replicas": 1})
    live, spare, old = backend("blue", 1, deploy_id=NEW), backend("blue", 2, deploy_id=NEW), backend("green", 1, version="v0")
    # A deploy killed in its window left the previous version behind the standby slots too.
    state = with_standby(observed([live, spare, old], live=[live]), old.name, spare.name)
    steps = plan_repair(config, state).steps
    assert steps[0] == SwitchUpstreams((live.name,), (live.name,), standby=(spare.name,))
    assert Drain((old.name,), 5.0) in steps
    assert steps[-1] == EnsureSpares(live=(live.name,), keep=(spare.name,), deadline=60.0)


def test_start_brings_the_spare_back_after_the_live_one(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"deploy.spare_replicas": 1})
    live, spare = backend("blue", 1, state="exited"), backend("blue", 2, state="exited")
    state = with_standby(observed([live, spare], live=[live], proxy_state="exited"), spare.name)
    steps = plan_start(config, state)
    assert [s.kind for s in steps] == ["restart_container", "wait_ready", "ensure_proxy", "ensure_spares"]
    assert steps[1] == WaitReady((live.name,), 60.0)
    assert steps[-1] == EnsureSpares(live=(live.name,), restart=(spare.name,), deadline=60.0)


def test_repair_creates_a_missing_spare_from_the_live_version(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"deploy.spare_replicas": 1})
    live = backend("blue", 1)
    steps = plan_repair(config, observed([live], live=[live])).steps
    assert steps == (EnsureSpares(live=(live.name,), start=(backend_spec(config, Target("v1", OLD), "blue", 2),), deadline=60.0),)
    assert not any(isinstance(s, StartContainer) for s in steps)
    # Before a deploy or rollback no spare of the version being replaced is started.
    assert plan_repair(config, observed([live], live=[live]), spares=False).steps == ()


def test_the_keeper_can_be_switched_off(tmp_path: Path) -> None:
    assert keeper_step(make_config(tmp_path, **{"deploy.keeper": False}), "x:1", None) == []
    assert keeper_step(make_config(tmp_path), "x:1", None)[0].ready_path == "/ready"


# -- the keeper's failover, on real links ---------------------------------------------------------------
def test_keeper_fails_over_to_a_ready_spare_and_swaps_roles(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(keeper_main, "STATE", str(tmp_path))
    sockets, proxy = tmp_path / "sockets", tmp_path / "proxy"
    sockets.mkdir()
    proxy.mkdir()
    for n in (1, 2):
        os.symlink("a.sock", sockets / f"slot-{n}.sock")
        os.symlink("s.sock", sockets / f"slot-standby-{n}.sock")
    (proxy / "applied.json").write_text(json.dumps({"slots": ["a"], "standby": ["s"], "served": ["old", "a"], "config_sha256": "x"}))
    monkeypatch.setattr(keeper_main, "ready", lambda name: name == "s")
    assert keeper_main.fail_over("s", {"a": "running", "s": "running"}) is None  # not routed: nothing to do
    assert keeper_main.fail_over("a", {"a": "exited", "s": "exited"}) is None  # the spare is down too
    assert keeper_main.fail_over("a", {"a": "exited", "s": "running"}) == "s"
    assert keeper_main.links() == (
        {"slot-1.sock": "s", "slot-2.sock": "s"},
        {"slot-standby-1.sock": "a", "slot-standby-2.sock": "a"},
    )
    record = json.loads((proxy / "applied.json").read_text())
    assert record["slots"] == ["s"] and record["standby"] == ["a"] and record["served"] == ["old", "a", "s"]
    assert record["config_sha256"] == "x" and record["applied_by"] == "keeper"
    assert sorted(p.name for p in proxy.iterdir()) == ["applied.json"]  # no temporary file left
    assert keeper_main.routed() == {"a", "s"}  # the dead one is started again (as the spare)


def test_keeper_without_a_spare_does_not_relink(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(keeper_main, "STATE", str(tmp_path))
    (tmp_path / "sockets").mkdir()
    os.symlink("a.sock", tmp_path / "sockets" / "slot-1.sock")
    os.symlink("a.sock", tmp_path / "sockets" / "slot-standby-1.sock")
    monkeypatch.setattr(keeper_main, "ready", lambda name: True)
    assert keeper_main.fail_over("a", {"a": "exited"}) is None
    assert os.readlink(tmp_path / "sockets" / "slot-1.sock") == "a.sock"


def test_config_rejects_spare_replicas_as_text(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        resolve({"project": "shop", "deploy": {"spare_replicas": "1; rm"}}, base_dir=tmp_path, environ={})
