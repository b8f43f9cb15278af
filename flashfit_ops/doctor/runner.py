"""Run checks concurrently, each under its own timeout.

A small pool of daemon worker threads (at most `max_workers` checks in flight). Each check's clock
starts when a worker picks it up. A check that raises becomes a failure carrying its error; one
that overruns its timeout becomes a failure at its deadline and its slot is handed to the next
check. The stuck thread is a daemon and is abandoned: Python cannot kill a thread, but a daemon
never keeps the process alive, so `flashfit doctor` always returns (concurrent.futures' workers
are joined at exit, which is why they are not used here).
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from collections import deque
from typing import Callable

from flashfit_ops.doctor.checks.swarm import for_target
from flashfit_ops.doctor.registry import Check
from flashfit_ops.doctor.result import FAILURE, CheckResult, Finding
from flashfit_ops.errors import FlashFitError

DEFAULT_MAX_WORKERS = 16
CRASH_HINT = "this is a bug in the check; rerun with -v for the error and report it"


def _as_result(check: Check, outcome: Finding | BaseException, duration: float) -> CheckResult:
    ms = duration * 1000.0
    if isinstance(outcome, Finding):
        return CheckResult(check.name, outcome.status, outcome.summary, outcome.hint, dict(outcome.details), ms)
    if isinstance(outcome, FlashFitError):
        details = dict(outcome.details)
        details["error"] = type(outcome).__name__
        return CheckResult(check.name, FAILURE, outcome.message, outcome.hint or CRASH_HINT, details, ms)
    if not isinstance(outcome, BaseException):
        return CheckResult(
            check.name, FAILURE, f"check returned {type(outcome).__name__}, not a finding", CRASH_HINT, {}, ms
        )
    lines = traceback.format_exception(type(outcome), outcome, outcome.__traceback__)
    return CheckResult(
        check.name,
        FAILURE,
        f"check crashed: {type(outcome).__name__}: {outcome}",
        CRASH_HINT,
        {"error": type(outcome).__name__, "traceback": "".join(lines[-6:])},
        ms,
    )


def _timed_out(check: Check, duration: float) -> CheckResult:
    return CheckResult(
        check.name,
        FAILURE,
        f"timed out after {check.timeout:g}s",
        "the component it probes is hanging or very slow; run `flashfit doctor --check "
        f"{check.name} -v` alone, and look at the engine/container it talks to",
        {"error": "timeout", "timeout_s": check.timeout},
        duration * 1000.0,
    )


def run_checks(
    checks: list[Check],
    ctx: object,
    *,
    max_workers: int = DEFAULT_MAX_WORKERS,
    clock: Callable[[], float] = time.monotonic,
    on_result: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Results in the order of `checks`, whatever order they finished in."""
    pending: deque[int] = deque(range(len(checks)))
    running: dict[int, float] = {}  # index -> start time
    results: dict[int, CheckResult] = {}
    done: queue.Queue[tuple[int, Finding | BaseException, float]] = queue.Queue()

    def work(index: int, started: float) -> None:
        try:
            outcome: Finding | BaseException = for_target(checks[index].name, checks[index].func, ctx)(ctx)  # type: ignore[arg-type]
        except BaseException as error:  # noqa: BLE001 - everything becomes a result
            outcome = error
        done.put((index, outcome, clock() - started))

    def finish(index: int, result: CheckResult) -> None:
        running.pop(index, None)
        results[index] = result
        if on_result is not None:
            on_result(result)

    workers = max(1, max_workers)
    while pending or running:
        while pending and len(running) < workers:
            index = pending.popleft()
            started = clock()
            running[index] = started
            threading.Thread(
                target=work, args=(index, started), name=f"doctor-{checks[index].name}", daemon=True
            ).start()
        now = clock()
        next_deadline = min(running[i] + checks[i].timeout for i in running)
        try:
            index, outcome, duration = done.get(timeout=max(0.0, next_deadline - now))
        except queue.Empty:
            pass
        else:
            if index in running:  # else it already timed out: its late answer is dropped
                finish(index, _as_result(checks[index], outcome, duration))
        now = clock()
        for index in [i for i in running if now >= running[i] + checks[i].timeout]:
            finish(index, _timed_out(checks[index], now - running[index]))
    return [results[i] for i in range(len(checks))]
