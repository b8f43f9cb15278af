"""Crash-safe file writes and the cross-process lock that serialises writers.

A file is replaced by writing a temporary sibling, fsyncing it, renaming it over the target and
fsyncing the folder, so a reader (or a restart after a kill) sees either the old bytes or the new
ones, never a mix.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Tests set this to simulate a crash between two steps of a write (see tests/server/unit).
FaultHook = Callable[[str], None]
_fault_hook: FaultHook | None = None


def set_fault_hook(hook: FaultHook | None) -> None:
    global _fault_hook
    _fault_hook = hook


def fault_point(step: str) -> None:
    if _fault_hook is not None:
        _fault_hook(step)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(target: Path, data: bytes | memoryview, sync_dir: bool = True) -> None:
    """`sync_dir=False` leaves the folder's fsync to the caller, who writes several files into
    it and syncs it once before anything names them."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    fault_point(f"before-rename:{target.name}")
    os.replace(tmp, target)
    if sync_dir:
        fsync_dir(target.parent)


def write_json_atomic(target: Path, payload: Any) -> None:
    write_bytes_atomic(target, (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path, shared: bool = False) -> Iterator[None]:
    """fcntl lock on `path` (created if needed): exclusive for writers, shared for readers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
