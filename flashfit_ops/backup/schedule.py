"""`flashfit backup schedule`: run `backup create` then `backup prune` on a timer. Where systemd
runs, a oneshot service and a timer (Persistent=true: a run missed while the host was off happens
at boot); elsewhere a crontab line to add. The schedule is recorded in .flashfit/backup-schedule.json
so the doctor measures the age of the newest backup against it. Unit texts are pure functions."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

from flashfit_ops.config.model import Config
from flashfit_ops.errors import OperationFailed
from flashfit_ops.fileio import atomic_write_text
from flashfit_ops.plan.common import state_dir

SCHEDULE_FILE = "backup-schedule.json"
SYSTEMD_DIR = Path("/etc/systemd/system")
_AT = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
EVERY = ("daily", "weekly")


@dataclass(frozen=True)
class Schedule:
    every: str  # daily | weekly (weekly runs on Sundays)
    at: str  # HH:MM, local time of the host
    command: tuple[str, ...]  # the flashfit executable, e.g. ("/usr/local/bin/flashfit",)
    config_file: str
    env: str | None = None

    @property
    def interval(self) -> timedelta:
        return timedelta(days=1) if self.every == "daily" else timedelta(weeks=1)

    def flashfit(self, *args: str) -> str:
        env = ("--env", self.env) if self.env else ()
        return shlex.join([*self.command, *args, "-c", self.config_file, *env])

    def script(self) -> str:
        """One shell line: prune only after a successful backup."""
        return f"{self.flashfit('backup', 'create')} && {self.flashfit('backup', 'prune')}"


def current_command() -> tuple[str, ...]:
    """The flashfit that is running now (the same install runs the scheduled backups)."""
    import sys

    script = Path(sys.argv[0])
    if script.name == "flashfit" and script.exists():
        return (str(script.resolve()),)
    return (sys.executable, "-m", "flashfit_ops.cli")


def default_every(config: Config) -> str:
    """What the retention policy implies: daily when it keeps dailies, else weekly."""
    retention = config.backup.retention
    return "weekly" if retention.keep_daily == 0 and retention.keep_weekly > 0 else "daily"


def validate(every: str, at: str) -> list[str]:
    problems = []
    if every not in EVERY:
        problems.append(f"--every {every!r}: choose daily or weekly")
    if not _AT.match(at):
        problems.append(f"--at {at!r}: write a time as HH:MM, e.g. 03:00")
    return problems


def unit_name(config: Config) -> str:
    return f"flashfit-backup-{config.project}"


def on_calendar(schedule: Schedule) -> str:
    day = "Sun " if schedule.every == "weekly" else ""
    return f"{day}*-*-* {schedule.at}:00"


def systemd_units(config: Config, schedule: Schedule) -> dict[str, str]:
    name = unit_name(config)
    service = (
        "# Written by `flashfit backup schedule`.\n"
        "[Unit]\n"
        f"Description=FlashFit backup of {config.project} (create, then prune by the retention policy)\n"
        "Wants=network-online.target\nAfter=network-online.target docker.service\n\n"
        "[Service]\nType=oneshot\n"
        f"WorkingDirectory={config.base_dir}\n"
        f"ExecStart=/bin/sh -c {shlex.quote(schedule.script())}\n"
    )
    timer = (
        "# Written by `flashfit backup schedule`.\n"
        "[Unit]\n"
        f"Description=FlashFit backup of {config.project}, {schedule.every} at {schedule.at}\n\n"
        "[Timer]\n"
        f"OnCalendar={on_calendar(schedule)}\n"
        "Persistent=true\nRandomizedDelaySec=5min\n\n"
        "[Install]\nWantedBy=timers.target\n"
    )
    return {f"{name}.service": service, f"{name}.timer": timer}


def cron_line(config: Config, schedule: Schedule) -> str:
    hour, minute = (int(p) for p in schedule.at.split(":"))
    day = "0" if schedule.every == "weekly" else "*"
    log = state_dir(config) / "backup-schedule.log"
    return f"{minute} {hour} * * {day} cd {shlex.quote(str(config.base_dir))} && ({schedule.script()}) >> {shlex.quote(str(log))} 2>&1"


def install_systemd(config: Config, schedule: Schedule, unit_dir: Path | None = None) -> dict[str, object]:
    """Write the units; into the system folder, also reload systemd and enable the timer now
    (a --unit-dir elsewhere only writes them, e.g. to review or to copy)."""
    import subprocess

    folder = unit_dir or SYSTEMD_DIR
    units = systemd_units(config, schedule)
    for name, text in units.items():
        atomic_write_text(folder / name, text)
    timer = f"{unit_name(config)}.timer"
    if unit_dir is None:
        for argv in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", timer]):
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                raise OperationFailed(f"{' '.join(argv)} failed: {done.stderr.strip()[-300:]}", hint="run it as root")
    return {"units": [str(folder / name) for name in units], "timer": timer}


def systemd_running() -> bool:
    """As sd_booted(3): systemd is the init system when this folder exists."""
    return Path("/run/systemd/system").is_dir()


def record(config: Config, schedule: Schedule, how: str) -> Path:
    path = state_dir(config) / SCHEDULE_FILE
    atomic_write_text(path, json.dumps({**asdict(schedule), "installed": how, "interval_h": schedule.interval.total_seconds() / 3600}, indent=2) + "\n")
    return path


def recorded_interval(config: Config) -> tuple[timedelta, str] | None:
    """The recorded schedule's interval and a description of it, if one was set up."""
    try:
        data = json.loads((state_dir(config) / SCHEDULE_FILE).read_text(encoding="utf-8"))
        return timedelta(hours=float(data["interval_h"])), f"{data['every']} at {data['at']} ({data['installed']})"
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
