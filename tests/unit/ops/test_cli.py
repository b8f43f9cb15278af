"""The CLI: exit codes, field-level messages, JSON output, and a --help that stays light."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashfit_ops.cli import app
from flashfit_ops.errors import EXIT_OK, EXIT_USAGE

HEAVY_MODULES = ("torch", "transformers", "faiss", "boto3", "botocore", "docker")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "120", "NO_COLOR": "1", "TERM": "dumb"})


def test_init_writes_a_valid_example_and_refuses_to_overwrite(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "flashfit.yml"
    result = runner.invoke(app, ["init", str(path)])
    assert result.exit_code == EXIT_OK, result.output
    result = runner.invoke(app, ["config", "validate", "-c", str(path)])
    assert result.exit_code == EXIT_OK, result.output
    result = runner.invoke(app, ["init", str(path)])
    assert result.exit_code == EXIT_USAGE
    assert "already exists" in result.output


def test_validate_lists_each_problem_with_its_line_and_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "flashfit.yml"
    path.write_text("project: demo\ndeploy:\n  strategy: fast\n  colour: blue\n")
    result = runner.invoke(app, ["config", "validate", "-c", str(path)])
    assert result.exit_code == EXIT_USAGE
    assert f"{path}:3: deploy.strategy: must be 'single', 'blue-green' or 'rolling'" in result.output
    assert f"{path}:4: deploy.colour: unknown key" in result.output
    assert "Traceback" not in result.output


def test_validate_json_output(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "flashfit.yml"
    path.write_text("ports: {grafana: 9090}\n")
    result = runner.invoke(app, ["config", "validate", "-c", str(path), "--json"])
    assert result.exit_code == EXIT_USAGE
    document = json.loads(result.stdout)
    assert document["exit_code"] == EXIT_USAGE
    assert document["details"]["problems"][0]["path"] == "ports.grafana"


def test_malformed_yaml_and_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "flashfit.yml"
    path.write_text("a: [\n")
    result = runner.invoke(app, ["config", "validate", "-c", str(path)])
    assert result.exit_code == EXIT_USAGE and "malformed YAML" in result.output
    result = runner.invoke(app, ["config", "validate", "-c", str(tmp_path / "nope.yml")])
    assert result.exit_code == EXIT_USAGE and "flashfit init" in result.output


def test_show_redacts_secrets(runner: CliRunner, example_config: Path) -> None:
    env_file = example_config.parent / ".env"
    env_file.write_text("JWT_SECRET_KEY=super-secret-value\n")
    result = runner.invoke(app, ["config", "show", "-c", str(example_config), "--env", "dev", "--json"])
    assert result.exit_code == EXIT_OK, result.output
    assert "super-secret-value" not in result.output
    document = json.loads(result.stdout)
    assert document["secrets"]["JWT_SECRET_KEY"].startswith("***")
    assert document["server"]["environment"]["LOG_LEVEL"] == "debug"
    assert document["environment_applied"] == "dev"


def test_render_writes_files(runner: CliRunner, example_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "rendered"
    result = runner.invoke(app, ["render", "-c", str(example_config), "--out", str(out), "--env", "dev", "--json"])
    assert result.exit_code == EXIT_OK, result.output
    assert "nginx.conf" in json.loads(result.stdout)["files"]
    assert (out / "docker-compose.dev.yml").is_file()


def test_render_of_invalid_config_writes_nothing(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "flashfit.yml"
    path.write_text("replicas: 0\n")
    out = tmp_path / "rendered"
    result = runner.invoke(app, ["render", "-c", str(path), "--out", str(out)])
    assert result.exit_code == EXIT_USAGE
    assert not out.exists()


def _imported_modules(*argv: str) -> set[str]:
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['flashfit', *{list(argv)!r}]\n"
        "try:\n    runpy.run_module('flashfit_ops.cli.__main__', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return set(result.stderr.split())


@pytest.mark.parametrize("argv", [["--help"], ["config", "validate", "-c", "/nonexistent.yml"], ["deploy", "--help"]])
def test_cli_stays_light(argv: list[str]) -> None:
    modules = _imported_modules(*argv)
    assert "flashfit_ops.cli" in modules
    heavy = {m for m in modules if m.split(".")[0] in HEAVY_MODULES}
    assert not heavy, f"`flashfit {' '.join(argv)}` imported {sorted(heavy)[:5]}"
