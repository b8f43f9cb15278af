"""Rollback plans: restart the retained containers of a version, or redeploy from its image."""

from __future__ import annotations

from pathlib import Path

import pytest

from flashfit_ops.plan.observed import Observed
from flashfit_ops.plan.rollback import plan_restart, retained_versions
from flashfit_ops.plan.steps import Drain, Monitor, ReleaseStandby, RestartContainer, SwitchUpstreams, WaitReady
from tests.unit.ops.test_plan_strategies import OLD, OLDER, backend, make_config, observed


def test_retained_versions_lists_stopped_generations_newest_first(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    v1 = backend("blue", 1, deploy_id=OLDER, version="v1", state="exited")
    v2 = backend("green", 1, deploy_id=OLD, version="v2", state="exited")
    v3 = backend("blue", 1, deploy_id="20300101000000000aa", version="v3")
    found = retained_versions(config, observed([v1, v2, v3], live=[v3]))
    assert [(r.version, r.containers) for r in found] == [("v2", (v2.name,)), ("v1", (v1.name,))]


def test_restart_plan_starts_gates_switches_and_keeps_the_current(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    v1 = backend("blue", 1, deploy_id=OLDER, version="v1", state="exited")
    v2 = backend("green", 1, deploy_id=OLD, version="v2")
    steps = plan_restart(config, observed([v1, v2], live=[v2]), "v1")
    assert steps[3:] == [
        RestartContainer(v1.name),
        WaitReady((v1.name,), 60.0),
        SwitchUpstreams((v1.name,), (v2.name,), standby=(v2.name,), slot_count=8),
        Monitor((v1.name,), 3.0, fallback=(v2.name,), warm=True),
        ReleaseStandby((v1.name,), previous=(v2.name,)),
        Drain((v2.name,), 5.0),
    ]


def test_restart_plan_needs_retained_containers(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    v2 = backend("green", 1, deploy_id=OLD, version="v2")
    with pytest.raises(ValueError):
        plan_restart(config, observed([v2], live=[v2]), "v1")


def test_nothing_retained_on_a_fresh_engine(tmp_path: Path) -> None:
    assert retained_versions(make_config(tmp_path), Observed(project="shop")) == []


def test_after_a_rollback_the_newer_version_is_retained_not_a_leftover(tmp_path: Path) -> None:
    """v2 served, then `rollback v1` restarted the older v1: v2 (stopped, newer deploy id) must be
    kept for rolling forward again, because it is recorded as having served."""
    import dataclasses

    from flashfit_ops.plan.repair import leftovers

    config = make_config(tmp_path)
    v1 = backend("blue", 1, deploy_id=OLDER, version="v1")
    v2 = backend("green", 1, deploy_id=OLD, version="v2", state="exited")
    state = observed([v1, v2], live=[v1])
    state = dataclasses.replace(state, proxy=dataclasses.replace(state.proxy, served=(v1.name, v2.name)))
    steps, _ = leftovers(config, state)
    assert steps == []
    assert [r.version for r in retained_versions(config, state)] == ["v2"]
    # Without the record, the newer-than-live rule would have removed it.
    never = dataclasses.replace(state, proxy=dataclasses.replace(state.proxy, served=(v1.name,)))
    assert [s.kind for s in leftovers(config, never)[0]] == ["remove_container"]
