"""The one place that prints. Human output goes through rich; `--json` output goes through
`emit_json`, so a CI script always gets exactly one JSON document on stdout."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from rich.console import Console
from rich.markup import escape

from flashfit_ops.errors import ConfigError, FlashFitError

# Human output on stderr keeps stdout clean for --json and for piping rendered data.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

_json_mode = False


def set_json_mode(enabled: bool) -> None:
    global _json_mode
    _json_mode = enabled


def json_mode() -> bool:
    return _json_mode


def info(message: str) -> None:
    if not _json_mode:
        err.print(message)


def step(message: str) -> None:
    if not _json_mode:
        err.print(f"[bold cyan]→[/] {message}")


def success(message: str) -> None:
    if not _json_mode:
        err.print(f"[bold green]✓[/] {message}")


def warn(message: str) -> None:
    if not _json_mode:
        err.print(f"[bold yellow]![/] {message}")


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def print_data(text: str) -> None:
    """Data the user asked for (a plan, a config): stdout, unstyled."""
    out.print(text, markup=False, highlight=False)


def report_error(error: FlashFitError) -> None:
    if _json_mode:
        emit_json(error.to_dict())
        return
    err.print(f"[bold red]error:[/] {escape(error.message)}")
    if isinstance(error, ConfigError):
        for problem in error.problems:
            err.print(f"  [red]✗[/] {escape(str(problem))}")
    if error.hint:
        err.print(f"  [dim]hint:[/] {escape(error.hint)}")


@contextmanager
def status(message: str) -> Iterator[Any]:
    """A live status line (spinner) for waits; a no-op object in JSON mode or without a TTY."""
    if _json_mode or not err.is_terminal:
        yield _NullStatus()
        return
    with err.status(message) as live:
        yield live


class _NullStatus:
    def update(self, *_args: Any, **_kwargs: Any) -> None:
        pass
