"""Restore, step 2 of 3: swap with the service. The staged data takes the live folder's mode and
owner; the server stops; live -> <data>.previous-<time>, staging -> live; the server starts and
must become ready. A server that does not gets the previous data back (the restored copy is kept
as <data>.failed-<time>); a swap that fails leaves the live data where it was."""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path

from flashfit_ops.backup.common import stamp, unused
from flashfit_ops.backup.service import ServiceControl
from flashfit_ops.errors import FlashFitError, OperationFailed
from flashfit_ops.fileio import fsync_dir


def swap_with_service(service: ServiceControl, staging: Path, review_tmp: Path, data_dir: Path, backup_id: str, *,
                      ready_timeout: float, now: datetime) -> Path | None:
    """Swap staging in for data_dir around a stop/start of the server; the previous data's folder,
    or None when there was no live data."""
    match_live_folder(staging, data_dir)
    parent = data_dir.parent
    previous = _stop_and_swap(service, staging, review_tmp, data_dir,
                              unused(parent / f"{data_dir.name}.previous-{stamp(now)}"))
    try:
        service.start()
        service.wait_ready(ready_timeout)
    except BaseException as exc:
        failed = unused(parent / f"{data_dir.name}.failed-{stamp(now)}")
        back = _undo_swap(service, data_dir, previous, failed, ready_timeout)
        if isinstance(exc, FlashFitError):
            raise _not_ready(exc, backup_id, failed, back) from None
        raise
    return previous


def match_live_folder(staging: Path, live: Path) -> None:
    """Give the staged folder the live one's mode (and, as root, its owner, down the tree)."""
    if not live.exists():
        return
    info = os.stat(live)
    os.chmod(staging, info.st_mode & 0o7777)
    if os.geteuid() == 0 and (info.st_uid, info.st_gid) != (os.getuid(), os.getgid()):
        # The server (uid 1000 in the image) must be able to write what we restored,
        # sub-folders such as images/ included: give the whole tree to the live folder's owner.
        _chown_tree(staging, info.st_uid, info.st_gid)


def _stop_and_swap(service: ServiceControl, staging: Path, review_tmp: Path, live: Path, previous: Path) -> Path | None:
    try:
        service.stop()
        return _swap_in(staging, live, previous)
    except BaseException:
        # Not swapped (a failed swap puts the live folder back): the server goes on with its data.
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(review_tmp, ignore_errors=True)
        try:
            service.start()
        except Exception:
            pass
        raise


def _swap_in(staging: Path, live: Path, previous: Path) -> Path | None:
    """live -> previous, staging -> live; on failure of the second rename, put live back."""
    had_live = live.exists()
    if had_live:
        os.rename(live, previous)
    try:
        os.rename(staging, live)
    except BaseException:
        if had_live:
            os.rename(previous, live)
        raise
    fsync_dir(live.parent)
    return previous if had_live else None


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.lchown(root, uid, gid)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lchown(os.path.join(folder, name), uid, gid)


def _undo_swap(service: ServiceControl, live: Path, previous: Path | None, failed: Path, ready_timeout: float) -> str | None:
    """Put the previous data back and start the server on it; None once it is ready, else why not."""
    try:
        service.stop()
    except Exception:
        pass
    os.rename(live, failed)
    if previous is not None:
        os.rename(previous, live)
    fsync_dir(live.parent)
    try:
        service.start()
        service.wait_ready(ready_timeout)
    except Exception as exc:
        return exc.message if isinstance(exc, FlashFitError) else f"{type(exc).__name__}: {exc}"
    return None


def _not_ready(exc: FlashFitError, backup_id: str, failed: Path, back: str | None) -> OperationFailed:
    state = "and the server is ready on it again" if back is None else f"but the server is not ready on it either: {back}"
    return OperationFailed(f"the server did not come up on backup {backup_id}: {exc.message}; the previous data was put back "
                           + state, hint=f"the restored copy is kept as {failed} for inspection",
                           details={**exc.details, "undone": True, "failed_copy": str(failed),
                                    "ready_after_undo": back is None})
