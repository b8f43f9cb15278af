"""`flashfit backup create|list|verify|prune|schedule` and `flashfit restore`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flashfit_ops import console
from flashfit_ops.cli.common import App, ConfigOption, EnvOption, JsonOption, guarded
from flashfit_ops.errors import IntegrityFailure, UsageError

if TYPE_CHECKING:
    from flashfit_ops.backup.store import Store
    from flashfit_ops.config.model import Config

backup_app = typer.Typer(help="Back up, list, verify and prune backups of the data and configuration.",
                         no_args_is_help=True)

ToOption = Annotated[str | None, typer.Option("--to", help="Backup target URL (file://FOLDER or s3://BUCKET/PREFIX); default backup.target.")]
FromOption = Annotated[str | None, typer.Option("--from", help="Backup target URL to read; default backup.target.")]
KeyFileOption = Annotated[Path | None, typer.Option("--key-file", help="File holding the encryption key for secrets (else BACKUP_ENCRYPTION_KEY).")]
BackupEnvOption = EnvOption  # the same rule as every command (it defaulted to prod before)


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"


class RichProgress:
    """Bytes, rate and time left on stderr; silent in --json mode or without a terminal."""

    def __init__(self) -> None:
        self._progress: Any = None
        self._task: Any = None

    def start(self, description: str, total: int) -> None:
        if console.json_mode() or not console.err.is_terminal:
            return
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                                  TransferSpeedColumn(), TimeRemainingColumn(), console=console.err, transient=True)
        self._progress.start()
        self._task = self._progress.add_task(description, total=total)

    def advance(self, amount: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, amount)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _store(url: str | None, loaded: Config) -> Store:
    from flashfit_ops.backup.store import open_store

    return open_store(url or loaded.backup.target, loaded)


def _key_material(loaded: Config, key_file: Path | None) -> str | None:
    if key_file is not None:
        try:
            return key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"cannot read the key file {key_file}: {exc.strerror}") from None
    if os.environ.get("BACKUP_ENCRYPTION_KEY"):
        return os.environ["BACKUP_ENCRYPTION_KEY"]
    from flashfit_ops.config.secrets import load_secrets

    return load_secrets(loaded).get("BACKUP_ENCRYPTION_KEY")


def server_url(loaded: Config) -> str:
    return f"http://127.0.0.1:{loaded.ports.backend}"


def _deployment(loaded: Config) -> tuple[Any, Any, str | None]:
    """(deployment or None, backend, warning): what `flashfit deploy` runs for this project, asked
    of the deploy engine. An unreachable engine runs no containers: then nothing is deployed."""
    from flashfit_ops.backup.deployed import find_deployment
    from flashfit_ops.errors import Unavailable

    try:
        deployment, backend = find_deployment(loaded)
    except Unavailable as exc:
        return None, None, f"could not ask the Docker engine whether the project is deployed ({exc.message}); assumed it is not"
    return deployment, backend, None


def _snapshotter(loaded: Config, server: str | None, no_server: bool) -> tuple[Any, list[str]]:
    """--no-server: the data folder; --server URL: that server; else the deployed stack's server
    (containers, then the proxy), else a server on the backend port."""
    from flashfit_ops.backup.snapshot import HttpSnapshotter, NoSnapshot
    from flashfit_ops.config.secrets import load_secrets

    if no_server:
        return NoSnapshot(), []
    secret = load_secrets(loaded).get("JWT_SECRET_KEY")
    if server:
        return HttpSnapshotter(server, secret), []
    deployment, backend, warning = _deployment(loaded)
    if deployment is not None:
        from flashfit_ops.backup.deployed import DeployedSnapshotter

        return DeployedSnapshotter(loaded, deployment, backend, secret), []
    return HttpSnapshotter(server_url(loaded), secret), [warning] if warning else []


@guarded
def create(
    app: App,
    to: ToOption = None,
    tag: Annotated[str | None, typer.Option("--tag", help="A label kept in the manifest.")] = None,
    include_secrets: Annotated[bool, typer.Option("--include-secrets", help="Include the env file, encrypted (AES-GCM).")] = False,
    key_file: KeyFileOption = None,
    server: Annotated[str | None, typer.Option("--server", help="Server URL for the snapshot; default: the deployed containers (then the proxy) when `flashfit deploy` runs the project, else http://127.0.0.1:<ports.backend>.")] = None,
    no_server: Annotated[bool, typer.Option("--no-server", help="Read the data folder directly, without asking the server for a snapshot (stop the server first for a consistent copy).")] = False,
    config: ConfigOption = None,
    env: BackupEnvOption = None,
    json_output: JsonOption = False,
) -> None:
    """Back up the vector stores (through the server's snapshot when it runs: on a deployed stack,
    through its containers or the proxy), the rest of the data folder and the deployment
    configuration. A deployed server that does not answer is an error (exit 3), never a reason to
    read the folder it writes. Unchanged content is never uploaded twice."""
    from flashfit_ops.backup.engine import create_backup

    loaded = app.config
    app.note_former_prod_default("backup create")
    store = _store(to, loaded)
    snapshotter, notes = _snapshotter(loaded, server, no_server)
    key = _key_material(loaded, key_file) if include_secrets else None
    console.step(f"backing up to {store.url}")
    result = create_backup(loaded, store, config_file=app.config_path, snapshotter=snapshotter, tag=tag,
                           include_secrets=include_secrets, key_material=key, progress=RichProgress())
    result["warnings"] = notes + result["warnings"]
    if json_output:
        console.emit_json(result)
        return
    for warning in result["warnings"]:
        console.warn(warning)
    via = f" via {result['via']}" if result.get("via") else ""
    console.success(
        f"backup {result['id']}: {result['files']} files, {human_bytes(result['bytes'])} "
        f"({result['new_blobs']} new blobs, {human_bytes(result['uploaded_bytes'])} uploaded; "
        f"{result['reused_blobs']} already stored) in {result['seconds']:.1f}s from {result['source']}{via}"
    )


@guarded
def list_(
    app: App,
    from_: FromOption = None,
    config: ConfigOption = None,
    env: BackupEnvOption = None,
    json_output: JsonOption = False,
) -> None:
    """List the complete backups, oldest first (an interrupted backup has no manifest and is not listed)."""
    from flashfit_ops.backup.engine import list_backups

    loaded = app.config
    app.note_former_prod_default("backup list")
    store = _store(from_, loaded)
    backups = list_backups(store)
    if json_output:
        console.emit_json({"target": store.url, "backups": backups})
        return
    if not backups:
        console.info(f"no backups in {store.url}")
        return
    lines = [f"{'ID':<26} {'TIME (UTC)':<20} {'FILES':>6} {'SIZE':>10}  {'SOURCE':<16} TAG"]
    for item in backups:
        if "damaged" in item:
            lines.append(f"{item['id']:<26} DAMAGED: {item['damaged']}")
            continue
        lines.append(f"{item['id']:<26} {item['time'][:19].replace('T', ' '):<20} {item['files']:>6} "
                     f"{human_bytes(item['size']):>10}  {item['source']:<16} {item['tag'] or ''}")
    console.print_data("\n".join(lines))


@guarded
def verify(
    app: App,
    backup_id: Annotated[str, typer.Argument(help="A backup id (or unique prefix), 'latest' or 'all'.")] = "latest",
    read_data: Annotated[bool, typer.Option("--read-data", help="Download every blob and check its hash.")] = False,
    from_: FromOption = None,
    config: ConfigOption = None,
    env: BackupEnvOption = None,
    json_output: JsonOption = False,
) -> None:
    """Check that a backup is complete; exit 5 naming every damaged file and blob."""
    from flashfit_ops.backup.engine import verify_backup

    loaded = app.config
    app.note_former_prod_default("backup verify")
    store = _store(from_, loaded)
    report = verify_backup(store, backup_id, read_data=read_data, progress=RichProgress())
    if not report["ok"]:
        damaged = [r for r in report["backups"] if not r["ok"]]
        if not json_output:
            for backup in damaged:
                for problem in backup["problems"]:
                    where = f"{problem['path']} ({problem['blob']})" if problem["path"] else backup["id"]
                    console.info(f"  [red]✗[/] {backup['id']}: {where}: {problem['problem']}")
        count = sum(len(r["problems"]) for r in damaged)
        raise IntegrityFailure(f"{len(damaged)} backup(s) damaged, {count} problem(s)",
                              hint="restore another backup; the next `backup create` re-uploads missing content",
                              details=report)
    if json_output:
        console.emit_json(report)
        return
    for backup in report["backups"]:
        console.success(f"backup {backup['id']}: {backup['files']} files, {backup['blobs']} blobs "
                        + ("read and hashed" if read_data else "present with their recorded sizes"))


@guarded
def prune(
    app: App,
    keep_last: Annotated[int | None, typer.Option("--keep-last", min=0, help="Keep the N newest (default backup.retention.keep_last).")] = None,
    keep_daily: Annotated[int | None, typer.Option("--keep-daily", min=0, help="Keep the newest of each of N days.")] = None,
    keep_weekly: Annotated[int | None, typer.Option("--keep-weekly", min=0, help="Keep the newest of each of N weeks.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would go; delete nothing.")] = False,
    from_: FromOption = None,
    config: ConfigOption = None,
    env: BackupEnvOption = None,
    json_output: JsonOption = False,
) -> None:
    """Forget backups by the retention policy, then delete the blobs no remaining backup needs."""
    from flashfit_ops.backup.engine import prune_backups
    from flashfit_ops.backup.retention import Policy

    loaded = app.config
    app.note_former_prod_default("backup prune")
    store = _store(from_, loaded)
    retention = loaded.backup.retention
    policy = Policy(
        keep_last=retention.keep_last if keep_last is None else keep_last,
        keep_daily=retention.keep_daily if keep_daily is None else keep_daily,
        keep_weekly=retention.keep_weekly if keep_weekly is None else keep_weekly,
    )
    result = prune_backups(store, policy, dry_run=dry_run)
    if json_output:
        console.emit_json(result)
        return
    for warning in result["warnings"]:
        console.warn(warning)
    for item in result["keep"]:
        console.info(f"  keep   {item['id']}  ({', '.join(item['reasons'])})")
    for backup_id in result["forget"]:
        console.info(f"  forget {backup_id}")
    verb = "would delete" if dry_run else "deleted"
    console.success(f"{verb} {len(result['forget'])} backup(s) and {result['deleted_blobs']} blob(s) "
                    f"({human_bytes(result['freed_bytes'])}); {len(result['keep'])} kept")


@guarded
def schedule(
    app: App,
    every: Annotated[str | None, typer.Option("--every", help="daily or weekly (Sundays); default from backup.retention.", show_default=False)] = None,
    at: Annotated[str, typer.Option("--at", help="Local time of day, HH:MM.")] = "03:00",
    cron: Annotated[bool, typer.Option("--cron", help="Print a crontab line even where systemd runs.")] = False,
    unit_dir: Annotated[Path | None, typer.Option("--unit-dir", help="Where to write the systemd units (default /etc/systemd/system).", show_default=False)] = None,
    config: ConfigOption = None,
    env: BackupEnvOption = None,
    json_output: JsonOption = False,
) -> None:
    """Run `backup create`, then `backup prune`, on a schedule: a systemd timer where systemd runs,
    else the crontab line to add. The doctor then measures the newest backup against it."""
    from flashfit_ops.backup import schedule as sched

    loaded = app.config
    app.note_former_prod_default("backup schedule")
    every = every or sched.default_every(loaded)
    problems = sched.validate(every, at)
    if problems:
        raise UsageError("; ".join(problems), hint="e.g. flashfit backup schedule --every daily --at 03:00")
    plan = sched.Schedule(every=every, at=at, command=sched.current_command(), config_file=str(app.config_path.resolve()), env=app.env)
    result: dict[str, Any] = {"every": every, "at": at, "command": plan.script()}
    if not cron and sched.systemd_running():
        result.update(installed="systemd", **sched.install_systemd(loaded, plan, unit_dir))
    else:
        result.update(installed="cron", cron_line=sched.cron_line(loaded, plan))
    sched.record(loaded, plan, result["installed"])
    if json_output:
        console.emit_json(result)
        return
    if result["installed"] == "systemd":
        console.success(f"{result['timer']} runs the backup {every} at {at} ({', '.join(result['units'])})")
        return
    reason = "--cron" if cron else "systemd is not running on this host"
    console.info(f"{reason}: add this line to the crontab of the user that runs flashfit (`crontab -e`):")
    console.print_data(result["cron_line"])


def service_for(loaded: Config) -> Any:
    """The ServiceControl around the swap when nothing is deployed: the no-op one, so a restore
    refuses while a server it cannot stop answers on the backend port."""
    from flashfit_ops.backup.service import NoServiceControl, server_answers

    url = server_url(loaded) + loaded.healthcheck.liveness_path
    if server_answers(url):
        raise UsageError(f"a server answers at {url}, and `flashfit deploy` does not run it, so flashfit cannot stop and restart it around a restore",
                         hint="stop the server first, run the restore, then start it again")
    return NoServiceControl()


@guarded
def restore(
    app: App,
    backup_id: Annotated[str, typer.Argument(help="A backup id (or unique prefix), or 'latest'.")] = "latest",
    from_: FromOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check the backup is complete and show what would change; touch nothing.")] = False,
    apply_config: Annotated[bool, typer.Option("--apply-config", help="Write flashfit.yml (and the env file) in place, keeping the old ones, instead of into restore-<id>/.")] = False,
    key_file: KeyFileOption = None,
    ready_timeout: Annotated[float, typer.Option("--ready-timeout", help="Seconds to wait for the server after the swap.")] = 120.0,
    lock_wait: Annotated[float | None, typer.Option("--lock-wait", help="Seconds to wait for a running deploy's lock (default: deploy.lock_wait).", show_default=False)] = None,
    config: ConfigOption = None,
    env: BackupEnvOption = None,
    json_output: JsonOption = False,
) -> None:
    """Restore a backup: download into a staging folder, verify every hash, then swap it in for the
    live data (kept as <data>.previous-<time> for undo), restarting the server around the swap.
    On a deployed stack this runs under the deploy lock: the backend containers are stopped for
    the swap (the proxy answers 502/503/504 meanwhile), started again, gated on /ready, and the
    restore is recorded in `flashfit history`. A server that does not come back gets the previous
    data back."""
    from flashfit_ops.backup.engine import restore_backup
    from flashfit_ops.backup.service import NoServiceControl

    loaded = app.config
    app.note_former_prod_default("restore")
    store = _store(from_, loaded)
    options: dict[str, Any] = dict(config_file=app.config_path, apply_config=apply_config, key_material=_key_material(loaded, key_file),
                                   progress=RichProgress(), ready_timeout=ready_timeout)
    deployment, backend, warning = (None, None, None) if dry_run else _deployment(loaded)
    if deployment is not None:
        from flashfit_ops.backup.deployed import restore_deployed

        console.step(f"deployed stack: {', '.join(deployment.running) or 'no running container'} will be stopped for the swap; "
                     "the proxy answers 502/503/504 until they are ready again")

        result = restore_deployed(loaded, store, backup_id, backend=backend, lock_wait=lock_wait, say=console.step, **options)
    else:
        service = None if dry_run else service_for(loaded)
        result = restore_backup(loaded, store, backup_id, service=service or NoServiceControl(), dry_run=dry_run, **options)
        if warning:
            result["warnings"].insert(0, warning)
    if json_output:
        console.emit_json(result)
        return
    for warning in result["warnings"]:
        console.warn(warning)
    if dry_run:
        changes = result["changes"]
        for kind in ("add", "change", "remove"):
            for path in changes[kind]:
                console.info(f"  {kind:<6} {path}")
        console.success(f"backup {result['id']} is complete; restoring it would add {len(changes['add'])}, change "
                        f"{len(changes['change'])} and remove {len(changes['remove'])} file(s) in {result['data_dir']}")
        return
    console.success(f"restored backup {result['id']} into {result['data_dir']} ({result['files']} files, "
                    f"{human_bytes(result['bytes'])}) in {result['seconds']:.1f}s")
    service_report = result.get("service")
    if service_report and service_report.get("downtime_seconds") is not None:
        console.info(f"  {', '.join(service_report['containers'])} restarted: the server did not serve for "
                     f"{service_report['downtime_seconds']:.1f}s (stop to ready through the proxy); "
                     f"recorded in `flashfit history` as {result['restore_id']}")
    if result.get("previous"):
        console.info(f"  the previous data is kept in {result['previous']} (rename it back to undo)")
    if result.get("applied"):
        console.info(f"  configuration written: {', '.join(result['applied'])} (old copies kept as *.previous-*)")
    console.info(f"  configuration from the backup: {result['review_folder']}")


def register(app: typer.Typer) -> None:
    backup_app.command("create")(create)
    backup_app.command("list")(list_)
    backup_app.command("verify")(verify)
    backup_app.command("prune")(prune)
    backup_app.command("schedule")(schedule)
    app.add_typer(backup_app, name="backup")
    app.command("restore")(restore)
