"""The application context: one App per invocation (configuration file, overlay, JSON mode),
handed to every command; -c/--config and -e/--env work before the subcommand too (as
`docker compose -f` users type them), the subcommand's own option winning; one overlay rule for
every command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from flashfit_ops import console
from flashfit_ops.app import App, GlobalOptions
from flashfit_ops.cli import app as cli
from flashfit_ops.cli.common import ConfigOption, EnvOption, JsonOption, guarded
from flashfit_ops.errors import EXIT_OK, EXIT_USAGE

NO_VARIABLES = {"FLASHFIT_CONFIG": None, "FLASHFIT_ENV": None}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "120", "NO_COLOR": "1", "TERM": "dumb"})


@pytest.fixture
def two_files(example_config: Path) -> tuple[Path, Path]:
    other = example_config.parent / "other.yml"
    other.write_text(example_config.read_text().replace("\nproject: flashfit\n", "\nproject: other\n"))
    assert "project: other" in other.read_text()
    return example_config, other


def project(runner: CliRunner, args: list[str], env: dict[str, str | None] | None = None) -> str:
    result = runner.invoke(cli, args, env={**NO_VARIABLES, **(env or {})})
    assert result.exit_code == EXIT_OK, result.output
    return json.loads(result.stdout)["project"]


def test_resolve_takes_the_subcommand_then_the_global_option_then_the_variable_then_the_default() -> None:
    before = GlobalOptions(config=Path("g.yml"), env="dev")
    variables = {"FLASHFIT_CONFIG": "v.yml", "FLASHFIT_ENV": "prod"}
    assert App.resolve(config=Path("s.yml"), env="prod", before=before, environ=variables) == App(Path("s.yml"), "prod")
    assert App.resolve(config=None, env=None, before=before, environ=variables) == App(Path("g.yml"), "dev")
    assert App.resolve(config=None, env=None, environ=variables) == App(Path("v.yml"), "prod")
    assert App.resolve(config=None, env=None, environ={}) == App(Path("flashfit.yml"), None)


def test_config_before_the_subcommand_is_used(runner: CliRunner, two_files: tuple[Path, Path]) -> None:
    first, other = two_files
    assert project(runner, ["-c", str(other), "config", "show", "--json"]) == "other"
    assert project(runner, ["--config", str(other), "config", "show", "--json"]) == "other"
    assert project(runner, ["config", "show", "-c", str(other), "--json"]) == "other"


def test_the_subcommands_option_wins_and_an_explicit_option_beats_the_variable(runner: CliRunner, two_files: tuple[Path, Path]) -> None:
    first, other = two_files
    assert project(runner, ["-c", str(first), "config", "show", "-c", str(other), "--json"]) == "other"
    assert project(runner, ["-c", str(other), "config", "show", "--json"], env={"FLASHFIT_CONFIG": str(first)}) == "other"
    assert project(runner, ["config", "show", "--json"], env={"FLASHFIT_CONFIG": str(other)}) == "other"


def test_env_before_the_subcommand_selects_the_overlay(runner: CliRunner, example_config: Path) -> None:
    result = runner.invoke(cli, ["-c", str(example_config), "-e", "dev", "config", "show", "--json"], env=NO_VARIABLES)
    assert result.exit_code == EXIT_OK, result.output
    assert json.loads(result.stdout)["environment_applied"] == "dev"
    result = runner.invoke(cli, ["-e", "prod", "config", "validate", "-c", str(example_config), "--json"], env=NO_VARIABLES)
    assert json.loads(result.stdout)["environments"] == ["prod"]
    result = runner.invoke(cli, ["-e", "stage", "config", "show", "-c", str(example_config)], env=NO_VARIABLES)
    assert result.exit_code == EXIT_USAGE and "unknown environment 'stage'" in result.output


def test_a_missing_file_named_before_the_subcommand_is_exit_2_naming_it(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["-c", str(tmp_path / "nope.yml"), "status"], env=NO_VARIABLES)
    assert result.exit_code == EXIT_USAGE
    assert "nope.yml" in result.output and "Traceback" not in result.output


def test_render_follows_the_one_overlay_rule_and_says_what_changed(runner: CliRunner, example_config: Path, tmp_path: Path) -> None:
    """render applied environments.prod by default before; now no overlay without -e, like deploy."""
    result = runner.invoke(cli, ["render", "-c", str(example_config), "-o", str(tmp_path / "base")], env=NO_VARIABLES)
    assert result.exit_code == EXIT_OK, result.output
    assert "applies no environment overlay without -e" in result.output and "-e prod" in result.output
    assert 'WORKERS: "1"' in (tmp_path / "base" / "docker-compose.prod.yml").read_text()
    result = runner.invoke(cli, ["-e", "prod", "render", "-c", str(example_config), "-o", str(tmp_path / "prod")], env=NO_VARIABLES)
    assert result.exit_code == EXIT_OK, result.output
    assert "applies no environment overlay" not in result.output
    assert 'WORKERS: "4"' in (tmp_path / "prod" / "docker-compose.prod.yml").read_text()


def test_json_mode_belongs_to_one_invocation(runner: CliRunner, example_config: Path) -> None:
    """Once a module global that a --json command left on for whatever ran next in the process."""
    console.set_json_mode(False)
    result = runner.invoke(cli, ["config", "show", "-c", str(example_config), "--json"], env=NO_VARIABLES)
    assert result.exit_code == EXIT_OK, result.output
    assert console.json_mode() is False


def test_guarded_hands_the_command_its_app_and_hides_it_from_the_options(runner: CliRunner, example_config: Path) -> None:
    seen: list[App] = []
    probe = typer.Typer()

    @probe.callback()
    def root(
        ctx: typer.Context, config: Annotated[Path | None, typer.Option("--config", "-c")] = None
    ) -> None:  # the same shape as flashfit's root
        ctx.obj = GlobalOptions(config=config)

    @probe.command()
    @guarded
    def show(app: App, config: ConfigOption = None, env: EnvOption = None, json_output: JsonOption = False) -> None:
        seen.append(app)
        assert app.config.project == "flashfit"

    result = runner.invoke(probe, ["-c", str(example_config), "show", "-e", "dev", "--json"], env=NO_VARIABLES)
    assert result.exit_code == EXIT_OK, result.output
    assert [(a.config_path, a.env, a.json) for a in seen] == [(example_config, "dev", True)]
    assert "app" not in runner.invoke(probe, ["show", "--help"]).output.lower().split()
