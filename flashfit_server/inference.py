"""One inference thread per worker process that batches concurrent requests.

Requests submit jobs (model slot, operation, one input) and await a future. The thread takes the
oldest job, gathers every other queued job for the same slot and operation (up to
MAX_BATCH_SIZE), runs them as one batch and resolves the futures. A request that gives up
(INFERENCE_TIMEOUT) cancels its futures: a job not started yet is skipped, a running batch
finishes and its result is dropped, so the worker never wedges and the next request is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

BatchFn = Callable[[list[Any]], Sequence[Any]]
Observer = Callable[[str, float], None]


class InferenceTimeout(TimeoutError):
    pass


@dataclass
class _Job:
    key: tuple[str, str]  # (slot, operation)
    item: Any
    future: Future = field(default_factory=Future)


class InferenceQueue:
    def __init__(
        self,
        resolve: Callable[[str, str], BatchFn],
        max_batch_size: int,
        observe: Observer | None = None,
        on_start: Callable[[], None] | None = None,
    ):
        self._resolve = resolve
        self.max_batch = max(1, max_batch_size)
        self._observe = observe
        self._on_start = on_start
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._held: list[_Job] = []  # taken from the queue but belonging to a later batch
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._start_lock = threading.Lock()
        self.batches_run = 0

    def start(self) -> None:
        """Start the thread (idempotent); deferred so that building an app starts nothing."""
        with self._start_lock:
            if not self._thread.is_alive() and self._thread.ident is None:
                self._thread.start()

    def submit(self, slot: str, operation: str, items: Sequence[Any]) -> list[Future]:
        self.start()
        jobs = [_Job((slot, operation), item) for item in items]
        for job in jobs:
            self._jobs.put(job)
        return [job.future for job in jobs]

    def close(self) -> None:
        self._jobs.put(None)

    # --- the thread ---------------------------------------------------------------------------

    def _next_job(self) -> _Job | None:
        if self._held:
            return self._held.pop(0)
        return self._jobs.get()

    def _gather(self, first: _Job) -> list[_Job]:
        batch = [first]
        keep: list[_Job] = []
        for job in self._held:
            (batch if job.key == first.key and len(batch) < self.max_batch else keep).append(job)
        self._held = keep
        while len(batch) < self.max_batch:
            try:
                queued = self._jobs.get_nowait()
            except queue.Empty:
                break
            if queued is None:
                self._jobs.put(None)
                break
            (batch if queued.key == first.key else self._held).append(queued)
        return batch

    def _run(self) -> None:
        if self._on_start is not None:
            self._on_start()
        while True:
            first = self._next_job()
            if first is None:
                return
            batch = [job for job in self._gather(first) if job.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            slot, operation = first.key
            started = time.perf_counter()
            try:
                results = self._resolve(slot, operation)([job.item for job in batch])
            except Exception as exc:  # a failing batch fails its requests, not the thread
                log.exception("inference %s/%s failed", slot, operation)
                for job in batch:
                    job.future.set_exception(exc)
                continue
            finally:
                if self._observe is not None:
                    self._observe(slot, time.perf_counter() - started)
            self.batches_run += 1
            for job, result in zip(batch, results, strict=True):
                job.future.set_result(result)


class Deadline:
    """The model-time budget of one request, shared by all the jobs it submits."""

    def __init__(self, seconds: float):
        self.expires = time.monotonic() + seconds
        self.seconds = seconds

    async def wait(self, futures: list[Future]) -> list[Any]:
        """The jobs' results in order; their first error is raised as gather would."""
        finished = _all_done(asyncio.get_running_loop(), futures)
        remaining = self.expires - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                await finished
        except TimeoutError:
            pass
        # Ask the jobs themselves, not `finished` (a timeout cancels it, which also makes it done):
        # uvloop rounds timers to whole milliseconds, so one may fire before the budget is spent;
        # and a loop that wakes late sees the timer and a late result together.
        complete = all(future.done() and not future.cancelled() for future in futures)
        if not complete or time.monotonic() > self.expires:
            for future in futures:
                future.cancel()
            raise InferenceTimeout(f"model inference took longer than {self.seconds:g} s")
        return [future.result() for future in futures]  # all done: none of these blocks


def _all_done(loop: asyncio.AbstractEventLoop, futures: list[Future]) -> asyncio.Future:
    """One loop future for many thread futures: the loop is woken once, when the last is done."""
    finished = loop.create_future()
    pending = [len(futures)]
    lock = threading.Lock()

    def mark(future: asyncio.Future) -> None:
        if not future.done():
            future.set_result(None)

    def one_done(_: Future) -> None:
        with lock:
            pending[0] -= 1
            last = pending[0] == 0
        if last and not loop.is_closed():  # closed: the request gave up and its loop has ended
            with contextlib.suppress(RuntimeError):  # closed in between
                loop.call_soon_threadsafe(mark, finished)

    if not futures:
        finished.set_result(None)
    for future in futures:
        future.add_done_callback(one_done)
    return finished
