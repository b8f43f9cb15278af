"""`flashfit doctor`: troubleshooting checks against a running deployment.

Exit codes: 0 no failures (warnings allowed), 1 at least one failure, 2 usage or config error
(an unknown --check name included)."""

from __future__ import annotations

from typing import Annotated

import typer

from flashfit_ops.cli.common import App, ConfigOption, EnvOption, JsonOption, guarded


@guarded
def doctor(
    app: App,
    config: ConfigOption = None,
    env: EnvOption = None,
    json_output: JsonOption = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Add each check's details and timing.")] = False,
    list_checks: Annotated[bool, typer.Option("--list-checks", help="List the checks and exit.")] = False,
    check: Annotated[
        list[str] | None, typer.Option("--check", help="Run only this check (repeatable; see --list-checks).")
    ] = None,
    requests: Annotated[int, typer.Option("--requests", min=1, max=1000, help="Requests for the latency check.")] = 20,
) -> None:
    """Check a running deployment: engine, containers, ports, health, latency, resources, disk,
    proxy, TLS, lock, backups and stores. One line per check; exit 1 if any check fails."""
    from flashfit_ops import console
    from flashfit_ops.doctor import exit_code
    from flashfit_ops.doctor.selection import all_checks, select

    if list_checks:
        checks = all_checks()
        if json_output:
            console.emit_json([{"check": c.name, "description": c.description, "timeout_s": c.timeout} for c in checks])
        else:
            width = max(len(c.name) for c in checks)
            for c in checks:
                console.out.print(f"{c.name:<{width}}  {c.description}", markup=False, highlight=False)
        return
    select(check)  # unknown names are a usage error before anything runs

    from flashfit_ops.doctor.api import run_doctor
    from flashfit_ops.doctor.context import Settings
    from flashfit_ops.doctor.report import lines

    with console.status("running checks"):
        results, wall = run_doctor(app.config_path, env=app.env, names=check, settings=Settings(latency_requests=requests))
    if json_output:
        console.emit_json([r.to_dict() for r in results])
    else:
        for line in lines(results, verbose=verbose, wall_s=wall):
            console.out.print(line, highlight=False)
    code = exit_code(results)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
