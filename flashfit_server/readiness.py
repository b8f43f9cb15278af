"""Readiness shared by the worker processes of one server.

A load balancer's connection lands on any worker, so /ready must not answer 200 while a sibling
is still loading its models: a deploy gate that passed on one worker would send traffic that the
other answers with 503. With several workers, `serve` makes a folder (FLASHFIT_READY_DIR) where
each worker leaves a marker named after its pid once it is ready; /ready counts the markers of
live processes. A worker that dies leaves a marker of a dead pid, which no longer counts, so the
server is not ready again until its replacement has loaded.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

READY_DIR_ENV = "FLASHFIT_READY_DIR"
PROC = Path("/proc")


def _alive(pid: int) -> bool:
    """A killed worker stays a zombie until the supervisor reaps it: that is not alive."""
    if not PROC.is_dir():  # not Linux: trust the marker (a worker withdraws it when it stops)
        return True
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class WorkerReadiness:
    def __init__(self, folder: Path | None, expected: int):
        self.folder = folder
        self.expected = max(1, expected)

    @classmethod
    def from_env(cls, workers: int) -> WorkerReadiness:
        folder = os.environ.get(READY_DIR_ENV)
        return cls(Path(folder) if folder and workers > 1 else None, workers)

    @property
    def shared(self) -> bool:
        return self.folder is not None

    def _marker(self) -> Path:
        assert self.folder is not None
        return self.folder / str(os.getpid())

    def mark_ready(self) -> None:
        if self.folder is not None:
            self._marker().touch()

    def withdraw(self) -> None:
        if self.folder is not None:
            with contextlib.suppress(OSError):
                self._marker().unlink()

    def ready_workers(self) -> int:
        """Live workers that have left a marker (0 without a shared folder)."""
        if self.folder is None:
            return 0
        try:
            names = os.listdir(self.folder)
        except OSError:
            return 0
        return sum(1 for name in names if name.isdigit() and _alive(int(name)))
