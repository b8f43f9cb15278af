"""Crash-safe file writes and the cross-process lock that serialises writers.

A file is replaced by writing a temporary sibling, renaming it over the target and (with `sync`)
fsyncing both, so a reader (or a restart after a kill) sees either the old bytes or the new ones,
never a mix. Against a killed process the rename alone is enough: the kernel keeps every
completed write() in the page cache and rename() is atomic for every other process. The fsyncs
add durability against power loss; the data folder's commit path leaves them out (see
datastore.py), rare bulk writes (compaction, migration, snapshots) keep them.
"""

from __future__ import annotations

import contextlib
import errno
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


def write_bytes_atomic(target: Path, data: bytes | memoryview, sync_dir: bool = True, sync: bool = True) -> None:
    """`sync_dir=False` leaves the folder's fsync to the caller, who writes several files into
    it and syncs it once before anything names them; `sync=False` skips every fsync (atomic
    against a killed process, not against power loss)."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        if sync:
            os.fsync(handle.fileno())
    fault_point(f"before-rename:{target.name}")
    os.replace(tmp, target)
    if sync and sync_dir:
        fsync_dir(target.parent)


def write_json_atomic(target: Path, payload: Any, sync: bool = True, compact: bool = False) -> None:
    """`compact` drops the indentation: the manifest is rewritten on every commit."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":")) if compact else json.dumps(payload, indent=1, sort_keys=True)
    write_bytes_atomic(target, (text + "\n").encode(), sync=sync)


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


@contextlib.contextmanager
def try_file_lock(path: os.PathLike[str] | str, blocking: bool = False) -> Iterator[bool]:
    """Exclusive flock on `path` (created if needed): yields False instead of waiting when
    `blocking` is False and another process holds it, True once held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                yield False
                return
            raise
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
