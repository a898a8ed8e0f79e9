"""The DICOM proxy's worker threads: parse, hash and stage data sets while the PACS works.

Why not `trio.to_thread.run_sync` per data set: each call hands a job to trio's thread cache, names the
thread, and wakes the event loop with the result when it finishes. The proxy needs a data set's result only
when the PACS answers, by which time the job has long finished (staging is one fsync; the PACS stores the
instance and fsyncs too), so that wake-up is pure cost on a loop that relays every PDU. Here a finished job
just holds its result; the loop is woken only when it waits for a job still running.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import trio

log = logging.getLogger("radchain.dicom.proxy")


class Job:
    """One function run on a worker thread; `await job.result()` returns what it returned or raises what
    it raised."""

    __slots__ = ("fn", "finished", "value", "error", "_waiter", "_token", "_lock")

    def __init__(self, fn: Callable[[], Any], lock: threading.Lock):
        self.fn = fn
        self.finished = False
        self.value: Any = None
        self.error: BaseException | None = None
        self._waiter: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._lock = lock

    def _run(self) -> None:
        try:
            self.value = self.fn()
        except BaseException as exc:  # the job's own error, handed to whoever awaits the result
            self.error = exc
        finally:  # whatever happened, the waiter hears of it: a modality's answer must not hang
            self.fn = None  # what it closed over (a data set's bytes) is not kept with the result
            with self._lock:
                self.finished = True
                waiter, token = self._waiter, self._token
            if waiter is not None:
                try:
                    token.run_sync_soon(waiter.set)
                except trio.RunFinishedError:  # the proxy is shutting down: nobody waits any more
                    pass

    async def result(self) -> Any:
        with self._lock:
            if not self.finished:
                self._waiter = trio.Event()
                self._token = trio.lowlevel.current_trio_token()
            waiter = self._waiter if not self.finished else None
        if waiter is not None:
            await waiter.wait()
        else:
            await trio.lowlevel.checkpoint()
        if self.error is not None:
            raise self.error
        return self.value

    def peek(self) -> tuple[bool, Any, BaseException | None]:
        """(finished, value, error) now, without waiting: for an association that ends before its answer."""
        with self._lock:
            return self.finished, self.value, self.error


class Workers:
    """`threads` long-lived daemon threads taking jobs in submission order. Several run at once so that one
    slow fsync (a busy disk takes 5-15 ms) does not hold up the other modalities' data sets, and the disk
    can merge their flushes into one journal commit."""

    def __init__(self, threads: int, name: str = "radchain-dicom"):
        assert threads >= 1
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[[], Any]) -> Job:
        job = self.job(fn)
        self.start(job)
        return job

    def job(self, fn: Callable[[], Any]) -> Job:
        """A job not started yet (`start` it later): one that can already be awaited."""
        return Job(fn, self._lock)

    def start(self, job: Job) -> None:
        self._jobs.put(job)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job._run()
            except BaseException:  # a bug in the bookkeeping above: the thread must outlive it
                log.exception("DICOM worker job failed outside its function")

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
