from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future

import pytest
import uvloop

from flashfit_server.inference import Deadline, InferenceQueue, InferenceTimeout


class Recorder:
    def __init__(self, delay: float = 0.0):
        self.batches: list[list] = []
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()

    def resolve(self, slot: str, operation: str):  # noqa: ANN201
        def run(items: list) -> list:
            self.gate.wait()
            time.sleep(self.delay)
            self.batches.append([slot, operation, list(items)])
            if operation == "boom":
                raise RuntimeError("model exploded")
            return [f"{slot}:{operation}:{x}" for x in items]

        return run


def test_concurrent_jobs_of_one_kind_share_a_batch_up_to_the_limit() -> None:
    recorder = Recorder()
    recorder.gate.clear()  # hold the thread so jobs pile up
    queue = InferenceQueue(recorder.resolve, max_batch_size=4)
    blocker = queue.submit("clip", "image", ["first"])
    time.sleep(0.05)
    futures = queue.submit("clip", "image", list(range(6))) + queue.submit("fashion", "image", ["f"])
    recorder.gate.set()
    assert [f.result(5) for f in futures] == [f"clip:image:{i}" for i in range(6)] + ["fashion:image:f"]
    assert blocker[0].result(5) == "clip:image:first"
    sizes = [len(b[2]) for b in recorder.batches]
    assert sizes == [1, 4, 2, 1]


def test_a_failing_batch_fails_its_jobs_and_the_thread_keeps_serving() -> None:
    queue = InferenceQueue(Recorder().resolve, max_batch_size=8)
    [bad] = queue.submit("clip", "boom", ["x"])
    with pytest.raises(RuntimeError, match="exploded"):
        bad.result(5)
    assert queue.submit("clip", "text", ["ok"])[0].result(5) == "clip:text:ok"


def test_a_deadline_raises_and_cancels_waiting_jobs_without_wedging_the_worker() -> None:
    recorder = Recorder(delay=0.3)
    queue = InferenceQueue(recorder.resolve, max_batch_size=1)

    async def scenario() -> None:
        slow = queue.submit("blip", "caption", ["a"])
        queued = queue.submit("clip", "image", ["never-run"])
        with pytest.raises(InferenceTimeout):
            await Deadline(0.05).wait(slow + queued)
        assert queued[0].cancelled()
        result = await Deadline(5).wait(queue.submit("clip", "text", ["after"]))
        assert result == ["clip:text:after"]

    asyncio.run(scenario())
    assert ["clip", "image", ["never-run"]] not in recorder.batches


def test_waiting_returns_results_in_order_and_raises_a_failed_jobs_error() -> None:
    queue = InferenceQueue(Recorder().resolve, max_batch_size=8)

    async def scenario() -> None:
        jobs = queue.submit("clip", "text", ["a", "b"]) + queue.submit("fashion", "image", ["c"])
        assert await Deadline(5).wait(jobs) == ["clip:text:a", "clip:text:b", "fashion:image:c"]
        assert await Deadline(5).wait([]) == []
        with pytest.raises(RuntimeError, match="exploded"):
            await Deadline(5).wait(queue.submit("clip", "text", ["ok"]) + queue.submit("clip", "boom", ["x"]))

    asyncio.run(scenario())


# The server runs on uvloop (uvicorn[standard]); the tests run on both loops.
LOOPS = pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])


@LOOPS
def test_a_result_that_lands_after_the_deadline_is_still_a_timeout(run) -> None:  # noqa: ANN001
    """The loop can wake late (a loaded host): the result and the timer then arrive together."""

    async def scenario() -> None:
        future: Future = Future()
        threading.Timer(0.08, future.set_result, args=["late"]).start()
        loop = asyncio.get_running_loop()
        loop.call_soon(time.sleep, 0.2)  # stall the loop past the deadline and the result
        with pytest.raises(InferenceTimeout):
            await Deadline(0.05).wait([future])

    run(scenario())


@LOOPS
def test_a_timer_that_fires_early_is_a_timeout_and_never_blocks_the_loop(run) -> None:  # noqa: ANN001
    """uvloop rounds a 0.4 ms timer down to 0 ms: it fires while the job still runs."""

    async def scenario() -> None:
        future: Future = Future()
        future.set_running_or_notify_cancel()  # a job the inference thread has started
        threading.Timer(0.3, future.set_result, args=["slow"]).start()
        started = time.monotonic()
        with pytest.raises(InferenceTimeout):
            await Deadline(0.0004).wait([future])
        assert not future.done()
        assert time.monotonic() - started < 0.3  # did not sit on the job's result

    run(scenario())


def test_observer_sees_each_batch() -> None:
    seen: list[tuple[str, float]] = []
    queue = InferenceQueue(Recorder().resolve, max_batch_size=8, observe=lambda s, t: seen.append((s, t)))
    queue.submit("fashion", "text", ["x"])[0].result(5)
    assert seen and seen[0][0] == "fashion" and seen[0][1] >= 0
