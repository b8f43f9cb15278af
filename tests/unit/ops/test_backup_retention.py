"""Retention policy as data: which backups keep_last/keep_daily/keep_weekly keep."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from flashfit_ops.backup.retention import Policy, apply_policy

START = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)  # a Wednesday


def series(days: int, per_day: int = 1) -> list[tuple[str, datetime]]:
    out = []
    for day in range(days):
        for slot in range(per_day):
            when = START + timedelta(days=day, hours=slot)
            out.append((f"b{day:02d}-{slot}", when))
    return out


def test_keep_last() -> None:
    decision = apply_policy(series(5), Policy(keep_last=2))
    assert sorted(decision.keep) == ["b03-0", "b04-0"]
    assert decision.forget == ["b02-0", "b01-0", "b00-0"]  # newest first


def test_keep_daily_keeps_the_newest_of_each_day() -> None:
    decision = apply_policy(series(4, per_day=3), Policy(keep_daily=2))
    assert sorted(decision.keep) == ["b02-2", "b03-2"]
    assert len(decision.forget) == 10


def test_keep_weekly_uses_iso_weeks() -> None:
    backups = series(21)  # three weeks and a bit from a Wednesday
    decision = apply_policy(backups, Policy(keep_weekly=3))
    kept = sorted(decision.keep)
    weeks = {dict(backups)[k].isocalendar()[:2] for k in kept}
    assert len(kept) == 3 and len(weeks) == 3
    assert "b20-0" in kept  # the newest is always the newest of its week


def test_rules_combine_and_report_reasons() -> None:
    decision = apply_policy(series(10), Policy(keep_last=1, keep_daily=3, keep_weekly=2))
    assert decision.keep["b09-0"] == ["last", "daily", "weekly"]
    assert decision.keep["b08-0"] == ["daily"]
    assert set(decision.keep) | set(decision.forget) == {b for b, _ in series(10)}
    assert not set(decision.keep) & set(decision.forget)


def test_empty_policy_and_empty_input() -> None:
    assert Policy().empty
    assert apply_policy([], Policy(keep_last=3)).keep == {}
    assert apply_policy(series(2), Policy(keep_last=10)).forget == []


def test_naive_and_other_timezones_are_utc_days() -> None:
    late = datetime(2025, 1, 1, 23, 30, tzinfo=timezone(timedelta(hours=-5)))  # Jan 2 04:30 UTC
    early = datetime(2025, 1, 2, 1, 0, tzinfo=timezone.utc)
    decision = apply_policy([("a", late), ("b", early)], Policy(keep_daily=5))
    assert list(decision.keep) == ["a"]  # same UTC day; a is newer
