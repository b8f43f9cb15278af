"""The executor against a fake backend at the seam: what it calls, in which order, and what it
undoes (in reverse) when a step fails or the user interrupts."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import AbstractSet, Any, Iterator, Mapping, NoReturn

import pytest

from flashfit_ops.engine.protocol import ContainerInfo, Engine
from flashfit_ops.errors import OperationFailed
from flashfit_ops.execute.executor import DiedAfterSwitch, Executor, GateFailed
from flashfit_ops.execute.health import GateSettings, ProbeResult
from flashfit_ops.plan import plan_deploy
from flashfit_ops.plan.common import EngineGpus, Target
from flashfit_ops.plan.steps import ContainerSpec, EnsureKeeper, ProxySpec, RemoveContainer
from tests.unit.ops.test_plan_strategies import NEW, backend, make_config, name, observed


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.001)


class FakeBackend(Engine):
    """The engine at the executor's seam. It declares the Engine protocol, and mypy (run by
    test_types.py and `make test`) checks that it keeps implementing it."""

    def __init__(self, clock: FakeClock, running: AbstractSet[str] = frozenset()):
        self.calls: list[tuple[Any, ...]] = []
        self.clock = clock
        self.states = {n: "running" for n in running}
        self.die_at: dict[str, float] = {}

    def ensure_network(self, name: str, labels: dict[str, str]) -> bool:
        self.calls.append(("ensure_network", name))
        return False

    def remove_network(self, name: str) -> None:
        self.calls.append(("remove_network", name))

    def ensure_volume(self, name: str, labels: dict[str, str]) -> bool:
        self.calls.append(("ensure_volume", name))
        return False

    def create_backend(self, spec: ContainerSpec, secrets: dict[str, str]) -> None:
        self.calls.append(("create_backend", spec.name, tuple(sorted(secrets))))
        self.states[spec.name] = "created"

    def start(self, name: str) -> None:
        self.calls.append(("start", name))
        self.states[name] = "running"

    def stop(self, name: str, timeout: float = 10.0) -> None:
        self.calls.append(("stop", name))
        self.states[name] = "exited"

    def remove(self, name: str) -> None:
        self.calls.append(("remove", name))
        self.states.pop(name, None)

    def container(self, name: str) -> ContainerInfo | None:
        state = self.states.get(name)
        if state is None:
            return None
        if name in self.die_at and self.clock() >= self.die_at[name]:
            state = self.states[name] = "exited"
        return ContainerInfo(name=name, id=name, labels={}, state=state, image="", exit_code=3 if state == "exited" else 0)

    def ip_address(self, name: str, network: str) -> str | None:
        return "10.0.0.2"

    def logs(self, name: str, tail: int = 20) -> str:
        self.calls.append(("logs", name))
        return f"log line of {name}"

    # The rest of the protocol: not asked by the plans these tests run.
    def _not_here(self, what: str) -> NoReturn:
        raise AssertionError(f"the executor asked {what} of the fake engine")

    def list_containers(self, project: str) -> list[ContainerInfo]:
        self._not_here("list_containers")

    def network_exists(self, name: str) -> bool:
        self._not_here("network_exists")

    def image_exists(self, reference: str) -> bool:
        self._not_here("image_exists")

    def image_tags(self, repository: str) -> list[str]:
        self._not_here("image_tags")

    def image_labels(self, reference: str) -> dict[str, str] | None:
        self._not_here("image_labels")

    def gpu_support(self) -> EngineGpus:
        self._not_here("gpu_support")

    def gpu_nodes(self, label: str) -> int:
        self._not_here("gpu_nodes")

    def remove_volume(self, name: str) -> None:
        self._not_here("remove_volume")

    def run_keeper(self, step: EnsureKeeper, script: str, modules: Mapping[str, str] | None = None) -> None:
        self._not_here("run_keeper")

    def run_proxy(self, spec: ProxySpec) -> ContainerInfo:
        self._not_here("run_proxy")

    def stream_logs(self, name: str, *, follow: bool, since: Any = None, tail: Any = "all") -> Iterator[bytes]:
        self._not_here("stream_logs")

    def exec(self, name: str, command: list[str]) -> tuple[int, str]:
        self._not_here("exec")

    def processes(self, name: str) -> list[tuple[int, str]]:
        self._not_here("processes")


class FakeProxy:
    def __init__(self, backend: FakeBackend, fail_switch_to: tuple | None = None):
        self.backend = backend
        self.folder = Path("/nonexistent")
        self.sockets = Path("/nonexistent")
        self.fail_switch_to = fail_switch_to
        self.reloads = 0

    def switch(self, names, versions=None, *, slot_count=0, standby=()):
        # Recorded with its standby slots when they point elsewhere than the slots.
        self.backend.calls.append(("switch", tuple(names)) + (("standby", tuple(standby)) if standby else ()))
        if self.fail_switch_to == tuple(names):
            raise OperationFailed("nginx rejected the new configuration")

    def link_standby(self, names, count):
        self.backend.calls.append(("standby", tuple(names)))

    def current_count(self):
        return 8

    def ensure_folders(self):
        pass

    def forget(self, name):
        self.backend.calls.append(("forget", name))

    def write_live(self, names, slot_count=0, standby=()):
        self.backend.calls.append(("write_proxy_config", tuple(names)))

    def wait_serving(self):
        pass

    def record_applied(self, names):
        pass

    def clean(self, files):
        self.backend.calls.append(("clean", tuple(files)))


@contextmanager
def no_status(_message):
    class Live:
        def update(self, *_a, **_k):
            pass

    yield Live()


def make_executor(tmp_path, backend, clock, probes=None, proxy=None, **config_overrides):
    config = make_config(tmp_path, **config_overrides)
    probes = probes or {}

    def probe_for(container):
        return probes.get(container, lambda path, timeout: ProbeResult(True, 200))

    return Executor(
        backend,
        config,
        secrets={"JWT_SECRET_KEY": "s3cret-value-long-enough"},
        proxy=proxy or FakeProxy(backend),
        probe_for=probe_for,
        gate=GateSettings.from_config(config),
        clock=clock,
        sleep=clock.sleep,
        say=lambda kind, message: None,
        status=no_status,
    ), config


def never_ready(path, timeout):
    return ProbeResult(False, 503) if path == "/ready" else ProbeResult(True, 200)


def test_blue_green_success_calls_in_plan_order(tmp_path: Path) -> None:
    clock = FakeClock()
    blue = backend("blue", 1)
    fake = FakeBackend(clock, running={blue.name})
    executor, config = make_executor(tmp_path, fake, clock)
    steps = plan_deploy("blue-green", config, observed([blue], live=[blue]), Target("v2", NEW, 1))
    execution = executor.run(steps)
    green = name("green", 1)
    assert fake.calls == [
        ("ensure_network", "shop_net"),
        ("ensure_volume", "shop_model_cache"),
        ("ensure_volume", "shop_vector_indices"),
        ("create_backend", green, ("JWT_SECRET_KEY",)),
        ("start", green),
        ("switch", (green,), "standby", (blue.name,)),  # blue runs on, out of rotation
        ("standby", (green,)),  # the monitor window closed clean
        ("stop", blue.name),  # the drain: SIGTERM, in-flight requests finish, it exits
    ]
    assert not execution.rolled_back
    assert [o.status for o in execution.outcomes] == ["done"] * (len(steps) + 1)
    # The old container drains in the background; the plan ends by waiting for it.
    assert execution.outcomes[-1].kind == "stop_wait"
    assert green in execution.ready_seconds
    assert set(execution.drain_seconds) == {blue.name} and execution.reloads == 0


def test_never_ready_version_is_removed_and_never_switched_to(tmp_path: Path) -> None:
    clock = FakeClock()
    blue = backend("blue", 1)
    fake = FakeBackend(clock, running={blue.name})
    green = name("green", 1)
    executor, config = make_executor(tmp_path, fake, clock, probes={green: never_ready}, **{"deploy.deadline": "30s"})
    steps = plan_deploy("blue-green", config, observed([blue], live=[blue]), Target("v2", NEW, 1))
    with pytest.raises(GateFailed) as caught:
        executor.run(steps)
    assert ("logs", green) in fake.calls
    assert not any(call[0] == "switch" for call in fake.calls)
    assert fake.calls[-2:] == [("remove", green), ("forget", green)]
    assert fake.states == {blue.name: "running"}
    assert caught.value.details["logs"] == {green: f"log line of {green}"}
    assert "deadline" in caught.value.message
    assert executor.execution.rolled_back


def test_death_in_the_monitor_window_relinks_to_the_warm_old_version(tmp_path: Path) -> None:
    """The old version was never stopped: the rollback is a relink of the slots back to it (no
    start, no gate, no cold start), then the dead one goes."""
    clock = FakeClock()
    blue = backend("blue", 1)
    fake = FakeBackend(clock, running={blue.name})
    green = name("green", 1)
    fake.die_at[green] = clock.now + 1.0  # passes the gate at once, dies a second later
    executor, config = make_executor(tmp_path, fake, clock, **{"deploy.monitor_window": "10s"})
    steps = plan_deploy("blue-green", config, observed([blue], live=[blue]), Target("v2", NEW, 1))
    with pytest.raises(DiedAfterSwitch):
        executor.run(steps)
    forward = fake.calls.index(("switch", (green,), "standby", (blue.name,)))
    assert fake.calls[forward + 1 :] == [
        ("logs", green),
        ("switch", (blue.name,)),  # undo switch: every slot, standby included, back to blue
        ("remove", green),  # undo start: the dead one goes
        ("forget", green),
    ]
    assert fake.states == {blue.name: "running"}


def test_death_in_the_window_without_warm_standby_starts_the_old_one_again(tmp_path: Path) -> None:
    clock = FakeClock()
    blue = backend("blue", 1)
    fake = FakeBackend(clock, running={blue.name})
    green = name("green", 1)
    fake.die_at[green] = clock.now + 1.0
    executor, config = make_executor(tmp_path, fake, clock, **{"deploy.monitor_window": "10s", "deploy.warm_standby": False})
    steps = plan_deploy("blue-green", config, observed([blue], live=[blue]), Target("v2", NEW, 1))
    with pytest.raises(DiedAfterSwitch):
        executor.run(steps)
    forward = fake.calls.index(("stop", blue.name))
    assert fake.calls[forward + 1 :] == [
        ("logs", green),
        ("start", blue.name),  # undo stop: the old one runs again (and is gated): a cold start
        ("switch", (blue.name,)),
        ("remove", green),
        ("forget", green),
    ]


def test_rolling_death_in_a_batch_window_relinks_that_batch_back(tmp_path: Path) -> None:
    clock = FakeClock()
    blues = [backend("blue", i) for i in (1, 2)]
    fake = FakeBackend(clock, running={c.name for c in blues})
    b = [c.name for c in blues]
    g1 = name("green", 1)
    fake.die_at[g1] = clock.now + 1.0
    executor, config = make_executor(tmp_path, fake, clock, **{"deploy.monitor_window": "10s"})
    steps = plan_deploy("rolling", config, observed(blues, live=blues), Target("v2", NEW, 2))
    with pytest.raises(DiedAfterSwitch):
        executor.run(steps)
    assert not any(call[0] == "stop" for call in fake.calls)  # blue 1 was never stopped
    assert fake.calls[-3:] == [("switch", (b[0], b[1])), ("remove", g1), ("forget", g1)]


def test_failed_switch_leaves_old_serving(tmp_path: Path) -> None:
    clock = FakeClock()
    blue = backend("blue", 1)
    fake = FakeBackend(clock, running={blue.name})
    green = name("green", 1)
    executor, config = make_executor(tmp_path, fake, clock, proxy=None)
    executor.proxy = FakeProxy(fake, fail_switch_to=(green,))
    steps = plan_deploy("blue-green", config, observed([blue], live=[blue]), Target("v2", NEW, 1))
    with pytest.raises(OperationFailed):
        executor.run(steps)
    assert fake.calls[-4:] == [
        ("switch", (green,), "standby", (blue.name,)),
        ("switch", (blue.name,)),
        ("remove", green),
        ("forget", green),
    ]
    assert fake.states == {blue.name: "running"}


def test_rolling_failure_in_second_batch_restores_the_first(tmp_path: Path) -> None:
    clock = FakeClock()
    blues = [backend("blue", i) for i in (1, 2, 3)]
    fake = FakeBackend(clock, running={c.name for c in blues})
    g1, g2 = name("green", 1), name("green", 2)
    executor, config = make_executor(tmp_path, fake, clock, probes={g2: never_ready}, **{"deploy.deadline": "5s"})
    steps = plan_deploy("rolling", config, observed(blues, live=blues), Target("v2", NEW, 3))
    with pytest.raises(GateFailed):
        executor.run(steps)
    b = [c.name for c in blues]
    undo = fake.calls[fake.calls.index(("logs", g2)) + 1 :]
    assert undo == [
        ("remove", g2),
        ("forget", g2),
        ("start", b[0]),
        ("switch", (b[0], b[1], b[2])),
        ("remove", g1),
        ("forget", g1),
    ]
    assert set(fake.states) == set(b) and all(s == "running" for s in fake.states.values())


def test_interrupt_during_the_gate_rolls_back_and_reraises(tmp_path: Path) -> None:
    clock = FakeClock()
    blue = backend("blue", 1)
    fake = FakeBackend(clock, running={blue.name})
    green = name("green", 1)

    def interrupted(path, timeout):
        raise KeyboardInterrupt

    executor, config = make_executor(tmp_path, fake, clock, probes={green: interrupted})
    steps = plan_deploy("blue-green", config, observed([blue], live=[blue]), Target("v2", NEW, 1))
    with pytest.raises(KeyboardInterrupt):
        executor.run(steps)
    assert fake.calls[-2:] == [("remove", green), ("forget", green)]
    assert executor.execution.outcomes[-2].status == "failed" or executor.execution.rolled_back
    assert executor.execution.error == "interrupted"


def test_a_removal_that_fails_is_a_warning_not_a_rollback(tmp_path: Path) -> None:
    clock = FakeClock()
    fake = FakeBackend(clock)

    def broken_remove(name):
        raise OperationFailed("device busy")

    fake.remove = broken_remove
    executor, _ = make_executor(tmp_path, fake, clock)
    execution = executor.run([RemoveContainer("shop-backend-blue-1-x", reason="replaced")])
    assert not execution.rolled_back
    assert execution.warnings == ["could not remove shop-backend-blue-1-x: device busy"]


def test_undo_failures_do_not_stop_the_rest_of_the_rollback(tmp_path: Path) -> None:
    clock = FakeClock()
    blue = backend("blue", 1)
    fake = FakeBackend(clock, running={blue.name})
    green = name("green", 1)
    executor, config = make_executor(tmp_path, fake, clock, probes={green: never_ready}, **{"deploy.deadline": "5s"})
    calls = []

    def remove(name):
        calls.append(name)
        raise OperationFailed("engine hiccup")

    fake.remove = remove
    steps = plan_deploy("blue-green", config, observed([blue], live=[blue]), Target("v2", NEW, 1))
    with pytest.raises(GateFailed):
        executor.run(steps)
    assert calls == [green]
    assert any("engine hiccup" in w for w in executor.execution.warnings)


def test_an_interrupt_between_two_steps_rolls_back_too(tmp_path: Path) -> None:
    """Ctrl-C or SIGTERM while the next step is being announced (after the container started,
    before the gate) still undoes what was done."""
    clock = FakeClock()
    blue = backend("blue", 1)
    fake = FakeBackend(clock, running={blue.name})
    executor, config = make_executor(tmp_path, fake, clock)
    green = name("green", 1)

    def say(kind: str, message: str) -> None:
        if message.startswith("wait until ready"):
            raise KeyboardInterrupt

    executor.say = say
    steps = plan_deploy("blue-green", config, observed([blue], live=[blue]), Target("v2", NEW, 1))
    with pytest.raises(KeyboardInterrupt):
        executor.run(steps)
    assert fake.calls[-2:] == [("remove", green), ("forget", green)]
    assert fake.states == {blue.name: "running"}
    assert executor.execution.rolled_back
    assert executor.execution.outcomes[-1].status == "undone"
