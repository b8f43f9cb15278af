"""`flashfit backup schedule`: exact systemd units and cron line from the config, the command on a
host without systemd (this one) printing the cron line, and the doctor measuring the newest
backup against the recorded schedule."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashfit_ops.backup import schedule as sched
from flashfit_ops.cli import app
from flashfit_ops.config import resolve
from flashfit_ops.doctor.checks.backup import evaluate
from flashfit_ops.doctor.result import FAILURE, OK, WARNING
from flashfit_ops.errors import EXIT_OK, EXIT_USAGE


def plan(tmp_path: Path, every: str = "daily") -> sched.Schedule:
    return sched.Schedule(every=every, at="03:30", command=("/usr/bin/flashfit",), config_file=f"{tmp_path}/flashfit.yml", env="prod")


def test_systemd_units_run_create_then_prune(tmp_path: Path) -> None:
    config = resolve({"project": "shop"}, environ={}, base_dir=tmp_path)
    units = sched.systemd_units(config, plan(tmp_path))
    assert list(units) == ["flashfit-backup-shop.service", "flashfit-backup-shop.timer"]
    script = (f"/usr/bin/flashfit backup create -c {tmp_path}/flashfit.yml --env prod && "
              f"/usr/bin/flashfit backup prune -c {tmp_path}/flashfit.yml --env prod")
    assert f"ExecStart=/bin/sh -c '{script}'\n" in units["flashfit-backup-shop.service"]
    assert f"WorkingDirectory={tmp_path}\n" in units["flashfit-backup-shop.service"]
    timer = units["flashfit-backup-shop.timer"]
    assert "OnCalendar=*-*-* 03:30:00\n" in timer and "Persistent=true\n" in timer and "WantedBy=timers.target" in timer
    assert "OnCalendar=Sun *-*-* 03:30:00\n" in sched.systemd_units(config, plan(tmp_path, "weekly"))["flashfit-backup-shop.timer"]


def test_cron_line_and_defaults_follow_the_retention_policy(tmp_path: Path) -> None:
    config = resolve({}, environ={}, base_dir=tmp_path)
    line = sched.cron_line(config, plan(tmp_path, "weekly"))
    assert line.startswith(f"30 3 * * 0 cd {tmp_path} && (/usr/bin/flashfit backup create ")
    assert line.endswith(f">> {tmp_path}/.flashfit/backup-schedule.log 2>&1")
    assert sched.default_every(config) == "daily"
    weekly = resolve({"backup": {"retention": {"keep_daily": 0, "keep_weekly": 4}}}, environ={}, base_dir=tmp_path)
    assert sched.default_every(weekly) == "weekly"
    assert sched.validate("hourly", "3am") == ["--every 'hourly': choose daily or weekly", "--at '3am': write a time as HH:MM, e.g. 03:00"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})


def test_schedule_prints_a_cron_line_without_systemd(runner: CliRunner, example_config: Path, monkeypatch) -> None:
    monkeypatch.setattr(sched, "systemd_running", lambda: False)
    result = runner.invoke(app, ["backup", "schedule", "-c", str(example_config), "--at", "02:15", "--json"])
    assert result.exit_code == EXIT_OK, result.output
    document = json.loads(result.stdout)
    assert document["installed"] == "cron" and document["cron_line"].startswith("15 2 * * * cd ")
    recorded = sched.recorded_interval(resolve({}, environ={}, base_dir=example_config.parent))
    assert recorded == (timedelta(days=1), "daily at 02:15 (cron)")
    text = runner.invoke(app, ["backup", "schedule", "-c", str(example_config)])
    assert "systemd is not running on this host" in text.output and "crontab -e" in text.output


def test_schedule_writes_units_where_systemd_runs(runner: CliRunner, example_config: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sched, "systemd_running", lambda: True)
    units = tmp_path / "units"
    result = runner.invoke(app, ["backup", "schedule", "-c", str(example_config), "--every", "weekly", "--unit-dir", str(units), "--json"])
    assert result.exit_code == EXIT_OK, result.output
    assert sorted(p.name for p in units.iterdir()) == ["flashfit-backup-flashfit.service", "flashfit-backup-flashfit.timer"]
    assert json.loads(result.stdout)["installed"] == "systemd"


def test_bad_schedule_is_a_usage_error(runner: CliRunner, example_config: Path) -> None:
    result = runner.invoke(app, ["backup", "schedule", "-c", str(example_config), "--at", "25:00"])
    assert result.exit_code == EXIT_USAGE and "HH:MM" in result.output
    assert not (example_config.parent / ".flashfit" / sched.SCHEDULE_FILE).exists()


def test_doctor_measures_the_newest_backup_against_the_schedule() -> None:
    now = datetime(2026, 1, 10, 12, tzinfo=timezone.utc)
    weekly = timedelta(weeks=1)
    found = evaluate(now - timedelta(days=3), 4, now, weekly, "file:///b", "weekly at 03:00 (systemd)")
    assert found.status == OK and "by the schedule, weekly at 03:00 (systemd)" in found.summary
    late = evaluate(now - timedelta(days=12), 4, now, weekly, "file:///b", "weekly at 03:00 (cron)")
    assert late.status == WARNING and "the schedule (weekly at 03:00 (cron)) expects one every 7.0 days" in late.summary
    assert "scheduled backup is not succeeding" in late.hint
    assert evaluate(now - timedelta(days=30), 4, now, weekly, "file:///b", "weekly").status == FAILURE
