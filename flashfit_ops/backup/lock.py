"""The lock a backup job writes into the target (locks/<kind>-<id>.json): prune excludes every
other job; backups, restores and verifies run side by side. A lock older than
LOCK_STALE_SECONDS belongs to a dead run and is ignored."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flashfit_ops.backup.common import utcnow
from flashfit_ops.backup.manifest import LOCK_PREFIX
from flashfit_ops.backup.store import ObjectMissing, Store
from flashfit_ops.errors import LockHeld

LOCK_STALE_SECONDS = 6 * 3600
EXCLUSIVE = {"prune"}


@dataclass
class Lock:
    store: Store
    key: str

    def release(self) -> None:
        try:
            self.store.delete([self.key])
        except Exception:  # a stale lock is reported by the next run; never mask the real outcome
            pass


def acquire_lock(store: Store, kind: str, ident: str, now: datetime | None = None) -> Lock:
    """Write our lock, then look for conflicting ones (prune excludes everything; backups, restores
    and verifies share). Writing first means two racing runs both see each other and both stop."""
    now = now or utcnow()
    key = f"{LOCK_PREFIX}{kind}-{ident}.json"
    body = {"kind": kind, "host": socket.gethostname(), "pid": os.getpid(), "time": now.isoformat()}
    store.put_bytes(key, json.dumps(body).encode())
    lock = Lock(store, key)
    for other in sorted(store.list(LOCK_PREFIX)):
        other_kind = other[len(LOCK_PREFIX) :].split("-", 1)[0]
        if other == key or not _conflicts(kind, other_kind):
            continue
        holder = _live_holder(store, other, now)
        if holder is not None:
            lock.release()
            raise _held(store, other, other_kind, *holder)
    return lock


def _conflicts(kind: str, other_kind: str) -> bool:
    return kind in EXCLUSIVE or other_kind in EXCLUSIVE


def _live_holder(store: Store, key: str, now: datetime) -> tuple[dict[str, Any], float] | None:
    """(the lock's body, its age in seconds) unless it is unreadable, gone or stale."""
    try:
        info = json.loads(store.get_bytes(key))
        started = datetime.fromisoformat(info["time"])
    except (ObjectMissing, ValueError, KeyError, TypeError):
        return None
    age = (now - started).total_seconds()
    return None if age > LOCK_STALE_SECONDS else (info, age)


def _held(store: Store, key: str, kind: str, info: dict[str, Any], age: float) -> LockHeld:
    return LockHeld(
        f"a {kind} is running on {store.url} (host {info.get('host')}, pid {info.get('pid')}, "
        f"started {int(age)}s ago)",
        hint=f"wait for it to finish; a lock older than {LOCK_STALE_SECONDS // 3600}h is ignored, "
        f"or delete {key} if that run is dead",
    )
