"""`flashfit deploy` and `flashfit rollback`: parse, load the config, call the deploy service,
render its result. Zero-downtime mechanics live in flashfit_ops.plan and flashfit_ops.execute."""

from __future__ import annotations

import os
import time
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from flashfit_ops import console
from flashfit_ops.cli.common import (
    App,
    ConfigOption,
    DryRunOption,
    EnvOption,
    JsonOption,
    LockWaitOption,
    guarded,
)
from flashfit_ops.errors import FlashFitError

StrategyOption = Annotated[
    Optional[str],
    typer.Option("--strategy", "-s", help="single | blue-green | rolling (default: deploy.strategy).", show_default=False),
]
MessageOption = Annotated[str, typer.Option("--message", "-m", help="Why: recorded in the lock and the history.")]


def _check_strategy(strategy: str | None) -> None:
    from flashfit_ops.errors import UsageError

    if strategy is not None and strategy not in ("single", "blue-green", "rolling"):
        raise UsageError(f"unknown strategy {strategy!r}", hint="use single, blue-green or rolling")


def print_plan(steps: list[dict[str, Any]]) -> None:
    for number, step in enumerate(steps, start=1):
        console.print_data(f"{number:>3}. {step['description']}")


def _show_failure(error: FlashFitError) -> None:
    if console.json_mode():
        return
    logs = error.details.get("logs") or (error.details.get("execution") or {}).get("failed_logs") or {}
    for name, text in logs.items():
        console.info(f"[bold]last log lines of {escape(name)}:[/]")
        for line in (text or "(no output)").splitlines()[-20:]:
            console.info(f"  [dim]{escape(line)}[/]")


_IMPORTED = time.monotonic()


def command_wall_seconds() -> float:
    """Seconds since this process started: the command's wall time, start-up and lock wait
    included (what a user timing the command sees)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            start_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime = float(handle.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


def _plan_notes(result: dict[str, Any], config: Any) -> None:
    """What a dry run says besides the steps: the monitor-window behaviour and every reload."""
    from flashfit_ops.plan.common import window_behaviour

    if config.target == "swarm":
        return
    result["monitor_window_behaviour"] = window_behaviour(config)
    result["nginx_reloads"] = [s["reload"] for s in result.get("plan") or [] if s.get("reload")]


def _report(result: dict[str, Any], json_output: bool, verb: str, config: Any = None) -> None:
    if result.get("dry_run") and config is not None:
        _plan_notes(result, config)
    elif not result.get("dry_run"):
        result["wall_s"] = round(command_wall_seconds(), 2)
    if json_output:
        console.emit_json(result)
        return
    if result.get("target") == "swarm":
        _report_swarm(result, verb)
        return
    if result.get("dry_run"):
        image = result.get("image")
        if image and not result.get("image_exists", True):
            console.info(f"{image} does not exist: a deploy would build it first")
        console.info(f"plan ({result.get('strategy', 'rollback')}, version {result.get('version')}):")
        print_plan([*result["plan"], *result.get("keeper", [])])  # the keeper step runs after the plan
        if "monitor_window_behaviour" in result:
            console.info(result["monitor_window_behaviour"])
            reloads = result["nginx_reloads"]
            console.info(f"nginx reloads: {len(reloads)} ({'; '.join(reloads)})" if reloads else "nginx reloads: none (every switch relinks slots)")
        console.info("dry run: nothing changed")
        return
    execution = result.get("execution") or {}
    ready = execution.get("ready_seconds") or {}
    boot = f"; ready after {max(ready.values()):.1f}s" if ready else ""
    console.success(
        f"{verb} {result.get('version')} ({result.get('strategy')}) in {result['wall_s']:.1f}s{boot}: "
        f"{result.get('url')} serves {', '.join(result.get('live') or []) or 'nothing'}"
    )
    for warning in execution.get("warnings") or []:
        console.warn(warning)


def _report_swarm(result: dict[str, Any], verb: str) -> None:
    """Swarm results carry no strategy, colours or URL list: the plan, or Swarm's own outcome."""
    version, how = result.get("version"), result.get("how", "swarm rolling update")
    if result.get("result") == "planned":
        console.info(f"plan ({how}, version {version}):")
        print_plan(result["plan"])
        console.info(f"dry run: nothing changed (would deploy {version} on the swarm)")
        return
    console.success(f"{verb} {version} ({how}) in {result.get('duration_s', 0):.1f}s")


@guarded
def deploy(
    app: App,
    strategy: StrategyOption = None,
    version: Annotated[Optional[str], typer.Option("--version", "-v", help="Image tag to deploy (default: the current source tree's version, built when missing).", show_default=False)] = None,
    replicas: Annotated[Optional[int], typer.Option("--replicas", "-r", min=1, max=64, help="Backend replicas (default: replicas).", show_default=False)] = None,
    dry_run: DryRunOption = False,
    lock_wait: LockWaitOption = None,
    message: MessageOption = "",
    config: ConfigOption = None,
    env: EnvOption = None,
    json_output: JsonOption = False,
) -> None:
    """Deploy a version with zero downtime: start it beside the live one, gate it on /ready,
    switch nginx, drain, stop the old. Never-ready or crashing versions are rolled back (exit 1)."""
    from flashfit_ops.execute import service

    _check_strategy(strategy)
    loaded = app.config
    try:
        result = service.deploy(loaded, strategy=strategy, version=version, replicas=replicas, dry_run=dry_run, lock_wait=lock_wait, message=message)
    except FlashFitError as error:
        _show_failure(error)
        raise
    _report(result, json_output, "deployed", loaded)


@guarded
def rollback(
    app: App,
    version: Annotated[Optional[str], typer.Argument(help="Version to go back to; omit to list the retained ones.", show_default=False)] = None,
    replicas: Annotated[Optional[int], typer.Option("--replicas", "-r", min=1, max=64, help="Backend replicas (default: as many as that version last ran).", show_default=False)] = None,
    strategy: StrategyOption = None,
    dry_run: DryRunOption = False,
    lock_wait: LockWaitOption = None,
    message: MessageOption = "",
    config: ConfigOption = None,
    env: EnvOption = None,
    json_output: JsonOption = False,
) -> None:
    """Switch back to a retained previous version, through the same health gate. Without a
    version, list the versions that can be rolled back to."""
    from flashfit_ops.execute import service

    _check_strategy(strategy)
    loaded = app.config
    try:
        result = service.rollback(loaded, version, replicas=replicas, strategy=strategy, dry_run=dry_run, lock_wait=lock_wait, message=message)
    except FlashFitError as error:
        _show_failure(error)
        raise
    if result.get("result") == "listed":
        if json_output:
            console.emit_json(result)
            return
        console.info(f"live: {result.get('live_version') or 'nothing'}")
        if not result["versions"]:
            console.info("no retained versions to roll back to")
        for entry in result["versions"]:
            console.print_data(f"{entry['version']}\t{entry['how']}")
        return
    _report(result, json_output, "rolled back to", loaded)


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)
    app.command("rollback")(rollback)
