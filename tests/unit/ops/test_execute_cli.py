"""The deploy commands' thin CLI layer: usage errors exit 2 before touching the engine, help
imports no Docker SDK, and the lock commands work without an engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashfit_ops.cli import app
from flashfit_ops.execute.lock import DeployLock, LockInfo


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "120", "NO_COLOR": "1", "TERM": "dumb"})


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "flashfit.yml"
    path.write_text("project: demo\nports:\n  http: 18080\n")
    return path


@pytest.mark.parametrize("command", [["deploy"], ["rollback"], ["status"], ["history"], ["logs"], ["lock", "status"], ["lock", "release"]])
def test_help_does_not_import_the_docker_sdk(command: list[str]) -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from flashfit_ops.cli import app\n"
        f"result = CliRunner().invoke(app, {command + ['--help']!r})\n"
        "assert result.exit_code == 0, result.output\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'docker' or m.startswith('docker.'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", "import json\n" + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_unknown_strategy_is_a_usage_error(runner: CliRunner, config: Path) -> None:
    result = runner.invoke(app, ["deploy", "--strategy", "yolo", "--version", "v1", "-c", str(config)])
    assert result.exit_code == 2 and "unknown strategy" in result.output


def test_single_with_replicas_is_a_usage_error(runner: CliRunner, config: Path) -> None:
    result = runner.invoke(app, ["deploy", "--strategy", "single", "--replicas", "3", "--version", "v1", "-c", str(config), "--json"])
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"] == "UsageError"


def test_bad_version_is_a_usage_error(runner: CliRunner, config: Path) -> None:
    result = runner.invoke(app, ["deploy", "--version", "bad/tag", "-c", str(config)])
    assert result.exit_code == 2 and "not a valid version" in result.output


def test_lock_status_and_release_without_an_engine(runner: CliRunner, config: Path) -> None:
    lock = DeployLock(config.parent / ".flashfit" / "lock")
    lock.acquire(LockInfo.mine(message="test holder"))
    try:
        shown = runner.invoke(app, ["lock", "status", "-c", str(config), "--json"])
        assert shown.exit_code == 0
        doc = json.loads(shown.stdout)
        assert doc["held"] and doc["owner"]["message"] == "test holder"
        refused = runner.invoke(app, ["lock", "release", "-c", str(config)])
        assert refused.exit_code == 2 and "--force" in refused.output
        forced = runner.invoke(app, ["lock", "release", "--force", "-c", str(config), "--json"])
        assert forced.exit_code == 0 and json.loads(forced.stdout)["released"]
    finally:
        lock.release()
    assert json.loads(runner.invoke(app, ["lock", "status", "-c", str(config), "--json"]).stdout)["held"] is False


def test_history_without_deploys(runner: CliRunner, config: Path) -> None:
    result = runner.invoke(app, ["history", "-c", str(config), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == {"history": []}
