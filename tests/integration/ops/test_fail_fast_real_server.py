"""Issue 11, fail fast with the cause, on the real server image: models that cannot load make
/ready say "failed", the deploy gate stops at once (not at its 120 s deadline) and the deploy
shows the server's own error lines, not its request log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.ops.fake_backend.harness import make_project, real_server_image

pytestmark = pytest.mark.integration


@pytest.fixture
def project(tmp_path: Path):
    project = make_project(tmp_path, "ff")
    empty = tmp_path / "no-models"
    empty.mkdir()
    empty.chmod(0o755)
    project.write_config(volumes__models=str(empty), deploy__deadline="120s", healthcheck__start_period="60s")
    project.tag(real_server_image(), "v1")
    yield project
    project.cleanup()


def test_models_that_fail_to_load_stop_the_gate_with_the_cause(project) -> None:
    result = project.flashfit("deploy", "--version", "v1", "--json")
    assert result.code == 1
    error = json.loads(result.stdout)
    assert error["error"] == "GateFailed"
    assert "the server reports it failed:" in error["message"] and "not found" in error["message"]
    assert "deadline" not in error["message"]
    logs = "\n".join(error["details"]["logs"].values())
    assert "failed to load" in logs
    assert "GET /ready" not in logs  # the gate's own probes are not the cause
    assert project.backends() == []  # nothing left behind


def test_the_text_output_shows_the_server_lines(project) -> None:
    result = project.flashfit("deploy", "--version", "v1")
    assert result.code == 1
    assert "the server reports it failed" in result.stderr
    assert "last log lines of" in result.stderr and "failed to load" in result.stderr
