"""Which backups a retention policy keeps: pure data in, data out (restic's forget semantics).

keep_last N: the N newest. keep_daily N: the newest backup of each of the N most recent days that
have one. keep_weekly N: likewise per ISO week. A backup kept by any rule is kept; the rest are
forgotten. Days and weeks are counted in UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Hashable, Sequence


@dataclass(frozen=True)
class Policy:
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0

    @property
    def empty(self) -> bool:
        return not (self.keep_last or self.keep_daily or self.keep_weekly)


@dataclass(frozen=True)
class Decision:
    keep: dict[str, list[str]] = field(default_factory=dict)  # id -> the rules that keep it
    forget: list[str] = field(default_factory=list)


def apply_policy(backups: Sequence[tuple[str, datetime]], policy: Policy) -> Decision:
    ordered = sorted(backups, key=lambda item: (item[1], item[0]), reverse=True)
    reasons: dict[str, list[str]] = {backup_id: [] for backup_id, _ in ordered}

    def utc(when: datetime) -> datetime:
        return when.astimezone(timezone.utc) if when.tzinfo else when.replace(tzinfo=timezone.utc)

    rules: list[tuple[str, int, Callable[[datetime], Hashable]]] = [
        ("last", policy.keep_last, lambda when: None),
        ("daily", policy.keep_daily, lambda when: utc(when).date()),
        ("weekly", policy.keep_weekly, lambda when: utc(when).isocalendar()[:2]),
    ]
    for name, count, bucket_of in rules:
        if count <= 0:
            continue
        seen: list[Hashable] = []
        for backup_id, when in ordered:
            if len(seen) >= count:
                break
            bucket = object() if name == "last" else bucket_of(when)
            if name != "last" and bucket in seen:
                continue
            seen.append(bucket)
            reasons[backup_id].append(name)
    keep = {backup_id: why for backup_id, why in reasons.items() if why}
    forget = [backup_id for backup_id, _ in ordered if backup_id not in keep]
    return Decision(keep=keep, forget=forget)
