"""The one wrapper around every command that changes something (deploy, rollback, repair, stop,
start, down, a restore into a deployment, images prune, a Swarm deploy), as Kamal's `with_lock`
and auditor wrap each of its mutating commands:

* `deploy_lock` takes the project's deploy lock (waiting up to --lock-wait with progress lines
  that CI logs show too), turns SIGTERM into Ctrl-C's path while held, and releases it. It is
  re-entrant within a process, so a deploy that repairs first holds it once.
* `recorded_run` runs one command under that lock with a run id, and appends one start and one
  finish record of the one shape (`runs.history`), whatever way the command ends.

How a run ends, what the history says, and the exit code (flashfit_ops.errors) that follows:

  returned                        success      0
  FlashFitError, undone           rolled_back  1 (the error's own code otherwise)
  FlashFitError, other            failed       the error's code (2 bad input, 3 unreachable, ...)
  IntegrityFailure                refused      5 (nothing was changed)
  Ctrl-C or SIGTERM               interrupted  130
  any other exception (a bug)     failed       1
  the lock is held by another     (no record)  4
"""

from __future__ import annotations

import contextlib
import secrets as _random
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Iterator

from flashfit_ops import console
from flashfit_ops.errors import EXIT_FAILED, EXIT_INTEGRITY, EXIT_INTERRUPTED, EXIT_OK, FlashFitError, IntegrityFailure
from flashfit_ops.runs import history as hist
from flashfit_ops.runs.lock import DeployLock, LockInfo, WaitProgress

if TYPE_CHECKING:
    from flashfit_ops.config.model import Config

# The project's state folder, as flashfit_ops.plan.common.state_dir names it (a test holds them
# equal); not imported from there, which would tie runs/ to plan/ and, through it, to render.
STATE_DIR = ".flashfit"

SUCCESS, FAILED, ROLLED_BACK, REFUSED, INTERRUPTED = "success", "failed", "rolled_back", "refused", "interrupted"


def lock_path(config: Config) -> Path:
    return config.base_dir / STATE_DIR / "lock"


def history_path(config: Config) -> Path:
    return config.base_dir / STATE_DIR / "history.jsonl"


def new_deploy_id(now: float | None = None) -> str:
    """Sortable (the leftovers policy compares them) and short enough for container names."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
    return f"{stamp}{int(now * 1000) % 1000:03d}{_random.token_hex(1)}"


def _utc(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM takes the same path as Ctrl-C: what runs rolls back, the CLI exits 130."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# Locks held here, by path, with the thread holding each: a nested deploy_lock in the same thread
# (a deploy's repair) takes it once; another thread of this process waits like another process.
_held: dict[Path, int] = {}


def acquire_lock(config: Config, lock_wait: float | None, message: str = "") -> DeployLock:
    """Take the deploy lock, waiting up to `lock_wait` (default deploy.lock_wait) seconds with a
    live status line and progress lines; LockHeld (exit 4) when it stays held."""
    lock = DeployLock(lock_path(config))
    wait = config.deploy.lock_wait if lock_wait is None else lock_wait
    progress = WaitProgress(wait, console.info)  # lines that show in CI logs too
    with console.status("waiting for the deploy lock") as live:

        def on_wait(holder: LockInfo | None, waited: float) -> None:
            who = holder.describe() if holder else "another deploy"
            live.update(f"waiting for the deploy lock ({waited:.0f}s of {wait:g}s): held by {who}")
            progress(holder, waited)

        lock.acquire(LockInfo.mine(message=message), wait=wait, on_wait=on_wait)
    if progress.waited:
        console.info(f"got the deploy lock after {progress.waited:.0f}s")
    if lock.taken_over is not None:
        console.warn(f"took over a stale lock: {lock.taken_over.describe()} is gone")
    return lock


@contextlib.contextmanager
def deploy_lock(config: Config, lock_wait: float | None = None, message: str = "") -> Iterator[None]:
    """Hold the deploy lock (re-entrant in one thread) with SIGTERM taking Ctrl-C's path meanwhile."""
    path = lock_path(config).resolve()
    if _held.get(path) == threading.get_ident():
        yield
        return
    lock = acquire_lock(config, lock_wait, message)
    _held[path] = threading.get_ident()
    try:
        with sigterm_as_interrupt():
            yield
    finally:
        _held.pop(path, None)
        lock.release()


@dataclass
class RecordedRun:
    """What the command tells the record while it runs; read when the run ends."""

    id: str
    kind: str
    started: float
    details: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    rolled_back: bool = False  # set when a failure was undone: the result is rolled_back
    error: str | None = None  # a better message than the exception's, where the command has one
    result: str | None = None  # set by recorded_run when the run ends

    def seconds(self) -> float:
        return round(time.time() - self.started, 2)


def outcome(error: BaseException | None, rolled_back: bool = False) -> tuple[str, int]:
    """(history result, exit code) for how a run ended: the table in this module's docstring."""
    if error is None:
        return SUCCESS, EXIT_OK
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED, EXIT_INTERRUPTED
    if isinstance(error, IntegrityFailure):
        return REFUSED, EXIT_INTEGRITY
    if isinstance(error, FlashFitError):
        undone = rolled_back or bool(error.details.get("undone"))
        return (ROLLED_BACK if undone else FAILED), error.exit_code
    return FAILED, EXIT_FAILED


def _message(error: BaseException) -> str | None:
    if isinstance(error, KeyboardInterrupt):
        return None
    if isinstance(error, FlashFitError):
        return error.message
    return f"{type(error).__name__}: {error}"


@contextlib.contextmanager
def recorded_run(
    config: Config,
    kind: str,
    *,
    strategy: str | None = None,
    version: str | None = None,
    previous_version: str | None = None,
    replicas: int | None = None,
    message: str = "",
    lock_wait: float | None = None,
    details: dict[str, Any] | None = None,
) -> Iterator[RecordedRun]:
    """Run the block under the deploy lock, recorded in the history: a start record now, a finish
    record with the result however the block ends. Errors propagate (the CLI turns them into their
    exit codes) carrying the run id in their details."""
    with deploy_lock(config, lock_wait, message or kind):
        info = LockInfo.mine(message=message)
        run = RecordedRun(id=new_deploy_id(), kind=kind, started=time.time())
        start = {
            "id": run.id, "kind": kind, "strategy": strategy or kind, "version": version,
            "previous_version": previous_version, "replicas": replicas, "who": info.who, "host": info.host,
            "pid": info.pid, "command": info.command, "message": message, "started_at": _utc(run.started),
        }  # fmt: skip
        hist.append(history_path(config), {"event": "start", "v": hist.SCHEMA, **start, "details": dict(details or {})})
        failure: BaseException | None = None
        try:
            yield run
        except BaseException as error:
            failure = error
            if isinstance(error, FlashFitError):
                error.details.setdefault("deploy_id", run.id)
            raise
        finally:
            run.result, code = outcome(failure, run.rolled_back)
            finish = {
                "id": run.id, "result": run.result, "exit_code": code,
                "error": run.error or (_message(failure) if failure is not None else None),
                "warnings": list(run.warnings), "finished_at": _utc(time.time()), "duration_s": run.seconds(),
            }  # fmt: skip
            hist.append(history_path(config), {"event": "finish", "v": hist.SCHEMA, **finish, "details": run.details})
