"""The health gate with a fake probe and a fake clock: backoff, start period, success threshold,
deadline, liveness retries, a container that exits."""

from __future__ import annotations

from flashfit_ops.execute.health import GateSettings, ProbeResult, wait_ready


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 4))
        self.now += seconds


def scripted(ready_at: float, clock: Clock, *, alive: bool = True):
    calls: list[tuple[str, float]] = []

    def probe(path: str, timeout: float) -> ProbeResult:
        calls.append((path, timeout))
        if not alive:
            return ProbeResult(False, None, "ConnectError")
        if path == "/health":
            return ProbeResult(True, 200)
        return ProbeResult(clock.now >= ready_at, 200 if clock.now >= ready_at else 503)

    return probe, calls


def test_ready_at_once() -> None:
    clock = Clock()
    probe, calls = scripted(0.0, clock)
    result = wait_ready(probe, GateSettings(), clock=clock, sleep=clock.sleep)
    assert result.ready and result.attempts == 1 and clock.sleeps == []
    assert calls == [("/ready", 5.0)]


def test_backoff_doubles_and_is_capped_at_interval() -> None:
    clock = Clock()
    probe, _ = scripted(3.0, clock)
    result = wait_ready(probe, GateSettings(interval=1.0, first_delay=0.05), clock=clock, sleep=clock.sleep)
    assert result.ready
    assert clock.sleeps[:6] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert max(clock.sleeps) == 1.0
    assert 3.0 <= result.elapsed <= 4.0


def test_success_threshold_needs_consecutive_successes() -> None:
    clock = Clock()
    answers = iter([True, False, True, True, True])

    def flaky(path: str, timeout: float) -> ProbeResult:
        ok = next(answers)
        return ProbeResult(ok, 200 if ok else 503)

    result = wait_ready(flaky, GateSettings(success_threshold=3), clock=clock, sleep=clock.sleep)
    assert result.ready and result.attempts == 5


def test_deadline_ends_the_wait_with_the_last_answer() -> None:
    clock = Clock()
    probe, _ = scripted(float("inf"), clock)
    result = wait_ready(probe, GateSettings(deadline=10.0, start_period=60.0), clock=clock, sleep=clock.sleep)
    assert not result.ready
    assert "10s deadline" in result.reason and "/ready -> 503" in result.reason
    assert 10.0 <= clock.now <= 10.01


def test_probe_timeout_never_exceeds_the_time_left() -> None:
    clock = Clock()
    probe, calls = scripted(float("inf"), clock)
    wait_ready(probe, GateSettings(deadline=2.0, timeout=5.0), clock=clock, sleep=clock.sleep)
    assert calls[0][1] == 2.0
    assert all(timeout <= 2.0 for _, timeout in calls)


def test_unresponsive_after_start_period_fails_after_retries() -> None:
    clock = Clock()
    probe, calls = scripted(0.0, clock, alive=False)
    result = wait_ready(probe, GateSettings(start_period=3.0, retries=3, deadline=100.0), clock=clock, sleep=clock.sleep)
    assert not result.ready
    assert "3 failed liveness probes after the 3s start period" in result.reason
    assert clock.now < 10
    assert [p for p, _ in calls].count("/health") == 3


def test_still_loading_is_not_a_liveness_failure() -> None:
    """/ready answering 503 means alive but loading: wait until the deadline, not `retries`."""
    clock = Clock()
    probe, _ = scripted(20.0, clock)
    result = wait_ready(probe, GateSettings(start_period=1.0, retries=2, deadline=60.0), clock=clock, sleep=clock.sleep)
    assert result.ready and result.elapsed >= 20.0


def test_an_exited_container_fails_at_once() -> None:
    clock = Clock()
    probe, _ = scripted(float("inf"), clock, alive=False)
    result = wait_ready(probe, GateSettings(), exited=lambda: "exited with code 1", clock=clock, sleep=clock.sleep)
    assert not result.ready and result.reason == "exited with code 1" and result.attempts == 1


def test_status_updates_report_progress() -> None:
    clock = Clock()
    probe, _ = scripted(0.3, clock)
    lines: list[str] = []
    wait_ready(probe, GateSettings(), on_status=lines.append, clock=clock, sleep=clock.sleep)
    assert lines and all("/ready -> 503" in line for line in lines)
