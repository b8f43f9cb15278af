"""Carrying out EnsureSpares against the fake backend at the seam: a spare is started, gated and
linked behind the standby slots, and the earlier spare removed only then; a spare that never
becomes ready is a warning and is removed, never a rollback of what already serves."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from flashfit_ops.execute.health import GateSettings, ProbeResult
from flashfit_ops.config.model import Config
from flashfit_ops.execute.lifecycle import LifecycleExecutor
from flashfit_ops.plan import plan_deploy
from flashfit_ops.plan.common import Target
from tests.unit.ops.test_execute_executor import FakeBackend, FakeClock, FakeProxy, never_ready, no_status
from tests.unit.ops.test_plan_strategies import NEW, backend, make_config, name, observed


def make(tmp_path: Path, fake: FakeBackend, clock: FakeClock, probes: dict[str, Any] | None = None) -> tuple[LifecycleExecutor, Config]:
    config = make_config(tmp_path, **{"deploy.spare_replicas": 1, "deploy.deadline": "30s"})
    probes = probes or {}
    warnings: list[str] = []
    executor = LifecycleExecutor(
        fake,
        config,
        secrets={"JWT_SECRET_KEY": "s3cret-value-long-enough"},
        proxy=FakeProxy(fake),  # type: ignore[arg-type]  # the fake at the seam
        probe_for=lambda c: probes.get(c, lambda path, timeout: ProbeResult(True, 200)),
        gate=GateSettings.from_config(config),
        clock=clock,
        sleep=clock.sleep,
        say=lambda kind, message: warnings.append(message) if kind == "warn" else None,
        status=no_status,
    )
    return executor, config


def test_blue_green_ends_by_starting_gating_and_linking_the_new_spare(tmp_path: Path) -> None:
    clock = FakeClock()
    blue, blue_spare = backend("blue", 1), backend("blue", 2)
    fake = FakeBackend(clock, running={blue.name, blue_spare.name})
    executor, config = make(tmp_path, fake, clock)
    state = observed([blue, blue_spare], live=[blue])
    state = dataclasses.replace(state, proxy=dataclasses.replace(state.proxy, standby=(blue_spare.name,)))
    execution = executor.run(plan_deploy("blue-green", config, state, Target("v2", NEW, 1)))
    green, green_spare = name("green", 1), name("green", 2)
    assert fake.calls[-7:] == [
        ("standby", (green,)),  # the monitor window closed clean
        ("stop", blue.name),
        ("create_backend", green_spare, ("JWT_SECRET_KEY",)),
        ("start", green_spare),
        ("standby", (green_spare,)),  # nginx falls over to it; the keeper relinks to it
        ("remove", blue_spare.name),  # the earlier spare, only once the new one is linked
        ("forget", blue_spare.name),
    ]
    assert green_spare in execution.ready_seconds and not execution.warnings and not execution.rolled_back


def test_a_spare_that_never_becomes_ready_is_a_warning_not_a_rollback(tmp_path: Path) -> None:
    clock = FakeClock()
    blue = backend("blue", 1)
    fake = FakeBackend(clock, running={blue.name})
    green, green_spare = name("green", 1), name("green", 2)
    executor, config = make(tmp_path, fake, clock, probes={green_spare: never_ready})
    execution = executor.run(plan_deploy("blue-green", config, observed([blue], live=[blue]), Target("v2", NEW, 1)))
    assert not execution.rolled_back
    assert fake.states[green] == "running" and green_spare not in fake.states  # removed
    assert fake.calls[-3:] == [("remove", green_spare), ("forget", green_spare), ("standby", (green,))]  # standby stays on the live one
    assert len(execution.warnings) == 1 and green_spare in execution.warnings[0]
