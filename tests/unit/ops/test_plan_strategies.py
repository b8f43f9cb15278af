"""Each strategy's plan, asserted as data: fresh install, live blue, rolling with 3 replicas at
parallelism 1 and 2, and leftovers of an interrupted deploy. No engine involved."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from flashfit_ops.config.load import resolve
from flashfit_ops.plan import plan_deploy
from flashfit_ops.plan.common import Target, backend_name
from flashfit_ops.plan.observed import ContainerState, Observed, ProxyState
from flashfit_ops.plan.steps import (
    CleanProxyFiles,
    Drain,
    ReleaseStandby,
    EnsureNetwork,
    EnsureProxy,
    EnsureVolume,
    Monitor,
    RemoveContainer,
    StartContainer,
    SwitchUpstreams,
    WaitReady,
)

NEW = "20300101000000000aa"
OLD = "20290101000000000aa"
OLDER = "20280101000000000aa"


def make_config(tmp_path: Path, **overrides):
    data = {
        "project": "shop",
        "server": {"image": "flashfit/backend"},
        "ports": {"http": 18080},
        "services": {"nginx": {"image": "flashfit/nginx:bookworm"}},
        "deploy": {"deadline": "60s", "drain_timeout": "5s", "monitor_window": "3s", "parallelism": 1},
    }
    for dotted, value in overrides.items():
        node = data
        keys = dotted.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return resolve(data, base_dir=tmp_path, environ={})


def backend(color: str, replica: int, deploy_id: str = OLD, version: str = "v1", state: str = "running") -> ContainerState:
    return ContainerState(
        name=backend_name("shop", color, replica, deploy_id),
        color=color,
        version=version,
        replica=replica,
        deploy_id=deploy_id,
        state=state,
    )


def observed(containers=(), live=(), proxy_state="running", config_names=None, stray=()) -> Observed:
    live_names = tuple(c.name for c in live)
    return Observed(
        project="shop",
        containers=tuple(containers),
        proxy=ProxyState(
            name="shop-proxy",
            exists=proxy_state != "missing",
            state=proxy_state,
            applied=live_names,
            config=live_names if config_names is None else tuple(config_names),
            config_present=True,
            stray_files=tuple(stray),
            slot_count=8,  # nginx.conf as this config renders it: deploy.max_replicas slots
        ),
        network_exists=True,
    )


def kinds(steps) -> list[str]:
    return [s.kind for s in steps]


def name(color: str, replica: int, deploy_id: str = NEW) -> str:
    return backend_name("shop", color, replica, deploy_id)


# -- fresh install ---------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["single", "blue-green", "rolling"])
def test_fresh_install_starts_gates_then_starts_the_proxy(tmp_path: Path, strategy: str) -> None:
    config = make_config(tmp_path)
    steps = plan_deploy(strategy, config, Observed(project="shop", proxy=ProxyState(name="shop-proxy")), Target("v1", NEW, 1))
    assert steps[:3] == [EnsureNetwork("shop_net"), EnsureVolume("shop_model_cache"), EnsureVolume("shop_vector_indices")]
    start = steps[3]
    assert isinstance(start, StartContainer)
    spec = start.spec
    assert spec.name == name("blue", 1)
    assert spec.image == "flashfit/backend:v1"
    assert spec.network == "shop_net"
    assert spec.labels == {
        "io.flashfit.color": "blue",
        "io.flashfit.deploy": NEW,
        "io.flashfit.project": "shop",
        "io.flashfit.replica": "1",
        "io.flashfit.role": "backend",
        "io.flashfit.version": "v1",
    }
    assert spec.env["APP_VERSION"] == "v1"
    # it serves on its own socket in the folder shared with the proxy, too
    assert spec.env["FLASHFIT_SOCKET"] == f"/run/flashfit/{name('blue', 1)}.sock"
    assert "JWT_SECRET_KEY" not in spec.env  # secrets are added by the executor at run time only
    assert {m.target for m in spec.mounts} == {"/app/models", "/app/data", "/run/flashfit"}
    sockets = next(m for m in spec.mounts if m.target == "/run/flashfit")
    assert (sockets.kind, sockets.source) == ("bind", str(tmp_path.resolve() / ".flashfit" / "sockets"))
    assert steps[4] == WaitReady((name("blue", 1),), 60.0)
    assert isinstance(steps[5], EnsureProxy)
    assert steps[5].slots == (name("blue", 1),)
    assert steps[5].spec.sockets_dir == str(tmp_path.resolve() / ".flashfit" / "sockets")
    assert steps[5].spec.http_port == 18080 and steps[5].spec.image == "flashfit/nginx:bookworm"
    assert steps[5].spec.config_dir == str(tmp_path.resolve() / ".flashfit" / "proxy")
    assert steps[6] == Monitor((name("blue", 1),), 3.0)
    assert len(steps) == 7


def test_host_path_volumes_are_bind_mounts(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"volumes.models": "./models"})
    steps = plan_deploy("single", config, observed(), Target("v1", NEW, 1))
    assert EnsureVolume("shop_model_cache") not in steps
    spec = next(s for s in steps if isinstance(s, StartContainer)).spec
    models = next(m for m in spec.mounts if m.target == "/app/models")
    assert (models.kind, models.source) == ("bind", str(tmp_path.resolve() / "models"))


def test_fresh_rolling_brings_every_replica_up_at_once(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    steps = plan_deploy("rolling", config, observed(), Target("v1", NEW, 3))
    assert kinds(steps)[3:] == ["start_container"] * 3 + ["wait_ready", "ensure_proxy", "monitor"]
    assert steps[7].slots == (name("blue", 1), name("blue", 2), name("blue", 3))


# -- live blue ------------------------------------------------------------------------------------------
def test_blue_green_keeps_blue_running_through_the_monitor_window_then_stopped(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    blue = backend("blue", 1)
    steps = plan_deploy("blue-green", config, observed([blue], live=[blue]), Target("v2", NEW, 1))
    assert steps[3:] == [
        StartContainer(steps[3].spec),
        WaitReady((name("green", 1),), 60.0),
        # every slot to green; blue stays running behind the standby slots: a crash is a relink back
        SwitchUpstreams(slots=(name("green", 1),), previous=(blue.name,), standby=(blue.name,), slot_count=8),
        Monitor((name("green", 1),), 3.0, fallback=(blue.name,), warm=True),
        ReleaseStandby((name("green", 1),), previous=(blue.name,)),
        Drain((blue.name,), 5.0),
    ]
    assert steps[3].spec.color == "green" and steps[3].spec.version == "v2"
    assert not any(isinstance(s, RemoveContainer) for s in steps)  # blue is kept for rollback
    assert "still running (no cold start)" in steps[6].describe()


def test_warm_standby_opted_out_drains_at_the_switch(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"deploy.warm_standby": False})
    blue = backend("blue", 1)
    steps = plan_deploy("blue-green", config, observed([blue], live=[blue]), Target("v2", NEW, 1))
    assert steps[5:] == [
        SwitchUpstreams(slots=(name("green", 1),), previous=(blue.name,), slot_count=8),
        Drain((blue.name,), 5.0),
        Monitor((name("green", 1),), 3.0, fallback=(blue.name,), warm=False),
    ]
    assert "a cold start" in steps[7].describe()


def test_the_plan_names_every_reload_and_why(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    blue = backend("blue", 1)
    state = observed([blue], live=[blue])
    one_slot = dataclasses.replace(state, proxy=dataclasses.replace(state.proxy, slot_count=1))
    switch = next(s for s in plan_deploy("blue-green", config, one_slot, Target("v2", NEW, 1)) if isinstance(s, SwitchUpstreams))
    assert switch.reload == "nginx.conf lists 1 slot(s), deploy.max_replicas asks for 8" and switch.slot_count == 8
    assert "nginx reload (nginx.conf lists 1 slot(s)" in switch.describe()
    changed = dataclasses.replace(state, proxy=dataclasses.replace(state.proxy, settings_current=False))
    switch = next(s for s in plan_deploy("blue-green", config, changed, Target("v2", NEW, 1)) if isinstance(s, SwitchUpstreams))
    assert switch.reload == "the proxy settings changed (TLS, rate limit or the nginx template)"
    # more replicas than slots: one reload, on the first switch of the rolling deploy only
    steps = plan_deploy("rolling", config, state, Target("v2", NEW, 10))
    reloads = [s.reload for s in steps if isinstance(s, SwitchUpstreams)]
    assert reloads[0] == "10 replicas need more than the 8 slots nginx.conf lists" and not any(reloads[1:])
    assert {s.slot_count for s in steps if isinstance(s, SwitchUpstreams)} == {10}


def test_a_proxy_from_before_socket_slots_is_replaced_at_the_switch(tmp_path: Path) -> None:
    """Its nginx.conf names containers over TCP and it has no sockets folder: no repair switch
    (its backends have no sockets), the new version is gated, then the proxy is recreated on it."""
    config = make_config(tmp_path)
    blue = backend("blue", 1)
    state = observed([blue], live=[blue])
    state = dataclasses.replace(state, proxy=dataclasses.replace(state.proxy, legacy=True, config=(), config_present=False))
    steps = plan_deploy("blue-green", config, state, Target("v2", NEW, 1))
    assert kinds(steps) == ["ensure_network", "ensure_volume", "ensure_volume", "start_container", "wait_ready", "ensure_proxy", "drain", "monitor"]
    assert steps[5].slots == (name("green", 1),)
    assert steps[6] == Drain((blue.name,), 5.0)


def test_blue_green_replaces_the_older_retained_color_only_after_the_monitor(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"deploy.keep_versions": 1})
    blue = backend("blue", 1, deploy_id=OLD, version="v2")
    green_old = backend("green", 1, deploy_id=OLDER, version="v1", state="exited")
    steps = plan_deploy("blue-green", config, observed([green_old, blue], live=[blue]), Target("v3", NEW, 1))
    assert kinds(steps)[-4:] == ["monitor", "release_standby", "drain", "remove_container"]
    assert steps[-1] == RemoveContainer(green_old.name, reason="older retained version v1")


def test_retained_versions_are_kept_up_to_keep_versions(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"deploy.keep_versions": 2})
    v1 = backend("green", 1, deploy_id="20270101000000000aa", version="v1", state="exited")
    v2 = backend("blue", 1, deploy_id=OLDER, version="v2", state="exited")
    v3 = backend("green", 1, deploy_id=OLD, version="v3")
    steps = plan_deploy("blue-green", config, observed([v1, v2, v3], live=[v3]), Target("v4", NEW, 1))
    # v3 (previous) and v2 are kept: two versions; v1 goes
    assert [s for s in steps if isinstance(s, RemoveContainer)] == [RemoveContainer(v1.name, reason="older retained version v1")]


def test_blue_green_with_replicas(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    blues = [backend("blue", i) for i in (1, 2)]
    steps = plan_deploy("blue-green", config, observed(blues, live=blues), Target("v2", NEW, 2))
    switch = next(s for s in steps if isinstance(s, SwitchUpstreams))
    assert switch.slots == (name("green", 1), name("green", 2))
    assert switch.previous == (blues[0].name, blues[1].name)
    assert kinds(steps).index("wait_ready") < kinds(steps).index("switch_upstreams") < kinds(steps).index("drain")


def test_single_with_blue_live_removes_the_old_one_after_the_monitor_window(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    blue = backend("blue", 1)
    steps = plan_deploy("single", config, observed([blue], live=[blue]), Target("v2", NEW, 3))
    assert kinds(steps)[3:] == ["start_container", "wait_ready", "switch_upstreams", "monitor", "release_standby", "drain", "remove_container"]
    assert steps[3].spec.replica == 1  # single is one container whatever replicas says
    assert steps[5].standby == (blue.name,)  # running, out of rotation, through the window
    assert steps[-1] == RemoveContainer(blue.name, reason="replaced")


def test_no_monitor_step_when_the_window_is_zero(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"deploy.monitor_window": 0})
    blue = backend("blue", 1)
    assert "monitor" not in kinds(plan_deploy("blue-green", config, observed([blue], live=[blue]), Target("v2", NEW, 1)))


def test_a_stopped_proxy_is_started_on_the_live_version_first(tmp_path: Path) -> None:
    """Service first (issue 11): the proxy comes back on the healthy live backend before the new
    version even starts; the new version then takes over through an ordinary switch."""
    config = make_config(tmp_path)
    blue = backend("blue", 1)
    steps = plan_deploy("blue-green", config, observed([blue], live=[blue], proxy_state="exited"), Target("v2", NEW, 1))
    assert isinstance(steps[0], EnsureProxy) and steps[0].slots == (blue.name,)
    switch = next(s for s in steps if isinstance(s, SwitchUpstreams))
    assert (switch.slots, switch.previous) == ((name("green", 1),), (blue.name,))


# -- rolling ------------------------------------------------------------------------------------------
def test_rolling_three_replicas_parallelism_one(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    blues = [backend("blue", i) for i in (1, 2, 3)]
    b = [c.name for c in blues]
    g = [name("green", i) for i in (1, 2, 3)]
    steps = plan_deploy("rolling", config, observed(blues, live=blues), Target("v2", NEW, 3))
    body = [s for s in steps[3:] if not isinstance(s, StartContainer)]
    assert [s.spec.name for s in steps if isinstance(s, StartContainer)] == g
    assert body == [
        # slot n goes from blue n to green n; the other slots are untouched; blue n stays running
        # behind the standby slots through the batch's monitor window, then is drained
        WaitReady((g[0],), 60.0),
        SwitchUpstreams((g[0], b[1], b[2]), (b[0], b[1], b[2]), standby=(b[0],), slot_count=8),
        Monitor((g[0],), 3.0, fallback=(b[0],), warm=True),
        ReleaseStandby((g[0], b[1], b[2]), previous=(b[0],)),
        Drain((b[0],), 5.0),
        WaitReady((g[1],), 60.0),
        SwitchUpstreams((g[0], g[1], b[2]), (g[0], b[1], b[2]), standby=(b[1],), slot_count=8),
        Monitor((g[0], g[1]), 3.0, fallback=(b[1],), warm=True),
        ReleaseStandby((g[0], g[1], b[2]), previous=(b[1],)),
        Drain((b[1],), 5.0),
        WaitReady((g[2],), 60.0),
        SwitchUpstreams((g[0], g[1], g[2]), (g[0], g[1], b[2]), standby=(b[2],), slot_count=8),
        Monitor(tuple(g), 3.0, fallback=(b[2],), warm=True),
        ReleaseStandby(tuple(g), previous=(b[2],)),
        Drain((b[2],), 5.0),
        # the old version is kept (stopped) for rollback, per deploy.keep_versions
    ]
    # Each new replica is started (and gated) before the old one it replaces leaves the upstreams.
    for index, old in enumerate(b):
        start = next(i for i, s in enumerate(steps) if isinstance(s, StartContainer) and s.spec.name == g[index])
        leaves = next(i for i, s in enumerate(steps) if isinstance(s, SwitchUpstreams) and old not in s.slots)
        assert start < leaves


def test_rolling_keeps_retained_versions_per_keep_versions(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"deploy.keep_versions": 2})
    v1 = [backend("blue", i, deploy_id="20270101000000000aa", version="v1", state="exited") for i in (1, 2)]
    v2 = [backend("green", i, deploy_id=OLDER, version="v2", state="exited") for i in (1, 2)]
    v3 = [backend("blue", i, deploy_id=OLD, version="v3") for i in (1, 2)]
    steps = plan_deploy("rolling", config, observed([*v1, *v2, *v3], live=v3), Target("v4", NEW, 2))
    removed = [s.name for s in steps if isinstance(s, RemoveContainer)]
    assert removed == [c.name for c in v1]  # v3 (previous) and v2 stay, stopped


def test_rolling_opted_out_of_warm_standby_drains_each_batch_at_its_switch(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"deploy.warm_standby": False})
    blues = [backend("blue", i) for i in (1, 2)]
    steps = plan_deploy("rolling", config, observed(blues, live=blues), Target("v2", NEW, 2))
    assert kinds(steps)[3:] == [
        "start_container", "wait_ready", "switch_upstreams", "drain",
        "start_container", "wait_ready", "switch_upstreams", "drain", "monitor",
    ]  # fmt: skip
    assert all(s.standby == () for s in steps if isinstance(s, SwitchUpstreams))


def test_rolling_three_replicas_parallelism_two(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"deploy.parallelism": 2})
    blues = [backend("blue", i) for i in (1, 2, 3)]
    b = [c.name for c in blues]
    g = [name("green", i) for i in (1, 2, 3)]
    steps = plan_deploy("rolling", config, observed(blues, live=blues), Target("v2", NEW, 3))
    assert kinds(steps)[3:] == [
        "start_container", "start_container", "wait_ready", "switch_upstreams", "monitor", "release_standby", "drain",
        "start_container", "wait_ready", "switch_upstreams", "monitor", "release_standby", "drain",
    ]  # fmt: skip
    switches = [s for s in steps if isinstance(s, SwitchUpstreams)]
    assert switches[0] == SwitchUpstreams((g[0], g[1], b[2]), tuple(b), standby=(b[0], b[1]), slot_count=8)
    assert switches[1] == SwitchUpstreams((g[0], g[1], g[2]), (g[0], g[1], b[2]), standby=(b[2],), slot_count=8)
    assert next(s for s in steps if isinstance(s, WaitReady)) == WaitReady((g[0], g[1]), 60.0)


def test_rolling_scale_down_and_up(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    blues = [backend("blue", i) for i in (1, 2, 3)]
    down = plan_deploy("rolling", config, observed(blues, live=blues), Target("v2", NEW, 1))
    switches = [s.slots for s in down if isinstance(s, SwitchUpstreams)]
    assert switches == [(name("green", 1), blues[1].name, blues[2].name), (name("green", 1), blues[2].name), (name("green", 1),)]
    assert all(switches)  # never an empty upstream set
    one = [backend("blue", 1)]
    up = plan_deploy("rolling", config, observed(one, live=one), Target("v2", NEW, 2))
    switches = [s.slots for s in up if isinstance(s, SwitchUpstreams)]
    assert switches == [(name("green", 1),), (name("green", 1), name("green", 2))]


# -- leftovers ----------------------------------------------------------------------------------------
def test_leftovers_of_a_deploy_that_never_switched_are_removed_first(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    blue = backend("blue", 1, deploy_id=OLD)
    orphan = backend("green", 1, deploy_id="20291231000000000aa", version="v2")
    steps = plan_deploy(
        "blue-green",
        config,
        observed([blue, orphan], live=[blue], stray=["nginx.conf.next", ".nginx.conf.abc.tmp"]),
        Target("v3", NEW, 1),
    )
    assert steps[0] == CleanProxyFiles(("nginx.conf.next", ".nginx.conf.abc.tmp"))
    assert steps[1] == RemoveContainer(orphan.name, reason="leftover of a deploy that never switched")
    assert kinds(steps)[2:] == ["ensure_network", "ensure_volume", "ensure_volume", "start_container", "wait_ready",
                                "switch_upstreams", "monitor", "release_standby", "drain"]  # fmt: skip


def test_crash_between_rename_and_record_completes_the_switch(tmp_path: Path) -> None:
    """The slot link names the new container (it passed its gate), applied.json the old one: the
    switch happened, so it is completed, never undone (issue 11): record it, drain the old one."""
    config = make_config(tmp_path)
    blue = backend("blue", 1, deploy_id=OLD)
    new = backend("green", 1, deploy_id="20291231000000000aa", version="v2")
    state = observed([blue, new], live=[blue], config_names=[new.name])
    steps = plan_deploy("blue-green", config, state, Target("v3", NEW, 1))
    assert steps[:2] == [SwitchUpstreams((new.name,), (new.name,)), Drain((blue.name,), 5.0)]
    assert not any(isinstance(s, RemoveContainer) and s.name == new.name for s in steps)


def test_crash_mid_switch_to_a_container_that_is_gone_goes_back(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    blue = backend("blue", 1, deploy_id=OLD)
    state = observed([blue], live=[blue], config_names=["shop-backend-green-1-20291231000000000aa"])
    steps = plan_deploy("blue-green", config, state, Target("v3", NEW, 1))
    assert steps[0] == SwitchUpstreams((blue.name,), (blue.name,))


def test_an_old_generation_left_running_is_drained_and_stopped(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    blue = backend("blue", 1, deploy_id=OLDER, version="v1")
    green = backend("green", 1, deploy_id=OLD, version="v2")
    steps = plan_deploy("blue-green", config, observed([blue, green], live=[green]), Target("v3", NEW, 1))
    assert steps[:2] == [Drain((blue.name,), 5.0), EnsureNetwork("shop_net")]
    new = next(s for s in steps if isinstance(s, StartContainer)).spec
    assert new.color == "blue"
    # The lingering old one becomes a retained version (kept: deploy.keep_versions is 3).
    assert not any(isinstance(s, RemoveContainer) for s in steps)
    one = make_config(tmp_path, **{"deploy.keep_versions": 1})
    steps = plan_deploy("blue-green", one, observed([blue, green], live=[green]), Target("v3", NEW, 1))
    assert steps[-1] == RemoveContainer(blue.name, reason="older retained version v1")


def test_a_dead_live_container_is_dropped_from_the_upstreams(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    a = backend("blue", 1)
    b = backend("blue", 2, state="exited")
    steps = plan_deploy("rolling", config, observed([a, b], live=[a, b]), Target("v2", NEW, 2))
    # Its slot points at the live one: the slot count stays, so nginx is not reloaded (issue 11).
    assert steps[0] == SwitchUpstreams((a.name, a.name), (a.name, a.name))


def test_fresh_install_interrupted_before_the_proxy_started(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    orphan = backend("blue", 1, deploy_id=OLD)
    steps = plan_deploy("single", config, observed([orphan], live=[], proxy_state="missing"), Target("v1", NEW, 1))
    assert steps[0] == RemoveContainer(orphan.name, reason="leftover of a deploy that never switched")
    assert any(isinstance(s, EnsureProxy) for s in steps)


def test_plans_serialise_to_json(tmp_path: Path) -> None:
    import json

    config = make_config(tmp_path)
    blue = backend("blue", 1)
    steps = plan_deploy("rolling", config, observed([blue], live=[blue]), Target("v2", NEW, 1))
    document = json.loads(json.dumps([s.to_dict() for s in steps]))
    assert document[3]["kind"] == "start_container"
    assert document[3]["spec"]["labels"]["io.flashfit.version"] == "v2"
    assert all("description" in step for step in document)
