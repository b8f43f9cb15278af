"""The doctor runner: concurrency, timeouts, crashes -> failures, exit codes, JSON shape."""

from __future__ import annotations

import json
import threading
import time

import pytest

from flashfit_ops.doctor.registry import Check
from flashfit_ops.doctor.selection import all_checks, select
from flashfit_ops.doctor.report import lines, summary_line
from flashfit_ops.doctor.result import FAILURE, OK, WARNING, CheckResult, Finding, combine, exit_code, failure, ok, warning
from flashfit_ops.doctor.runner import run_checks
from flashfit_ops.errors import EXIT_FAILED, EXIT_OK, Unavailable, UsageError


def make(name: str, func, timeout: float = 2.0) -> Check:
    return Check(name, func, f"{name} check", timeout)


def test_results_keep_check_order_whatever_order_they_finish_in():
    def slow(_ctx):
        time.sleep(0.2)
        return ok("slow done")

    checks = [make("slow", slow), make("fast", lambda _ctx: ok("fast done"))]
    results = run_checks(checks, ctx=None)
    assert [r.check for r in results] == ["slow", "fast"]
    assert all(r.status == OK for r in results)
    assert results[0].duration_ms >= 190


def test_checks_run_concurrently():
    barrier = threading.Barrier(5, timeout=2)

    def meet(_ctx):
        barrier.wait()  # only passes if all five run at the same time
        return ok("met")

    results = run_checks([make(f"c{i}", meet) for i in range(5)], ctx=None)
    assert [r.status for r in results] == [OK] * 5


def test_a_hanging_check_times_out_as_a_failure_and_does_not_hold_the_others():
    release = threading.Event()

    finished = threading.Event()

    def hang(_ctx):
        release.wait(30)
        finished.set()
        return ok("never reported")

    results = run_checks([make("hang", hang, timeout=0.3), make("fine", lambda _c: ok("fine"))], ctx=None)
    abandoned = not finished.is_set()  # run_checks returned while the check still hung
    release.set()
    hung, fine = results
    assert hung.status == FAILURE
    assert "timed out after 0.3s" in hung.summary
    assert hung.hint and "--check hang" in hung.hint
    assert hung.details["error"] == "timeout"
    assert fine.status == OK
    assert abandoned


def test_timeouts_start_when_a_check_starts_not_when_it_was_queued():
    def nap(_ctx):
        time.sleep(0.2)
        return ok("napped")

    # One worker: the third check waits 0.4 s for a slot but has only 0.3 s of its own.
    results = run_checks([make(f"n{i}", nap, timeout=0.3) for i in range(3)], ctx=None, max_workers=1)
    assert [r.status for r in results] == [OK, OK, OK]


def test_a_timed_out_check_frees_its_slot():
    release = threading.Event()

    def hang(_ctx):
        release.wait(30)
        return ok("late")

    results = run_checks([make("hang", hang, timeout=0.2), make("next", lambda _c: ok("ran"))], ctx=None, max_workers=1)
    release.set()
    assert [r.status for r in results] == [FAILURE, OK]


def test_a_crashing_check_becomes_a_failure_with_its_error_not_a_traceback():
    def crash(_ctx):
        raise KeyError("boom")

    (result,) = run_checks([make("crash", crash)], ctx=None)
    assert result.status == FAILURE
    assert result.summary == "check crashed: KeyError: 'boom'"
    assert result.hint
    assert result.details["error"] == "KeyError"
    assert "KeyError" in result.details["traceback"]


def test_a_flashfit_error_keeps_its_message_and_hint():
    def unreachable(_ctx):
        raise Unavailable("the Docker engine is unreachable: connection refused", hint="start Docker")

    (result,) = run_checks([make("docker", unreachable)], ctx=None)
    assert result.status == FAILURE
    assert result.summary == "the Docker engine is unreachable: connection refused"
    assert result.hint == "start Docker"


def test_a_check_returning_garbage_is_a_failure():
    (result,) = run_checks([make("bad", lambda _c: "fine, really")], ctx=None)
    assert result.status == FAILURE
    assert "not a finding" in result.summary


def test_the_context_is_passed_to_every_check():
    seen = []
    run_checks([make("a", lambda c: seen.append(c) or ok("a"))], ctx="the context")
    assert seen == ["the context"]


def test_on_result_is_called_once_per_check():
    got = []
    run_checks([make("a", lambda _c: ok("a")), make("b", lambda _c: warning("b", "h"))], ctx=None, on_result=got.append)
    assert sorted(r.check for r in got) == ["a", "b"]


