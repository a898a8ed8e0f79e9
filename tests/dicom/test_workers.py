"""The proxy's worker threads (node/dicom/workers.py): results and errors reach the awaiting task, a slow job
does not hold up the others, and a finished job's result is handed over without waking the loop."""

from __future__ import annotations

import threading

import pytest
import trio

from node.dicom.workers import Workers


@pytest.fixture
def workers():
    w = Workers(2)
    yield w
    w.close()


async def test_a_job_returns_its_value_or_raises_its_error(workers):
    assert await workers.submit(lambda: 6 * 7).result() == 42

    def bad():
        raise ValueError("malformed data set")

    with pytest.raises(ValueError, match="malformed"):
        await workers.submit(bad).result()


async def test_a_slow_job_does_not_hold_up_the_next_one(workers):
    release = threading.Event()
    slow = workers.submit(lambda: release.wait(10) and "slow")  # a data set behind a slow fsync
    with trio.fail_after(5):
        assert await workers.submit(lambda: "fast").result() == "fast"
    assert not slow.peek()[0]
    release.set()
    with trio.fail_after(5):
        assert await slow.result() == "slow"


async def test_a_finished_job_is_collected_without_a_wake_up(workers):
    job = workers.submit(lambda: "staged")
    with trio.fail_after(5):
        while not job.peek()[0]:
            await trio.sleep(0.001)
    assert await job.result() == "staged"
    assert job._waiter is None  # nobody waited, so the worker never called into trio


async def test_a_waiter_cancelled_before_its_job_ends_leaves_the_proxy_running(workers):
    release = threading.Event()
    job = workers.submit(lambda: release.wait(10))
    with trio.move_on_after(0.05):
        await job.result()  # the association ends while its data set is still being staged
    release.set()
    with trio.fail_after(5):
        while not job.peek()[0]:
            await trio.sleep(0.001)
    await trio.sleep(0.01)  # the worker's wake-up of a waiter nobody awaits is harmless
    assert await workers.submit(lambda: "next").result() == "next"
