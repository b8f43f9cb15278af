"""Fail fast with the cause (issue 11): a server that says it failed ends the gate at the first
probe, its /ready body is read for the cause, and the logs shown are the server's own lines."""

from __future__ import annotations

import httpx

from flashfit_ops.execute.health import GateSettings, ProbeResult, failure_of, server_lines, wait_ready
from tests.unit.ops.test_execute_health import Clock


def test_a_failed_server_stops_the_gate_at_once_with_its_cause() -> None:
    clock = Clock()
    answers = [ProbeResult(False, 503), ProbeResult(False, 503, failed="clip: model folder not found")]

    def probe(path: str, _timeout: float) -> ProbeResult:
        return answers.pop(0) if answers else ProbeResult(False, 503, failed="clip: model folder not found")

    result = wait_ready(probe, GateSettings(deadline=120.0), clock=clock, sleep=clock.sleep)
    assert not result.ready and result.attempts == 2
    assert result.reason == "the server reports it failed: clip: model folder not found"
    assert clock.now < 1.0  # not the 120 s deadline


def test_still_loading_is_not_a_failure() -> None:
    clock = Clock()

    def probe(path: str, _timeout: float) -> ProbeResult:
        return ProbeResult(clock.now >= 2.0, 200 if clock.now >= 2.0 else 503)

    assert wait_ready(probe, GateSettings(), clock=clock, sleep=clock.sleep).ready


def _response(status: int, body) -> httpx.Response:
    return httpx.Response(status, json=body)


def test_failure_of_reads_the_ready_body() -> None:
    failed = {"status": "failed", "checks": {"errors": {"clip": "not found", "startup": "vector stores: bad"}}}
    assert failure_of(_response(503, failed)) == "clip: not found; startup: vector stores: bad"
    assert failure_of(_response(503, {"status": "not_ready", "checks": {}})) is None
    assert failure_of(_response(503, {"status": "failed"})) == "failed"
    assert failure_of(httpx.Response(503, text="<html>bad gateway</html>")) is None
    assert failure_of(_response(503, ["not", "a", "dict"])) is None


def test_server_lines_leave_out_the_request_log() -> None:
    text = "\n".join(
        [
            "2026-12-01 10:00:00,000 ERROR flashfit_server.models.registry: model slot clip failed to load: not found",
            *[f'2026-12-01 10:00:0{i},000 INFO uvicorn.access: 172.18.0.1:4242 - "GET /ready HTTP/1.1" 503' for i in range(9)],
            '{"ts": "x", "level": "info", "logger": "uvicorn.access", "message": "GET /ready 503"}',
            '172.18.0.1 - - "GET /ready HTTP/1.1" 503 -',
            "fake backend: will never be ready",
        ]
    )
    lines = server_lines(text).splitlines()
    assert lines == [
        "2026-12-01 10:00:00,000 ERROR flashfit_server.models.registry: model slot clip failed to load: not found",
        "fake backend: will never be ready",
    ]
    assert server_lines("\n".join(f"line {i}" for i in range(50)), limit=3) == "line 47\nline 48\nline 49"
