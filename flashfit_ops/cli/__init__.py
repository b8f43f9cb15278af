"""The `flashfit` command line: a thin typer layer. Each module registers its commands; heavy
libraries (docker, boto3) are imported inside the command that needs them, so --help is instant."""

from __future__ import annotations

import importlib

import typer

from flashfit_ops import __version__

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
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Deploy and operate the FlashFit recommendation service."""


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main() -> None:
    app()
