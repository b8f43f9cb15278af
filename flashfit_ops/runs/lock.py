"""One deploy at a time per project folder and host.

The lock is `.flashfit/lock`: a JSON record (who, host, pid, time, command, message) in a file
the owner holds an exclusive flock on. The kernel drops the flock when the owner dies, however it
dies (SIGKILL included), so a lock whose owner is gone is stale and taken over at once; the record
still says who held it. `release` (forced) unlinks the file: a holder that still runs keeps its
flock on the old inode, and the next deploy locks a fresh file.
"""

from __future__ import annotations

import errno
import fcntl
import getpass
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from flashfit_ops.errors import LockHeld

POLL_SECONDS = 0.25




def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (one we may not signal still counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

@dataclass(frozen=True)
class LockInfo:
    who: str
    host: str
    pid: int
    since: str
    command: str = ""
    message: str = ""

    @classmethod
    def mine(cls, command: str = "", message: str = "") -> "LockInfo":
        try:
            who = getpass.getuser()
        except Exception:  # no passwd entry (containers)
            who = str(os.getuid())
        return cls(
            who=who,
            host=socket.gethostname(),
            pid=os.getpid(),
            since=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            command=command or " ".join(["flashfit", *sys.argv[1:]]),
            message=message,
        )

    def describe(self) -> str:
        text = f"{self.who}@{self.host} (pid {self.pid}) since {self.since}"
        if self.command:
            text += f": {self.command}"
        if self.message:
            text += f" ({self.message})"
        return text


@dataclass(frozen=True)
class LockStatus:
    held: bool
    info: LockInfo | None
    # A record whose owner is gone: the next deploy takes it over.
    stale: bool = False

    def to_dict(self) -> dict:
        return {"held": self.held, "stale": self.stale, "owner": asdict(self.info) if self.info else None}


def _read_info(path: Path) -> LockInfo | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "null")
        return LockInfo(**data) if isinstance(data, dict) else None
    except (OSError, ValueError, TypeError):
        return None


class WaitProgress:
    """What a lock wait shows where no live status line can (CI logs, pipes): a line as soon as
    the wait starts, naming the holder, then one every `every` seconds with the time waited, and
    one whenever the holder changes. `emit` prints; this only decides when."""

    def __init__(self, wait: float, emit: Callable[[str], None], every: float = 10.0):
        self.wait = wait
        self.emit = emit
        self.every = every
        self._next: float | None = None
        self._holder: LockInfo | None = None
        self.waited = 0.0

    def __call__(self, holder: LockInfo | None, waited: float) -> None:
        self.waited = waited
        if self._next is not None and waited < self._next and holder == self._holder:
            return
        who = holder.describe() if holder else "another deploy"
        self.emit(f"waiting for the deploy lock ({waited:.0f}s of {self.wait:g}s): held by {who}")
        self._holder = holder
        self._next = waited + self.every


class DeployLock:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None
        self.taken_over: LockInfo | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _try(self, info: LockInfo) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                raise
            # The file may have been released (unlinked) between open and flock: lock the new one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = os.read(fd, 65536)
            if previous.strip():
                try:
                    data = json.loads(previous)
                    self.taken_over = LockInfo(**data) if isinstance(data, dict) else None
                except (ValueError, TypeError):
                    self.taken_over = None
            payload = json.dumps(asdict(info), sort_keys=True).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, payload, 0)
            os.fsync(fd)
            self._fd = fd
            return True

    def acquire(
        self,
        info: LockInfo,
        *,
        wait: float = 0.0,
        on_wait: Callable[[LockInfo | None, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Take the lock, polling up to `wait` seconds while another deploy holds it."""
        start = clock()
        while not self._try(info):
            holder = _read_info(self.path)
            waited = clock() - start
            if waited >= wait:
                owner = holder.describe() if holder else "another deploy"
                raise LockHeld(
                    f"another deploy holds the lock: {owner}",
                    hint="wait for it with --lock-wait SECONDS; if that deploy is gone, `flashfit lock release`",
                    details={"owner": asdict(holder) if holder else None, "waited_s": round(waited, 1)},
                )
            if on_wait is not None:
                on_wait(holder, waited)
            sleep(min(POLL_SECONDS, max(0.01, wait - waited)))

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            # Unlink while still holding the flock, so nobody reads an empty record as ours.
            if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> "DeployLock":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def lock_status(path: Path) -> LockStatus:
    path = Path(path)
    if not path.exists():
        return LockStatus(False, None)
    info = _read_info(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return LockStatus(False, None)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return LockStatus(True, info)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return LockStatus(False, info, stale=info is not None)
    finally:
        os.close(fd)


def force_release(path: Path) -> LockStatus:
    """Remove the lock record whoever holds it; returns what it was."""
    status = lock_status(path)
    try:
        Path(path).unlink()
    except FileNotFoundError:
        pass
    return status
