"""Options shared by every command, and the guard that builds the application context and turns
errors into exit codes."""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, TypeVar

import typer

from flashfit_ops.app import DEFAULT_CONFIG, App, GlobalOptions  # noqa: F401  (DEFAULT_CONFIG: commands import it from here)
from flashfit_ops.errors import EXIT_FAILED, EXIT_INTERRUPTED, FlashFitError

if TYPE_CHECKING:
    from typer._click.core import Context as ClickContext  # typer.Context's base: what .parent is

# No envvar here: $FLASHFIT_CONFIG / $FLASHFIT_ENV are read after the options given before the
# subcommand (flashfit_ops.app), so `FLASHFIT_CONFIG=a.yml flashfit -c b.yml deploy` uses b.yml.
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Configuration file (default: -c before the command, $FLASHFIT_CONFIG, ./flashfit.yml).",
        show_default=False,
    ),
]  # fmt: skip
EnvOption = Annotated[
    str | None,
    typer.Option("--env", "-e", help="Environment overlay to apply: dev or prod (default: -e before the command, $FLASHFIT_ENV, none).", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (for CI).")]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Print the plan and change nothing.")]
LockWaitOption = Annotated[
    float | None,
    typer.Option("--lock-wait", help="Seconds to wait for another deploy's lock (default: deploy.lock_wait).", show_default=False),
]


F = TypeVar("F", bound=Callable[..., Any])


CONTEXT = "flashfit_context_"  # the typer.Context parameter guarded adds to a command's signature


def global_options(ctx: ClickContext | None) -> GlobalOptions:
    """The options given before the subcommand, which the root callback keeps in ctx.obj."""
    while ctx is not None:
        if isinstance(ctx.obj, GlobalOptions):
            return ctx.obj
        ctx = ctx.parent
    return GlobalOptions()


def build_app(kwargs: dict[str, Any], ctx: ClickContext | None = None) -> App:
    return App.resolve(
        config=kwargs.get("config"), env=kwargs.get("env"), json=bool(kwargs.get("json_output", False)), before=global_options(ctx)
    )


def guarded(func: F) -> F:
    """Run a command: build its App (handed to it as `app` when it takes one; typer never sees
    that parameter), then FlashFitError -> message, hint and its exit code; Ctrl-C -> 130; no
    tracebacks. JSON mode is the App's for the length of the command."""
    takes_app = "app" in inspect.signature(func).parameters

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from flashfit_ops import console  # imported on use: rich's console is not needed for --help

        app = build_app(kwargs, kwargs.pop(CONTEXT, None))
        before = console.json_mode()
        console.set_json_mode(app.json)
        try:
            return func(*args, app=app, **kwargs) if takes_app else func(*args, **kwargs)
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
        finally:
            console.set_json_mode(before)

    if takes_app:  # typer builds the options from the signature: hide `app`, ask for the Context
        signature = inspect.signature(func, eval_str=True)
        context = inspect.Parameter(CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*(p for p in signature.parameters.values() if p.name != "app"), context]
        )
        wrapper.__annotations__ = {**{k: v for k, v in func.__annotations__.items() if k != "app"}, CONTEXT: typer.Context}
    return wrapper  # type: ignore[return-value]
