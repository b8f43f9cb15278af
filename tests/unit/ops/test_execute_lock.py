"""The deploy lock: who holds it, a second taker fails (LockHeld, exit 4) or waits, a dead
owner's lock is stale and taken over, release."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flashfit_ops.errors import EXIT_LOCKED, LockHeld
from flashfit_ops.execute.lock import DeployLock, LockInfo, force_release, lock_status

HOLDER = """
import sys, time
from pathlib import Path
from flashfit_ops.execute.lock import DeployLock, LockInfo
lock = DeployLock(Path(sys.argv[1]))
lock.acquire(LockInfo.mine(command="flashfit deploy", message="holder"))
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
"""


def hold(path: Path, seconds: float) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "locked"
    return process


def test_acquire_records_the_owner_and_release_removes_it(tmp_path: Path) -> None:
    path = tmp_path / ".flashfit" / "lock"
    lock = DeployLock(path)
    lock.acquire(LockInfo.mine(command="flashfit deploy", message="release 1.2"))
    record = json.loads(path.read_text())
    assert record["pid"] == os.getpid() and record["message"] == "release 1.2"
    assert {"who", "host", "since", "command"} <= set(record)
    status = lock_status(path)
    assert status.held and status.info.pid == os.getpid()
    lock.release()
    assert not path.exists()
    assert not lock_status(path).held


def test_a_second_deploy_fails_with_exit_4(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    holder = hold(path, 30)
    try:
        with pytest.raises(LockHeld) as caught:
            DeployLock(path).acquire(LockInfo.mine())
        assert caught.value.exit_code == EXIT_LOCKED == 4
        assert f"pid {holder.pid}" in caught.value.message and "holder" in caught.value.message
    finally:
        holder.kill()
        holder.wait()


def test_lock_wait_queues_until_the_holder_finishes(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    holder = hold(path, 1.0)
    waits: list[float] = []
    lock = DeployLock(path)
    lock.acquire(LockInfo.mine(), wait=30, on_wait=lambda info, waited: waits.append(waited))
    assert lock.held and waits
    assert lock.taken_over is None  # released cleanly, not stale
    lock.release()
    holder.wait()


def test_lock_wait_gives_up_after_the_wait(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    holder = hold(path, 30)
    try:
        started = time.monotonic()
        with pytest.raises(LockHeld):
            DeployLock(path).acquire(LockInfo.mine(), wait=0.5)
        assert time.monotonic() - started >= 0.5
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_owner_leaves_a_stale_lock_that_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    holder = hold(path, 30)
    holder.kill()  # SIGKILL: no cleanup ran
    holder.wait()
    status = lock_status(path)
    assert not status.held and status.stale and status.info.pid == holder.pid
    lock = DeployLock(path)
    lock.acquire(LockInfo.mine())
    assert lock.taken_over is not None and lock.taken_over.pid == holder.pid
    lock.release()


def test_force_release_lets_the_next_deploy_in(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    holder = hold(path, 30)
    try:
        before = force_release(path)
        assert before.held
        lock = DeployLock(path)
        lock.acquire(LockInfo.mine())
        assert lock.held
        lock.release()
    finally:
        holder.kill()
        holder.wait()


def test_corrupt_record_does_not_break_status(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    path.write_text("{not json")
    status = lock_status(path)
    assert not status.held and status.info is None
    lock = DeployLock(path)
    lock.acquire(LockInfo.mine())
    lock.release()


def test_wait_progress_names_the_holder_at_once_then_every_ten_seconds() -> None:
    from flashfit_ops.execute.lock import WaitProgress

    lines: list[str] = []
    holder = LockInfo(who="ana", host="ci-7", pid=42, since="2026-12-01T10:00:00+00:00", command="flashfit deploy")
    progress = WaitProgress(200, lines.append)
    for waited in (0.0, 0.25, 5.0, 9.9, 10.0, 12.0, 20.1):
        progress(holder, waited)
    assert lines == [
        "waiting for the deploy lock (0s of 200s): held by ana@ci-7 (pid 42) since 2026-12-01T10:00:00+00:00: flashfit deploy",
        "waiting for the deploy lock (10s of 200s): held by ana@ci-7 (pid 42) since 2026-12-01T10:00:00+00:00: flashfit deploy",
        "waiting for the deploy lock (20s of 200s): held by ana@ci-7 (pid 42) since 2026-12-01T10:00:00+00:00: flashfit deploy",
    ]
    other = LockInfo(who="bo", host="ci-8", pid=7, since="2026-12-01T10:00:21+00:00")
    progress(other, 21.0)  # another deploy took the lock first: said at once
    assert lines[-1].startswith("waiting for the deploy lock (21s of 200s): held by bo@ci-8")


def test_a_lock_wait_without_a_terminal_prints_who_holds_it_and_the_time_waited(tmp_path: Path, capsys, monkeypatch) -> None:
    """Without a TTY (CI) the live status line is off: the wait must still say something."""
    from flashfit_ops import console
    from flashfit_ops.execute.service import acquire_lock, lock_path
    from tests.unit.ops.test_plan_strategies import make_config

    monkeypatch.setattr(console, "_json_mode", False)  # human output (an earlier --json test may have set it)

    config = make_config(tmp_path)
    holder = hold(lock_path(config), 30)
    try:
        with pytest.raises(LockHeld):
            acquire_lock(config, 0.6)
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert "waiting for the deploy lock (0s of 0.6s): held by" in err and "(holder)" in err
