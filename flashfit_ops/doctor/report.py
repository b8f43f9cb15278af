"""Results -> lines of rich markup for the terminal (pure; the CLI prints them through console)."""

from __future__ import annotations

import json

from rich.markup import escape

from flashfit_ops.doctor.result import FAILURE, OK, WARNING, CheckResult, counts

MARKS = {OK: "[bold green]✓[/]", WARNING: "[bold yellow]![/]", FAILURE: "[bold red]✗[/]"}


def lines(results: list[CheckResult], *, verbose: bool = False, wall_s: float | None = None) -> list[str]:
    width = max((len(r.check) for r in results), default=0)
    out = []
    for r in results:
        timing = f" [dim]({r.duration_ms:.0f} ms)[/]" if verbose else ""
        line = f"{MARKS[r.status]} {r.check:<{width}}  {escape(r.summary)}{timing}"
        if r.status != OK:
            line += f"  [dim]→ fix:[/] {escape(r.hint or 'see details (-v)')}"
        out.append(line)
        if verbose and r.details:
            for key, value in r.details.items():
                text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
                for i, part in enumerate(str(text).splitlines() or [""]):
                    out.append(f"    [dim]{escape(key) + ':' if i == 0 else ' ' * (len(key) + 1)}[/] {escape(part)}")
    out.append(summary_line(results, wall_s))
    return out


def summary_line(results: list[CheckResult], wall_s: float | None = None) -> str:
    c = counts(results)
    took = f" in {wall_s:.1f}s" if wall_s is not None else ""
    text = (f"{len(results)} checks{took}: {c[OK]} ok, {c[WARNING]} warning{'s' if c[WARNING] != 1 else ''}, "
            f"{c[FAILURE]} failure{'s' if c[FAILURE] != 1 else ''}")
    if c[FAILURE]:
        return f"[bold red]✗[/] {text}"
    if c[WARNING]:
        return f"[bold yellow]![/] {text}"
    return f"[bold green]✓[/] {text}"
