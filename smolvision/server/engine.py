"""The server's admission: bounds the requests in progress and the wait queue, runs each admitted
request on a worker thread and cancels it when its client goes away.

This class is the seam between HTTP and the model.  The HTTP layer only calls `submit`, reads a
`Job`'s events and calls `Job.cancel`; what happens inside may change without touching it.

It runs on the public `Model` API: up to `parallel` requests call `Model.generate` at once, each on its
own worker thread, and the Model's scheduler decodes them together (one pass over the weights advances
every running request by a token; a new prompt is read in chunks between those steps).  Up to
`max_queue` more wait in arrival order.  A cancelled job stops at its next token (its `cancel` event is
the generation's), or before its prompt's next chunk.
"""
from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable


class QueueFull(Exception):
    """Every active slot and every queue place is taken; try again after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy (all slots and queue places taken); retry after {retry_after} s")
        self.retry_after = retry_after


class Cancelled(Exception):
    """Raised inside a generation's callbacks to stop it (client gone, server shutting down)."""


@dataclass
class Generation:
    """What to generate: Model.generate's messages, images and videos (bytes) and keyword options."""

    messages: list[dict]
    images: list[bytes] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    videos: list[bytes] = field(default_factory=list)


@dataclass
class Finished:
    """A job's last event: its Result, or the error that ended it, and whether it was cancelled."""

    result: Any = None
    error: BaseException | None = None
    cancelled: bool = False
    queued_s: float = 0.0
    """Seconds spent waiting for a turn."""


class Job:
    """One admitted request: a stream of text pieces ending with a `Finished`, and a cancel switch."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events: asyncio.Queue[str | Finished] = asyncio.Queue()
        self._cancel = threading.Event()
        self._task: asyncio.Task | None = None
        self.started = False
        self.finished: Finished | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stops the job: a queued one never runs, a running one stops at its next token.
        Idempotent and harmless after the end."""
        if self._cancel.is_set():
            return
        self._cancel.set()
        if not self.started and self._task is not None:
            self._task.cancel()

    async def next_event(self) -> str | Finished:
        """The next text piece, or the `Finished` that ends the job (returned again on later calls)."""
        if self.finished is not None and self._events.empty():
            return self.finished
        event = await self._events.get()
        if isinstance(event, Finished):
            self.finished = event
        return event

    def _put_threadsafe(self, event: str | Finished) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the loop closed under a late event (shutdown): nobody is listening
            pass


class Engine:
    """Runs generations of one Model for concurrent requests, with a bounded queue.

    parallel: requests in progress at once, decoded together by the Model (give it max_sequences >=
    parallel, or the rest wait inside it);
    max_queue: requests that may wait beyond those.  A request beyond both is refused with QueueFull.
    on_finished(job, finished) is called on the event loop after each job ends (metrics, logs).
    """

    def __init__(self, model, parallel: int = 1, max_queue: int = 16,
                 on_finished: Callable[[Job, Finished], None] | None = None) -> None:
        if parallel < 1 or max_queue < 0:
            raise ValueError("parallel must be >= 1 and max_queue >= 0")
        self.model = model
        self.parallel, self.max_queue = parallel, max_queue
        self._on_finished = on_finished
        self._turn = asyncio.Semaphore(parallel)
        self._worker = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="smolvision-serve")
        self._jobs: set[Job] = set()
        self._running = 0
        self._recent_seconds = 1.0  # a running mean of request seconds, for Retry-After
        self._closed = False

    @property
    def admitted(self) -> int:
        return len(self._jobs)

    @property
    def running(self) -> int:
        """Requests in progress now (their generations decode together)."""
        return self._running

    @property
    def queued(self) -> int:
        """Requests admitted but not computing yet."""
        return len(self._jobs) - self._running

    def check_room(self) -> None:
        """Raises QueueFull when a job submitted now would be refused (lets a caller refuse early)."""
        if self._closed:
            raise QueueFull(retry_after=5)
        if len(self._jobs) >= self.parallel + self.max_queue:
            waiting_turns = len(self._jobs) / self.parallel
            raise QueueFull(retry_after=max(1, math.ceil(self._recent_seconds * waiting_turns)))

    def submit(self, generation: Generation) -> Job:
        """Admits a generation (call on the event loop); raises QueueFull when there is no room."""
        self.check_room()
        job = Job(asyncio.get_running_loop())
        self._jobs.add(job)
        job._task = asyncio.create_task(self._run(job, generation))
        return job

    async def _run(self, job: Job, generation: Generation) -> None:
        admitted_at = time.perf_counter()
        finished = Finished()
        try:
            async with self._turn:
                finished.queued_s = time.perf_counter() - admitted_at
                if job.cancelled:
                    raise Cancelled()
                job.started = True
                self._running += 1
                try:
                    loop = asyncio.get_running_loop()
                    # Not cancellable from here: the generation stops itself at its next token.
                    finished.result = await asyncio.shield(
                        loop.run_in_executor(self._worker, self._generate, job, generation))
                finally:
                    self._running -= 1
        except (Cancelled, asyncio.CancelledError):
            finished.cancelled = True
        except BaseException as err:  # reported to the client; the server goes on
            finished.error = err
        if job.cancelled and finished.result is not None and finished.result.finish_reason == "cancelled":
            finished.cancelled = True
        elapsed = time.perf_counter() - admitted_at
        self._recent_seconds = 0.8 * self._recent_seconds + 0.2 * elapsed
        self._jobs.discard(job)
        job._put_threadsafe(finished)
        if self._on_finished is not None:
            self._on_finished(job, finished)

    def _generate(self, job: Job, generation: Generation):
        """On a worker thread: one Model.generate call, streaming its pieces to the job."""
        if job.cancelled:
            raise Cancelled()

        def on_piece(piece: str) -> None:
            job._put_threadsafe(piece)

        def on_progress(done: int, total: int) -> None:  # between image tiles: stop early too
            if job.cancelled:
                raise Cancelled()

        return self.model.generate(messages=generation.messages, images=generation.images, videos=generation.videos,
                                   on_token=on_piece, on_progress=on_progress, cancel=job._cancel, **generation.options)

    def cancel_all(self) -> None:
        """Refuses new jobs and cancels every admitted one (the start of a shutdown)."""
        self._closed = True
        for job in list(self._jobs):
            job.cancel()

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Cancels everything (cancel_all) and waits, up to `timeout`, for the worker to finish."""
        self.cancel_all()
        deadline = time.monotonic() + timeout
        while self._jobs and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self._worker.shutdown(wait=False, cancel_futures=True)
