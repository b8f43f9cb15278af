"""The deploy lock (.flashfit/lock, flashfit_ops.runs.lock): free, held by a running deploy, or
left behind by one that died."""

from __future__ import annotations

import socket
from typing import Any

from flashfit_ops.doctor.context import DoctorContext
from flashfit_ops.doctor.registry import check
from flashfit_ops.doctor.result import Finding, ok, warning
from flashfit_ops.runs.lock import pid_alive

LOCK_FILE = "lock"


def evaluate(status: Any, this_host: str, alive: Any = pid_alive) -> Finding:
    if status is None or (not status.held and status.info is None):
        return ok("no deploy lock")
    info = status.info
    owner = info.describe() if info is not None else "an unreadable record"
    details = {"held": status.held, "stale": status.stale, "owner": status.to_dict().get("owner")}
    if status.held:
        return warning(f"a deploy is in progress: {owner}",
                       "wait for it before changing anything; `flashfit status` shows it", **details)
    dead = ""
    if info is not None and info.host == this_host:
        details["pid_alive"] = alive(info.pid)
        if not details["pid_alive"]:
            dead = f", pid {info.pid} is gone"
    return warning(
        f"stale deploy lock from {owner}{dead}: that deploy died mid-way",
        "check `flashfit status` for what it left; the next deploy takes the lock over and repairs leftovers, "
        "`flashfit lock release` removes the record",
        **details,
    )


@check("lock", "A deploy lock left behind by a deploy that died", timeout=5.0)
def lock(ctx: DoctorContext) -> Finding:
    from flashfit_ops.runs.lock import lock_status

    return evaluate(lock_status(ctx.state_dir / LOCK_FILE), socket.gethostname())