@pytest.mark.parametrize(
    ("statuses", "code"),
    [([], EXIT_OK), ([OK, OK], EXIT_OK), ([OK, WARNING], EXIT_OK), ([WARNING, FAILURE], EXIT_FAILED), ([FAILURE], EXIT_FAILED)],
)
def test_exit_code_rules(statuses, code):
    assert exit_code([CheckResult(f"c{i}", s, "x") for i, s in enumerate(statuses)]) == code


def test_json_shape():
    result = CheckResult("ports", WARNING, "port 80 taken", "stop it", {"ports": {"ports.http": 80}}, 12.345)
    document = json.loads(json.dumps([result.to_dict()]))
    assert document == [
        {"check": "ports", "status": "warning", "summary": "port 80 taken", "hint": "stop it",
         "details": {"ports": {"ports.http": 80}}, "duration_ms": 12.3}
    ]


def test_finding_rejects_unknown_status():
    with pytest.raises(ValueError):
        Finding("meh", "x")


def test_combine_takes_the_worst_status_and_every_hint():
    finding = combine(
        [(OK, "fine", None), (WARNING, "slow", "add replicas"), (FAILURE, "down", "deploy"), (FAILURE, "gone", "deploy")],
        "all good",
    )
    assert finding.status == FAILURE
    assert finding.summary.startswith("down; gone; slow")
    assert finding.hint == "deploy; add replicas"
    assert combine([(OK, "x", None)], "all good", n=1) == ok("all good", n=1)


def test_report_lines_carry_a_mark_and_a_hint_on_every_line_that_is_not_ok():
    results = [
        CheckResult("docker", OK, "engine reachable", None, {"v": 1}, 5),
        CheckResult("ports", WARNING, "port 80 untestable", "run as root", {}, 1),
        CheckResult("containers", FAILURE, "backend exited", "flashfit deploy", {}, 2),
    ]
    text = lines(results)
    assert text[0].startswith("[bold green]✓[/] docker") and "fix" not in text[0]
    assert "[bold yellow]![/] ports" in text[1] and "run as root" in text[1]
    assert "[bold red]✗[/] containers" in text[2] and "flashfit deploy" in text[2]
    assert text[-1] == "[bold red]✗[/] 3 checks: 1 ok, 1 warning, 1 failure"
    verbose = lines(results, verbose=True, wall_s=1.25)
    assert any("(5 ms)" in line for line in verbose)
    assert any("v:" in line for line in verbose)
    assert verbose[-1].endswith("3 checks in 1.2s: 1 ok, 1 warning, 1 failure")
    assert summary_line([CheckResult("a", OK, "x")]).startswith("[bold green]✓[/]")


def test_registry_lists_every_check_once_and_selects_by_name():
    names = [c.name for c in all_checks()]
    assert len(names) == len(set(names))
    for expected in ("docker", "containers", "ports", "proxy-health", "backend-health", "latency", "inference",
                     "store-bench", "resources", "disk", "nginx-config", "upstream", "tls", "lock", "backup",
                     "stores", "config"):
        assert expected in names
    assert [c.name for c in select(["tls", "docker"])] == ["docker", "tls"]
    with pytest.raises(UsageError) as info:
        select(["docker", "nope"])
    assert "nope" in info.value.message
    assert "--list-checks" in info.value.hint


def test_helpers_build_findings():
    assert ok("x", a=1) == Finding(OK, "x", None, {"a": 1})
    assert warning("x", "h").hint == "h"
    assert failure("x", "h").status == FAILURE


def test_with_the_engine_down_every_check_still_reports_without_crashing(tmp_path):
    import httpx

    from flashfit_ops.config.load import resolve
    from flashfit_ops.doctor.context import DoctorContext, Settings

    def no_engine():
        raise Unavailable("the Docker engine is unreachable: connection refused", hint="start the Docker engine")

    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    config = resolve({"project": "down", "ports": {"http": 1}}, environ={})
    config._base_dir = tmp_path
    ctx = DoctorContext(config, None, docker_factory=no_engine, http_transport=httpx.MockTransport(refuse),
                        settings=Settings(latency_requests=2))
    results = {r.check: r for r in run_checks(all_checks(), ctx)}
    assert not [r for r in results.values() if "crashed" in r.summary], results
    assert results["docker"].status == FAILURE and results["docker"].hint == "start the Docker engine"
    assert results["containers"].status == FAILURE
    assert results["proxy-health"].status == FAILURE
    assert results["lock"].status == OK and results["tls"].status == OK
    for r in results.values():
        assert r.status == OK or r.hint, r
