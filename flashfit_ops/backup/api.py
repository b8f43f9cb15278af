"""The one entry the CLI calls for backups: create, list, verify, prune, schedule, restore.

The CLI parses options and renders results; every decision lives here: which store, which
snapshotter (the data folder, a given server, the deployed stack's containers or a server on the
backend port), where the encryption key comes from (the secrets are read at most once per
command), which retention policy, and whether a restore runs around the deployed stack (under the
deploy lock, recorded in the history) or around nothing (refused while a server answers).
Nothing here prints: messages go through the `Feedback` callbacks the caller supplies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from flashfit_ops.backup.common import NullProgress, Progress
from flashfit_ops.errors import IntegrityFailure, UsageError

if TYPE_CHECKING:
    from flashfit_ops.backup.deployed import Deployment
    from flashfit_ops.backup.retention import Policy
    from flashfit_ops.backup.service import ServiceControl
    from flashfit_ops.backup.snapshot import Snapshotter
    from flashfit_ops.backup.store import Store
    from flashfit_ops.config.model import Config

Say = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


@dataclass(frozen=True)
class Feedback:
    """How an operation reports while it runs: `step` and `info` lines, and a progress display
    made fresh for each operation (the CLI passes its console and a rich progress bar)."""

    step: Say = _quiet
    info: Say = _quiet
    progress: Callable[[], Progress] = NullProgress


class Secrets:
    """The project's secrets, read from the env file (and the environment) on first use, once."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._values: dict[str, str] | None = None

    def get(self, name: str) -> str | None:
        if self._values is None:
            from flashfit_ops.config.secrets import load_secrets

            self._values = load_secrets(self._config)
        return self._values.get(name)


@dataclass
class _Session:
    """What one command works with: the loaded config, its store and its secrets."""

    config: Config
    store: Store
    secrets: Secrets = field(init=False)

    def __post_init__(self) -> None:
        self.secrets = Secrets(self.config)


def _session(config: Config, url: str | None) -> _Session:
    from flashfit_ops.backup.store import open_store

    return _Session(config, open_store(url or config.backup.target, config))


def server_url(config: Config) -> str:
    """Where a server that `flashfit deploy` does not run listens: the backend port on this host."""
    return f"http://127.0.0.1:{config.ports.backend}"


def key_material(secrets: Secrets, key_file: Path | None) -> str | None:
    """The encryption key: --key-file, else BACKUP_ENCRYPTION_KEY from the environment, else from
    the env file."""
    if key_file is not None:
        try:
            return key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"cannot read the key file {key_file}: {exc.strerror}") from None
    if os.environ.get("BACKUP_ENCRYPTION_KEY"):
        return os.environ["BACKUP_ENCRYPTION_KEY"]
    return secrets.get("BACKUP_ENCRYPTION_KEY")


def find_deployed(config: Config) -> tuple[Deployment | None, Any, str | None]:
    """(deployment or None, backend, warning): what `flashfit deploy` runs for this project, asked
    of the deploy engine. An unreachable engine runs no containers: then nothing is deployed."""
    from flashfit_ops.backup.deployed import find_deployment
    from flashfit_ops.errors import Unavailable

    try:
        deployment, backend = find_deployment(config)
    except Unavailable as exc:
        return None, None, f"could not ask the Docker engine whether the project is deployed ({exc.message}); assumed it is not"
    return deployment, backend, None


def choose_snapshotter(session: _Session, server: str | None, no_server: bool) -> tuple[Snapshotter, list[str]]:
    """--no-server: the data folder; --server URL: that server; else the deployed stack's server
    (containers, then the proxy), else a server on the backend port."""
    from flashfit_ops.backup.snapshot import HttpSnapshotter, NoSnapshot

    if no_server:
        return NoSnapshot(), []
    secret = session.secrets.get("JWT_SECRET_KEY")
    if server:
        return HttpSnapshotter(server, secret), []
    deployment, backend, warning = find_deployed(session.config)
    if deployment is not None:
        from flashfit_ops.backup.deployed import DeployedSnapshotter

        return DeployedSnapshotter(session.config, deployment, backend, secret), []
    return HttpSnapshotter(server_url(session.config), secret), [warning] if warning else []


# --- create, list, verify, prune, schedule ---------------------------------------------------------


def create(
    config: Config,
    config_file: Path,
    *,
    to: str | None = None,
    tag: str | None = None,
    include_secrets: bool = False,
    key_file: Path | None = None,
    server: str | None = None,
    no_server: bool = False,
    feedback: Feedback = Feedback(),
) -> dict[str, Any]:
    """Back up to `to` (default backup.target); the result's warnings start with the snapshotter's."""
    from flashfit_ops.backup.create import create_backup

    session = _session(config, to)
    snapshotter, notes = choose_snapshotter(session, server, no_server)
    key = key_material(session.secrets, key_file) if include_secrets else None
    feedback.step(f"backing up to {session.store.url}")
    result = create_backup(config, session.store, config_file=config_file, snapshotter=snapshotter, tag=tag,
                           include_secrets=include_secrets, key_material=key, progress=feedback.progress())
    result["warnings"] = notes + result["warnings"]
    return result


def list_backups(config: Config, *, from_: str | None = None) -> dict[str, Any]:
    """{"target": url, "backups": [summary, ...]}, oldest first; damaged ones say so."""
    from flashfit_ops.backup.catalogue import list_backups as summaries

    store = _session(config, from_).store
    return {"target": store.url, "backups": summaries(store)}


