"""Moved to flashfit_ops.runs.lock (the lock belongs to every mutating command); kept for imports."""

from flashfit_ops.runs.lock import DeployLock, LockInfo, LockStatus, WaitProgress, force_release, lock_status, pid_alive

__all__ = ["DeployLock", "LockInfo", "LockStatus", "WaitProgress", "force_release", "lock_status", "pid_alive"]
