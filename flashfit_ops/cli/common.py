"""Options shared by every command, and the guard that turns errors into exit codes."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Any, Callable, TypeVar

import typer

from flashfit_ops.errors import EXIT_FAILED, EXIT_INTERRUPTED, FlashFitError

ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", help="Configuration file.", envvar="FLASHFIT_CONFIG", show_default=True),
]
EnvOption = Annotated[
    str | None,
    typer.Option("--env", "-e", help="Environment overlay to apply: dev or prod."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (for CI).")]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Print the plan and change nothing.")]
LockWaitOption = Annotated[
    float | None,
    typer.Option("--lock-wait", help="Seconds to wait for another deploy's lock (default: deploy.lock_wait).", show_default=False),
]
DEFAULT_CONFIG = Path("flashfit.yml")

F = TypeVar("F", bound=Callable[..., Any])


def guarded(func: F) -> F:
    """Run a command: FlashFitError -> message, hint and its exit code; Ctrl-C -> 130; no tracebacks."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from flashfit_ops import console  # imported on use: rich's console is not needed for --help

        console.set_json_mode(bool(kwargs.get("json_output", False)))
        try:
            return func(*args, **kwargs)
        except FlashFitError as error:
            console.report_error(error)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            console.warn("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as error:  # a bug: say so plainly; FLASHFIT_DEBUG=1 shows the traceback
            if os.environ.get("FLASHFIT_DEBUG"):
                raise
            console.report_error(
                FlashFitError(
                    f"unexpected {type(error).__name__}: {error}",
                    hint="this is a bug in flashfit; rerun with FLASHFIT_DEBUG=1 and report the traceback",
                )
            )
            raise typer.Exit(EXIT_FAILED) from None

    return wrapper  # type: ignore[return-value]
