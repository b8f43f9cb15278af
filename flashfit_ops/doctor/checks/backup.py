"""Age of the newest backup against the retention policy: keep_daily means a backup a day is
expected, keep_weekly (without daily) one a week. Listing uses the backup engine
(flashfit_ops.backup.catalogue)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from flashfit_ops.doctor.context import DoctorContext
from flashfit_ops.doctor.registry import check
from flashfit_ops.doctor.result import Finding, failure, ok, warning
from flashfit_ops.errors import Unavailable

BACKUP_HINT = "run `flashfit backup create`, and `flashfit backup schedule` to run it on a timer"
# A backup is late after 1.5 intervals (a daily job that missed one run) and failing after 3.
LATE_FACTOR = 1.5
FAIL_FACTOR = 3.0


def expected_interval(keep_daily: int, keep_weekly: int) -> timedelta | None:
    if keep_daily > 0:
        return timedelta(days=1)
    if keep_weekly > 0:
        return timedelta(weeks=1)
    return None


def _age(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    if hours < 48:
        return f"{hours:.0f}h"
    return f"{hours / 24:.1f} days"


def evaluate(
    newest: datetime | None, count: int, now: datetime, interval: timedelta | None, target: str, schedule: str | None = None
) -> Finding:
    """`schedule`: the one `flashfit backup schedule` set up; without it the retention policy
    says how often a backup is expected."""
    details: dict[str, Any] = {"target": target, "count": count, "schedule": schedule,
                               "expected_every_h": interval.total_seconds() / 3600 if interval else None}
    expects = f"the schedule ({schedule}) expects" if schedule else "the retention policy expects"
    if newest is None:
        return warning(f"no backup yet in {target}", BACKUP_HINT, **details)
    age = now - newest
    details.update(newest=newest.isoformat(), age_h=round(age.total_seconds() / 3600, 2))
    text = f"newest of {count} backups is {_age(age)} old"
    if interval is None:
        return ok(f"{text} (the retention policy sets no schedule)", **details)
    if age > interval * FAIL_FACTOR:
        return failure(f"{text}; {expects} one every {_age(interval)}", _hint(schedule), **details)
    if age > interval * LATE_FACTOR:
        return warning(f"{text}; {expects} one every {_age(interval)}", _hint(schedule), **details)
    by = f" by the schedule, {schedule}" if schedule else ""
    return ok(f"{text} (expected every {_age(interval)}{by})", **details)


def _hint(schedule: str | None) -> str:
    if schedule:
        return "the scheduled backup is not succeeding: run `flashfit backup create` to see why, and check its timer or cron log"
    return BACKUP_HINT


@check("backup", "Age of the last backup against the retention policy", timeout=15.0)
def backup(ctx: DoctorContext) -> Finding:
    from flashfit_ops.backup.catalogue import backup_ids, load_manifest, resolve_ref
    from flashfit_ops.backup.schedule import recorded_interval
    from flashfit_ops.backup.store import open_store

    config = ctx.config
    retention = config.backup.retention
    interval = expected_interval(retention.keep_daily, retention.keep_weekly)
    schedule = None
    recorded = recorded_interval(config)
    if recorded is not None:
        interval, schedule = recorded
    store = open_store(config.backup.target, config)
    target = getattr(store, "url", config.backup.target)
    try:
        store.check()
    except Unavailable:
        if config.backup.target.startswith("file://"):
            return evaluate(None, 0, ctx.now(), interval, target, schedule)  # the folder appears with the first backup
        raise
    ids = backup_ids(store)
    if not ids:
        return evaluate(None, 0, ctx.now(), interval, target, schedule)
    newest = load_manifest(store, resolve_ref(store, "latest"))
    return evaluate(newest.time, len(ids), ctx.now(), interval, target, schedule)
