"""`flashfit backup create|list|verify|prune|schedule` and `flashfit restore`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flashfit_ops import console
from flashfit_ops.cli.common import App, ConfigOption, EnvOption, JsonOption, guarded

if TYPE_CHECKING:
    from flashfit_ops.backup.api import Feedback

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


def _feedback() -> Feedback:
    from flashfit_ops.backup.api import Feedback

    return Feedback(step=console.step, info=console.info, progress=RichProgress)


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
    from flashfit_ops.backup import api

    app.note_former_prod_default("backup create")
    result = api.create(app.config, app.config_path, to=to, tag=tag, include_secrets=include_secrets, key_file=key_file,
                        server=server, no_server=no_server, feedback=_feedback())
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
    from flashfit_ops.backup import api

    app.note_former_prod_default("backup list")
    listing = api.list_backups(app.config, from_=from_)
    backups = listing["backups"]
    if json_output:
        console.emit_json(listing)
        return
    if not backups:
        console.info(f"no backups in {listing['target']}")
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
    from flashfit_ops.backup import api

    app.note_former_prod_default("backup verify")
    report = api.verify(app.config, backup_id, read_data=read_data, from_=from_, feedback=_feedback())
    failure = api.damage_error(report)
    if failure is not None:
        if not json_output:
            for backup in api.damaged(report):
                for problem in backup["problems"]:
                    where = f"{problem['path']} ({problem['blob']})" if problem["path"] else backup["id"]
                    console.info(f"  [red]✗[/] {backup['id']}: {where}: {problem['problem']}")
        raise failure
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
    from flashfit_ops.backup import api

    app.note_former_prod_default("backup prune")
    result = api.prune(app.config, keep_last=keep_last, keep_daily=keep_daily, keep_weekly=keep_weekly,
                       dry_run=dry_run, from_=from_)
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
    from flashfit_ops.backup import api

    app.note_former_prod_default("backup schedule")
    result = api.schedule(app.config, app.config_path, app.env, every=every, at=at, cron=cron, unit_dir=unit_dir)
    every = result["every"]
    if json_output:
        console.emit_json(result)
        return
    if result["installed"] == "systemd":
        console.success(f"{result['timer']} runs the backup {every} at {at} ({', '.join(result['units'])})")
        return
    reason = "--cron" if cron else "systemd is not running on this host"
    console.info(f"{reason}: add this line to the crontab of the user that runs flashfit (`crontab -e`):")
    console.print_data(result["cron_line"])


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
    from flashfit_ops.backup import api

    app.note_former_prod_default("restore")
    result = api.restore(app.config, app.config_path, backup_id, from_=from_, dry_run=dry_run, apply_config=apply_config,
                         key_file=key_file, ready_timeout=ready_timeout, lock_wait=lock_wait, feedback=_feedback())
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
