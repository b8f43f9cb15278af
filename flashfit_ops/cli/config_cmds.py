"""`flashfit init` and `flashfit config validate|show`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flashfit_ops import console
from flashfit_ops.cli.common import DEFAULT_CONFIG, App, ConfigOption, EnvOption, JsonOption, guarded
from flashfit_ops.errors import UsageError

config_app = typer.Typer(help="Check and show the configuration.", no_args_is_help=True)


@guarded
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the example.")] = DEFAULT_CONFIG,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented example flashfit.yml: every setting, its default and what it does."""
    from flashfit_ops.config.example import write_example

    if path.exists() and not force:
        raise UsageError(f"{path} already exists", hint="pass --force to overwrite it")
    write_example(path)
    console.success(f"wrote {path}; check it with `flashfit config validate -c {path}`")


@guarded
def validate(app: App, config: ConfigOption = None, env: EnvOption = None, json_output: JsonOption = False) -> None:
    """Check the configuration: exit 0 when valid, else one line per problem and exit 2."""
    from flashfit_ops.config import load_config

    envs = [app.env] if app.env else [None, "dev", "prod"]
    for name in envs:
        load_config(app.config_path, env=name)
    if json_output:
        console.emit_json({"valid": True, "file": str(app.config_path), "environments": [e or "base" for e in envs]})
    else:
        console.success(f"{app.config_path} is valid ({', '.join(e or 'base' for e in envs)})")


@guarded
def show(app: App, config: ConfigOption = None, env: EnvOption = None, json_output: JsonOption = False) -> None:
    """Print the merged configuration (file + environment overlay + FLASHFIT__* variables), secrets redacted."""
    import json

    import yaml

    from flashfit_ops.config.secrets import redacted_view

    loaded = app.config
    view = redacted_view(loaded)
    if json_output:
        console.emit_json(view)
    else:
        console.print_data(yaml.safe_dump(json.loads(json.dumps(view)), sort_keys=False).rstrip())


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    config_app.command("validate")(validate)
    config_app.command("show")(show)
    app.add_typer(config_app, name="config")
