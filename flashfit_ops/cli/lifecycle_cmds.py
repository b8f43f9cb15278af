"""`flashfit repair`, `flashfit stop`, `flashfit start`, `flashfit down`: each a plan (printed by
--dry-run), carried out under the deploy lock and recorded in the history."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.markup import escape

from flashfit_ops import console
from flashfit_ops.cli.common import App, ConfigOption, DryRunOption, EnvOption, JsonOption, LockWaitOption, guarded
from flashfit_ops.cli.deploy_cmds import MessageOption, _show_failure, print_plan
from flashfit_ops.errors import FlashFitError, UsageError


def _report(result: dict[str, Any], json_output: bool, done: str) -> None:
    if json_output:
        console.emit_json(result)
        return
    for finding in result.get("findings") or []:
        console.warn(escape(finding))
    if result.get("dry_run"):
        console.info(f"plan ({result['kind']}):")
        print_plan([*result["plan"], *result.get("keeper", [])])  # the keeper step runs after the plan
        if not result["plan"]:
            console.info("  nothing to do")
        console.info("dry run: nothing changed")
        return
    if not result.get("plan"):
        console.success(f"{done}: nothing to do")
        return
    console.success(f"{done} in {result.get('duration_s', 0):.1f}s: {', '.join(result.get('live') or []) or 'nothing'} live")
    for warning in (result.get("execution") or {}).get("warnings") or []:
        console.warn(warning)


def _run(call, json_output: bool, done: str) -> None:
    try:
        result = call()
    except FlashFitError as error:
        _show_failure(error)
        raise
    _report(result, json_output, done)


@guarded
def repair(
    app: App,
    dry_run: DryRunOption = False,
    lock_wait: LockWaitOption = None,
    config: ConfigOption = None,
    env: EnvOption = None,
    json_output: JsonOption = False,
) -> None:
    """Restore service from what is healthy (start the proxy on the live backends, point slots away
    from dead ones, start stopped live ones), then finish what an interrupted deploy left. Never
    undoes a switch that happened. Every deploy runs it first."""
    from flashfit_ops.execute import service

    loaded = app.config
    _run(lambda: service.repair(loaded, dry_run=dry_run, lock_wait=lock_wait), json_output, "repaired")


@guarded
def stop(
    app: App,
    dry_run: DryRunOption = False,
    lock_wait: LockWaitOption = None,
    message: MessageOption = "",
    config: ConfigOption = None,
    env: EnvOption = None,
    json_output: JsonOption = False,
) -> None:
    """Stop the proxy, then drain and stop the backends; every container is kept for `start`."""
    from flashfit_ops.execute import service

    loaded = app.config
    _run(lambda: service.lifecycle(loaded, "stop", dry_run=dry_run, lock_wait=lock_wait, message=message), json_output, "stopped")


@guarded
def start(
    app: App,
    dry_run: DryRunOption = False,
    lock_wait: LockWaitOption = None,
    message: MessageOption = "",
    config: ConfigOption = None,
    env: EnvOption = None,
    json_output: JsonOption = False,
) -> None:
    """Start the last live version again (its kept containers), gated on /ready, then the proxy."""
    from flashfit_ops.execute import service

    loaded = app.config
    _run(lambda: service.lifecycle(loaded, "start", dry_run=dry_run, lock_wait=lock_wait, message=message), json_output, "started")


@guarded
def down(
    app: App,
    volumes: Annotated[bool, typer.Option("--volumes", help="Also delete the data volumes (models, vector stores).")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before deleting volumes.")] = False,
    dry_run: DryRunOption = False,
    lock_wait: LockWaitOption = None,
    message: MessageOption = "",
    config: ConfigOption = None,
    env: EnvOption = None,
    json_output: JsonOption = False,
) -> None:
    """Remove every container of the project, the proxy and the network. Data volumes stay unless
    --volumes (which asks first; --yes skips the question). History and backups stay."""
    from flashfit_ops.execute import service

    loaded = app.config
    if volumes and not dry_run and not yes:
        if json_output or not sys.stdin.isatty():
            raise UsageError("--volumes deletes the data volumes", hint="pass --yes to confirm without a prompt")
        if not typer.confirm(f"delete the data volumes of {loaded.project} (models, vector stores)?", default=False):
            raise UsageError("nothing removed: not confirmed")
    call = lambda: service.lifecycle(loaded, "down", dry_run=dry_run, lock_wait=lock_wait, volumes=volumes, message=message)  # noqa: E731
    _run(call, json_output, "removed")


def register(app: typer.Typer) -> None:
    app.command("repair")(repair)
    app.command("stop")(stop)
    app.command("start")(start)
    app.command("down")(down)
