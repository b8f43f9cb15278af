"""What `flashfit deploy` reports besides the steps: the monitor-window behaviour of the plan,
every nginx reload it will do, and the command's own wall time in the summary."""

from __future__ import annotations

from pathlib import Path

from flashfit_ops.cli.deploy_cmds import _report, command_wall_seconds
from flashfit_ops.plan import plan_deploy
from flashfit_ops.plan.common import Target, window_behaviour
from tests.unit.ops.test_plan_strategies import NEW, backend, make_config, observed


def dry_run_of(config, state) -> dict:
    steps = plan_deploy("blue-green", config, state, Target("v2", NEW, 1))
    return {"dry_run": True, "strategy": "blue-green", "version": "v2", "plan": [s.to_dict() for s in steps]}


def test_dry_run_says_warm_or_cold_and_names_the_reloads(tmp_path: Path, capsys, monkeypatch) -> None:
    from flashfit_ops import console

    monkeypatch.setattr(console, "_json_mode", False)
    blue = backend("blue", 1)
    warm = make_config(tmp_path)
    result = dry_run_of(warm, observed([blue], live=[blue]))
    _report(result, False, "deployed", warm)
    err = capsys.readouterr().err
    assert "the previous version stays running, out of rotation" in err and "no cold start" in err
    assert "nginx reloads: none (every switch relinks slots)" in err
    assert result["nginx_reloads"] == []

    cold = make_config(tmp_path, **{"deploy.warm_standby": False})
    state = observed([blue], live=[blue])
    import dataclasses

    state = dataclasses.replace(state, proxy=dataclasses.replace(state.proxy, slot_count=1))
    result = dry_run_of(cold, state)
    _report(result, True, "deployed", cold)
    assert "a cold start" in result["monitor_window_behaviour"]
    assert result["nginx_reloads"] == ["nginx.conf lists 1 slot(s), deploy.max_replicas asks for 8"]
    assert window_behaviour(make_config(tmp_path, **{"deploy.monitor_window": 0})).startswith("no monitor window")


def test_the_summary_time_is_the_command_wall_time(tmp_path: Path, capsys, monkeypatch) -> None:
    from flashfit_ops import console

    monkeypatch.setattr(console, "_json_mode", False)
    # The deploy part alone (duration_s) leaves out start-up, the lock wait and the image check.
    result = {"version": "v2", "strategy": "blue-green", "duration_s": 0.0, "live": ["x"], "url": "http://127.0.0.1/", "execution": {}}
    _report(result, False, "deployed", make_config(tmp_path))
    assert 0 < result["wall_s"] <= command_wall_seconds() + 0.02  # counted from this process's start, not from the deploy (duration_s 0)
    assert f"deployed v2 (blue-green) in {result['wall_s']:.1f}s" in capsys.readouterr().err
