"""`flashfit render`: every deployment file, from templates/ and the configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flashfit_ops import console
from flashfit_ops.cli.common import App, ConfigOption, EnvOption, JsonOption, guarded


@guarded
def render(
    app: App,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write into (created if missing).")] = Path("deploy"),
    config: ConfigOption = None,
    env: EnvOption = None,
    json_output: JsonOption = False,
) -> None:
    """Render compose (dev, prod, blue, green), Swarm stack, nginx, monitoring and Dockerfile files."""
    from flashfit_ops.render import render_all, write_tree

    loaded = app.config
    app.note_former_prod_default("render")
    files = render_all(loaded)
    written = write_tree(files, out)
    if json_output:
        console.emit_json({"out": str(out), "files": sorted(files)})
        return
    for path in written:
        console.info(f"  {path}")
    console.success(f"rendered {len(written)} files into {out} (environment {app.env or 'base, no overlay'})")


def register(app: typer.Typer) -> None:
    app.command("render")(render)
