"""The `flashfit` command line: a thin typer layer. Each module registers its commands; heavy
libraries (docker, boto3) are imported inside the command that needs them, so --help is instant."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Optional

import typer

from flashfit_ops import __version__
from flashfit_ops.app import GlobalOptions

app = typer.Typer(
    name="flashfit",
    help="Deploy and operate the FlashFit recommendation service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Each module exposes register(app). Order is the order of `flashfit --help`.
COMMAND_MODULES = [
    "flashfit_ops.cli.config_cmds",
    "flashfit_ops.cli.render_cmd",
    "flashfit_ops.cli.images_cmds",
    "flashfit_ops.cli.deploy_cmds",
    "flashfit_ops.cli.ops_cmds",
    "flashfit_ops.cli.lifecycle_cmds",
    "flashfit_ops.cli.backup_cmds",
    "flashfit_ops.cli.doctor_cmd",
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"flashfit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", envvar="FLASHFIT_CONFIG", show_default=False,
        help="Configuration file for the command (default ./flashfit.yml); a -c after the command wins.",
    ),
    env: Optional[str] = typer.Option(
        None, "--env", "-e", envvar="FLASHFIT_ENV", show_default=False,
        help="Environment overlay for the command: dev or prod (default none); an -e after the command wins.",
    ),
) -> None:
    """Deploy and operate the FlashFit recommendation service."""
    ctx.obj = GlobalOptions(config=config, env=env)


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main() -> None:
    app()
