"""Small pieces every backup job shares: the progress seam, the worker pool, time stamps and
fresh path names. Light to import: nothing here reaches a store or the network."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

WORKERS = 4


class Progress(Protocol):
    def start(self, description: str, total: int) -> None: ...
    def advance(self, amount: int) -> None: ...
    def finish(self) -> None: ...


class NullProgress:
    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass

    def finish(self) -> None:
        pass


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def stamp(now: datetime) -> str:
    return now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def unused(path: Path) -> Path:
    """path, or path-2, path-3... whichever does not exist yet (two restores in one second)."""
    candidate, number = path, 1
    while os.path.lexists(candidate):
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate


def parallel(func: Callable[[Any], Any], items: Iterable[Any], workers: int) -> list[Any]:
    """Run func over items on a pool; the first exception cancels what has not started and is raised."""
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as pool:
        futures = [pool.submit(func, item) for item in items]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
