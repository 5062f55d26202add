"""Batch concurrent requests through the engine from one worker thread (continuous batching).

Requests that arrive together start as one batch; requests that arrive while it decodes join it at
the next step (the engine's `admit` hook), so nobody waits for the batch to finish and the batch
stays full. Rows keep their own adapter and sampling parameters, so any requests can share a batch.

The worker hands events to each request's asyncio queue through its event loop; a request that is
cancelled (client gone) stops at the next step and frees its row.

The number of requests in flight (decoding or waiting) is bounded: past `max_pending`, `submit` raises
`QueueFull` with a Retry-After estimate (the recent time a request took), which the API answers with
OpenAI's 429, so a burst of clients gets told to come back instead of waiting without end.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from selfid.engine import Event, InProcessEngine, Request

log = logging.getLogger("selfid.serve")

DONE = object()  # put on a job's queue after its last completion


class QueueFull(Exception):
    """More requests are in flight than the server takes; come back after `retry_after` seconds."""

    def __init__(self, pending: int, retry_after: int):
        super().__init__(f"{pending} requests are in flight")
        self.pending, self.retry_after = pending, retry_after


@dataclass
class Job:
    request: Request
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    remaining: int = 0  # samples not finished yet
    closed: bool = False  # DONE or an error has been sent
    submitted: float = field(default_factory=time.monotonic)

    def put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the request's event loop is gone (server shutting down)
            pass


class Scheduler:
    # gather_s: how long a request that finds the server idle waits for company before its batch starts; short,
    # because later arrivals join the running batch between steps anyway (5 ms here was 5 ms on every
    # one-client request's time to first token)
    def __init__(self, engine: InProcessEngine, max_batch_size: int | None = None, gather_s: float = 0.001,
                 max_pending: int | None = None):
        self.engine = engine
        self.max_rows = max_batch_size or engine.max_batch_size
        self.max_pending = max_pending or 2 * self.max_rows  # a batch decoding and one more waiting
        self.gather_s = gather_s
        self._live: dict[int, Job] = {}  # submitted, not closed or cancelled (touched by both threads)
        self._live_lock = threading.Lock()
        self._seconds_per_request = 1.0  # moving average, for Retry-After
        self._inbox: queue.Queue[Job | None] = queue.Queue()
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []  # jobs of the current batch, in the engine's request order
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats: Counter = Counter()  # finished samples by reason; batches started; requests admitted mid-batch

    # --- the async side ------------------------------------------------------------------------
    def submit(self, request: Request) -> Job:
        """Queue a request from an event loop; its events arrive on the returned job's queue.

        Raises QueueFull when `max_pending` requests are already in flight."""
        job = Job(request, asyncio.get_running_loop(), remaining=request.params.n)
        with self._live_lock:
            self._live = {k: j for k, j in self._live.items() if not (j.closed or j.request.cancelled)}
            if len(self._live) >= self.max_pending:
                raise QueueFull(len(self._live), self.retry_after())
            self._live[id(job)] = job
        self._inbox.put(job)
        return job

    @property
    def pending(self) -> int:
        with self._live_lock:
            return sum(1 for j in self._live.values() if not (j.closed or j.request.cancelled))

    def retry_after(self) -> int:
        """Seconds after which a refused client may find room: about what a request takes now (1-60)."""
        return max(1, min(60, math.ceil(self._seconds_per_request)))

    # --- the worker ----------------------------------------------------------------------------
    def start(self) -> "Scheduler":
        if self._thread is None:
            warm = getattr(self.engine, "warm", None)
            if warm is not None:  # check graph decoding and capture small batch shapes before the first request
                warm()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="selfid-scheduler", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def busy_rows(self) -> int:
        return sum(j.request.params.n for j in self._running if j.remaining)

    def _take(self, block: bool) -> None:
        """Move arrivals from the inbox to the waiting line; when idle, wait for the first and gather
        the ones that arrive within `gather_s` of it."""
        try:
            first = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        if first is not None:
            self._waiting.append(first)
        deadline = time.monotonic() + (self.gather_s if block else 0)
        while sum(j.request.params.n for j in self._waiting) < self.max_rows:
            left = deadline - time.monotonic()
            try:
                job = self._inbox.get(timeout=left) if left > 0 else self._inbox.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._waiting.append(job)

    def _next_jobs(self, free_rows: int) -> list[Job]:
        jobs: list[Job] = []
        while self._waiting and not self._stop.is_set():
            job = self._waiting[0]
            if job.request.cancelled:  # its client left before it started
                self._waiting.popleft()
                self.stats["cancelled"] += job.request.params.n
                continue
            if job.request.params.n > free_rows and (jobs or free_rows < self.max_rows):
                break  # wait for room (a request bigger than a whole batch still runs, on its own)
            jobs.append(self._waiting.popleft())
            free_rows -= job.request.params.n
        return jobs

    def _admit(self, free_rows: int) -> list[Request]:
        """Called by the engine between steps: requests that arrived meanwhile join the batch."""
        if self._stop.is_set():
            for j in self._running:
                j.request.cancel()
            return []
        self._take(block=False)
        jobs = self._next_jobs(free_rows)
        self._running.extend(jobs)
        self.stats["admitted"] += len(jobs)
        return [j.request for j in jobs]

    def _deliver(self, job: Job, ev: Event) -> None:
        if ev.finished is not None:
            job.remaining -= 1
            self.stats[ev.finished.finish_reason] += 1
        if job.request.cancelled:  # nobody is listening; the row is already gone
            return
        job.put(ev)
        if job.remaining == 0:
            job.closed = True
            job.put(DONE)
            took = time.monotonic() - job.submitted
            self._seconds_per_request += 0.2 * (took - self._seconds_per_request)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._waiting:
                self._take(block=True)
            self._running = self._next_jobs(self.max_rows)
            if not self._running:
                continue
            self.stats["batches"] += 1
            try:
                for ev in self.engine.events([j.request for j in self._running], admit=self._admit):
                    self._deliver(self._running[ev.request], ev)
            except Exception as e:  # a fault in the engine: fail this batch's requests, keep serving
                log.exception("generation failed for %d request(s)", len(self._running))
                self._fail(self._running, e)
            if self._stop.is_set():
                self._fail(self._running, RuntimeError("the server is shutting down"))
            self._running = []
        self._take(block=False)
        self._fail(list(self._waiting), RuntimeError("the server is shutting down"))

    @staticmethod
    def _fail(jobs: list[Job], error: Exception) -> None:
        for j in jobs:
            if not j.closed:
                j.closed = True
                j.remaining = 0
                j.put(error)