def verify(config: Config, backup_id: str = "latest", *, read_data: bool = False, from_: str | None = None,
           feedback: Feedback = Feedback()) -> dict[str, Any]:
    """The verify report; `damage_error(report)` says whether it fails the command."""
    from flashfit_ops.backup.verify import verify_backup

    store = _session(config, from_).store
    return verify_backup(store, backup_id, read_data=read_data, progress=feedback.progress())


def damaged(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The backups of a verify report that have problems."""
    return [r for r in report["backups"] if not r["ok"]]


def damage_error(report: dict[str, Any]) -> IntegrityFailure | None:
    """The error (exit 5) a verify report with damage ends in; None when every backup is whole."""
    if report["ok"]:
        return None
    broken = damaged(report)
    count = sum(len(r["problems"]) for r in broken)
    return IntegrityFailure(f"{len(broken)} backup(s) damaged, {count} problem(s)",
                            hint="restore another backup; the next `backup create` re-uploads missing content",
                            details=report)


def retention_policy(config: Config, keep_last: int | None, keep_daily: int | None, keep_weekly: int | None) -> Policy:
    """The policy of backup.retention, each number overridden where given."""
    from flashfit_ops.backup.retention import Policy

    retention = config.backup.retention
    return Policy(
        keep_last=retention.keep_last if keep_last is None else keep_last,
        keep_daily=retention.keep_daily if keep_daily is None else keep_daily,
        keep_weekly=retention.keep_weekly if keep_weekly is None else keep_weekly,
    )


def prune(config: Config, *, keep_last: int | None = None, keep_daily: int | None = None, keep_weekly: int | None = None,
          dry_run: bool = False, from_: str | None = None) -> dict[str, Any]:
    from flashfit_ops.backup.prune import prune_backups

    store = _session(config, from_).store
    return prune_backups(store, retention_policy(config, keep_last, keep_daily, keep_weekly), dry_run=dry_run)


def schedule(config: Config, config_file: Path, env: str | None, *, every: str | None = None, at: str = "03:00",
             cron: bool = False, unit_dir: Path | None = None) -> dict[str, Any]:
    """Install a systemd timer where systemd runs (unless cron), else return the crontab line."""
    from flashfit_ops.backup import schedule as sched

    every = every or sched.default_every(config)
    problems = sched.validate(every, at)
    if problems:
        raise UsageError("; ".join(problems), hint="e.g. flashfit backup schedule --every daily --at 03:00")
    plan = sched.Schedule(every=every, at=at, command=sched.current_command(), config_file=str(Path(config_file).resolve()), env=env)
    result: dict[str, Any] = {"every": every, "at": at, "command": plan.script()}
    if not cron and sched.systemd_running():
        result.update(installed="systemd", **sched.install_systemd(config, plan, unit_dir))
    else:
        result.update(installed="cron", cron_line=sched.cron_line(config, plan))
    sched.record(config, plan, result["installed"])
    return result


# --- restore -----------------------------------------------------------------------------------------


def plain_service(config: Config) -> ServiceControl:
    """The ServiceControl around the swap when nothing is deployed: the no-op one, so a restore
    refuses while a server it cannot stop answers on the backend port."""
    from flashfit_ops.backup.service import NoServiceControl, server_answers

    url = server_url(config) + config.healthcheck.liveness_path
    if server_answers(url):
        raise UsageError(f"a server answers at {url}, and `flashfit deploy` does not run it, so flashfit cannot stop and restart it around a restore",
                         hint="stop the server first, run the restore, then start it again")
    return NoServiceControl()


def restore(
    config: Config,
    config_file: Path,
    backup_id: str = "latest",
    *,
    from_: str | None = None,
    dry_run: bool = False,
    apply_config: bool = False,
    key_file: Path | None = None,
    ready_timeout: float = 120.0,
    lock_wait: float | None = None,
    feedback: Feedback = Feedback(),
) -> dict[str, Any]:
    """Restore around the deployed stack when `flashfit deploy` runs the project (under the deploy
    lock, recorded in the history), else around no service at all (refused while a server answers).
    A dry run never asks the engine: it only checks the backup and compares it with the live data."""
    session = _session(config, from_)
    options: dict[str, Any] = dict(config_file=config_file, apply_config=apply_config,
                                   key_material=key_material(session.secrets, key_file),
                                   progress=feedback.progress(), ready_timeout=ready_timeout)
    deployment, backend, warning = (None, None, None) if dry_run else find_deployed(config)
    if deployment is not None:
        return _restore_deployed(session, backup_id, deployment, backend, lock_wait, feedback, options)
    return _restore_plain(session, backup_id, dry_run, warning, options)


def _restore_deployed(session: _Session, backup_id: str, deployment: Deployment, backend: Any, lock_wait: float | None,
                      feedback: Feedback, options: dict[str, Any]) -> dict[str, Any]:
    from flashfit_ops.backup.deployed import restore_deployed

    feedback.step(f"deployed stack: {', '.join(deployment.running) or 'no running container'} will be stopped for the swap; "
                  "the proxy answers 502/503/504 until they are ready again")
    return restore_deployed(session.config, session.store, backup_id, backend=backend, lock_wait=lock_wait, say=feedback.step,
                            **options)


def _restore_plain(session: _Session, backup_id: str, dry_run: bool, warning: str | None,
                   options: dict[str, Any]) -> dict[str, Any]:
    from flashfit_ops.backup.restore import restore_backup
    from flashfit_ops.backup.service import NoServiceControl

    service = NoServiceControl() if dry_run else plain_service(session.config)
    result = restore_backup(session.config, session.store, backup_id, service=service, dry_run=dry_run, **options)
    if warning:
        result["warnings"].insert(0, warning)
    return result
