"""`flashfit status`, `flashfit history`, `flashfit logs`, `flashfit lock status|release`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape

from flashfit_ops import console
from flashfit_ops.cli.common import App, ConfigOption, EnvOption, JsonOption, guarded
from flashfit_ops.errors import EXIT_FAILED

lock_app = typer.Typer(help="The deploy lock: one deploy at a time per project.", no_args_is_help=True)


@guarded
def status(
    app: App,
    config: ConfigOption = None,
    env: EnvOption = None,
    json_output: JsonOption = False,
) -> None:
    """What nginx routes to (the slot links), each container's health, the history, and where they
    disagree, with a hint. Read-only: `flashfit repair` fixes. Exit 1 when nothing healthy serves."""
    from flashfit_ops.execute import service

    loaded = app.config
    result = service.status(loaded)
    if json_output:
        console.emit_json(result)
    elif result.get("target") == "swarm":
        _print_swarm_status(result)
    else:
        _print_status(result)
    if not result.get("serving"):
        raise typer.Exit(EXIT_FAILED)


def _print_swarm_status(result: dict) -> None:
    if result["swarm"] != "active":
        console.info("[red]this engine is not part of a swarm[/]")
        return
    mark = "[green]serving[/]" if result["serving"] else "[red]not serving[/]"
    console.info(f"swarm project: {mark} {result['url']}")
    for service in result["services"]:
        update = f", update {service['update_state']}" if service["update_state"] else ""
        running = sum(1 for t in service["tasks"] if t["state"] == "running")
        console.info(f"  {service['service']} {service['image']}: {running}/{service['replicas']} running{update}")
        for task in service["tasks"]:
            error = f"\t{task['error']}" if task.get("error") else ""
            console.print_data(f"    slot {task['slot']}\t{task['node']}\t{task['state']}\t{task['health'] or '-'}\t{task['image']}{error}")


def _print_status(result: dict) -> None:
    mark = "[green]serving[/]" if result["serving"] else "[red]not serving[/]"
    console.info(f"project {result['project']}: {mark} {result['url']}")
    console.info(f"  live: {result['live_color'] or '-'} version {result['live_version'] or '-'} ({result['replicas']['ready']}/{result['replicas']['live']} ready)")
    proxy = result["proxy"]
    console.info(f"  proxy {proxy['name']}: {proxy['state']} -> {', '.join(proxy['upstreams']) or 'nothing'}")
    for c in result["containers"]:
        health = "ready" if c.get("ready") else ("alive" if c.get("alive") else "-")
        live = "live" if c["live"] else ("spare" if c.get("spare") else "")
        console.print_data(f"  {c['name']}\t{c['version']}\t{c['color']}\t{c['state']}\t{health}\t{live}")
    for line in result["disagreements"]:
        console.warn(escape(line))
    for line in result["leftovers"]:
        console.info(f"  repair would: {escape(line)}")
    if result.get("hint"):
        console.info(f"[yellow]hint:[/] {escape(result['hint'])}")
    lock = result["lock"]
    if lock["held"]:
        owner = lock["owner"] or {}
        console.info(f"  lock: held by {owner.get('who')}@{owner.get('host')} pid {owner.get('pid')} since {owner.get('since')}")
    if "monitoring" in result:
        _print_monitoring(result["monitoring"])


def _print_monitoring(view: dict) -> None:
    if not view["up"]:
        console.warn(f"monitoring: Prometheus does not answer on {view['url']} ({view['error']})")
        return
    up = sum(1 for h in view["targets"].values() if h == "up")
    console.info(f"  monitoring: Prometheus {view['url']}, {up}/{len(view['targets'])} backend targets up")
    for name in view["missing"]:
        console.warn(f"live replica {name} is not an `up` scrape target")
    for alert in view["firing"]:
        console.warn(f"alert firing: {alert['name']} ({alert['severity']}) {escape(alert['summary'])} since {alert['since']}")
    if not view["firing"]:
        console.info("  no alerts firing")


@guarded
def history(
    app: App,
    config: ConfigOption = None,
    limit: Annotated[Optional[int], typer.Option("--limit", "-n", help="Only the last N deploys.", show_default=False)] = None,
    json_output: JsonOption = False,
) -> None:
    """Every deploy and rollback: when, who, version, strategy, result, duration."""
    from flashfit_ops.execute import service

    entries = service.history(app.config, limit)
    if json_output:
        console.emit_json({"history": entries})
        return
    if not entries:
        console.info("no deploys yet")
    for e in entries:
        duration = f"{e['duration_s']:.1f}s" if isinstance(e.get("duration_s"), (int, float)) else "-"
        console.print_data(
            f"{e.get('started_at', '-')}\t{e.get('who', '-')}\t{e.get('kind', '-')}\t{e.get('version') or '-'}\t"
            f"{e.get('strategy', '-')}\t{e.get('result', '-')}\t{duration}"
        )


@guarded
def logs(
    app: App,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming new lines.")] = False,
    since: Annotated[Optional[str], typer.Option("--since", help="Only lines newer than this, e.g. 10m or 30s.", show_default=False)] = None,
    tail: Annotated[Optional[int], typer.Option("--tail", "-n", help="Last N lines per container.", show_default=False)] = None,
    proxy: Annotated[bool, typer.Option("--proxy", help="Include the nginx proxy.")] = False,
    all_containers: Annotated[bool, typer.Option("--all", help="Every container of the project, not only the live ones.")] = False,
    config: ConfigOption = None,
) -> None:
    """Logs of the live backend containers, each line prefixed with its container."""
    from flashfit_ops.config.model import parse_duration
    from flashfit_ops.errors import UsageError
    from flashfit_ops.execute import service

    seconds = None
    if since:
        try:
            seconds = parse_duration(since)
        except ValueError as error:
            raise UsageError(f"--since: {error}") from None
    for name, line in service.logs(app.config, follow=follow, since=seconds, tail=tail, proxy=proxy, all_containers=all_containers):
        console.print_data(f"{name} | {line}")


@guarded
def lock_status_cmd(app: App, config: ConfigOption = None, json_output: JsonOption = False) -> None:
    """Who holds the deploy lock, since when, and why."""
    from flashfit_ops.execute import service

    info = service.lock_info(app.config)
    if json_output:
        console.emit_json(info)
        return
    owner = info.get("owner")
    if info["held"]:
        console.info(f"held by {owner['who']}@{owner['host']} (pid {owner['pid']}) since {owner['since']}: {owner.get('command', '')} {owner.get('message', '')}")
    elif info["stale"]:
        console.info(f"free (stale record of {owner['who']}@{owner['host']} pid {owner['pid']}, gone; the next deploy takes it over)")
    else:
        console.info("free")


@guarded
def lock_release_cmd(
    app: App,
    config: ConfigOption = None,
    force: Annotated[bool, typer.Option("--force", help="Release even while its deploy still runs.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Remove the lock record (a stale one, or with --force a live one)."""
    from flashfit_ops.execute import service

    result = service.lock_release(app.config, force=force)
    if json_output:
        console.emit_json(result)
    else:
        console.success("lock released" if result["released"] else "the lock was free")


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("history")(history)
    app.command("logs")(logs)
    lock_app.command("status")(lock_status_cmd)
    lock_app.command("release")(lock_release_cmd)
    app.add_typer(lock_app, name="lock")
