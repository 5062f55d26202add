"""Batch concurrent requests through the engine from one worker thread.

Requests that arrive together become one batch (a "group"); the engine decodes it one step per
call. A request that arrives while groups are decoding starts a new group at the next step, so
it does not wait for the others to finish; the worker steps every running group in turn, up to
`max_groups` of them (more waiting requests queue and join the next group). Each group mixes
adapters and sampling parameters freely, since the engine keeps them per row.

The worker hands events to each request's asyncio queue through its event loop; a request that
is cancelled (client gone) stops at the next step and frees its row.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from selfid.engine import Event, InProcessEngine, Request

log = logging.getLogger("selfid.serve")

DONE = object()  # put on a job's queue after its last completion


@dataclass
class Job:
    request: Request
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None  # when its group started (monotonic)
    remaining: int = 0

    def put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the request's event loop is gone (server shutting down)
            pass


@dataclass
class _Group:
    jobs: list[Job]
    steps: object  # the engine's step iterator


class Scheduler:
    def __init__(self, engine: InProcessEngine, max_batch_size: int | None = None, max_groups: int = 2,
                 gather_s: float = 0.005):
        self.engine = engine
        self.max_rows = max_batch_size or engine.max_batch_size
        self.max_groups = max(1, max_groups)
        self.gather_s = gather_s
        self._inbox: queue.Queue[Job | None] = queue.Queue()
        self._waiting: deque[Job] = deque()
        self._groups: list[_Group] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats: Counter = Counter()  # finished samples by reason, groups started, rows per group

    # --- the async side ------------------------------------------------------------------------
    def submit(self, request: Request) -> Job:
        """Queue a request from an event loop; its events arrive on the returned job's queue."""
        job = Job(request, asyncio.get_running_loop(), remaining=request.params.n)
        self._inbox.put(job)
        return job

    # --- the worker ----------------------------------------------------------------------------
    def start(self) -> "Scheduler":
        if self._thread is None:
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
        return sum(j.request.params.n for g in self._groups for j in g.jobs if j.remaining)

    def _take(self, block: bool) -> None:
        """Move arrivals from the inbox to the waiting line; when idle, block for the first and
        gather the ones that arrive within `gather_s` of it."""
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

    def _start_group(self) -> None:
        jobs, rows = [], 0
        while self._waiting:
            job = self._waiting[0]
            if job.request.cancelled:
                self._waiting.popleft()
                self.stats["cancelled"] += job.request.params.n
                job.put(DONE)
                continue
            n = job.request.params.n
            if jobs and rows + n > self.max_rows:
                break
            jobs.append(self._waiting.popleft())
            rows += n
        if not jobs:
            return
        now = time.monotonic()
        for j in jobs:
            j.started = now
        self.stats["groups"] += 1
        self.stats["rows"] += rows
        self._groups.append(_Group(jobs, self.engine.steps([j.request for j in jobs])))

    def _step(self, group: _Group) -> bool:
        """One decoding step of a group; False when it has finished."""
        try:
            events = next(group.steps)
        except StopIteration:
            return False
        except Exception as e:  # a fault in the engine: fail this group's requests, keep serving
            log.exception("generation failed for %d request(s)", len(group.jobs))
            for j in group.jobs:
                if j.remaining:
                    j.remaining = 0
                    j.put(e)
            return False
        for ev in events:
            self._deliver(group.jobs[ev.request], ev)
        return any(j.remaining for j in group.jobs)

    def _deliver(self, job: Job, ev: Event) -> None:
        if ev.finished is not None:
            job.remaining -= 1
            self.stats[ev.finished.finish_reason] += 1
        if job.request.cancelled:  # nobody is listening; just let the row go
            return
        job.put(ev)
        if job.remaining == 0:
            job.put(DONE)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._take(block=not self._groups and not self._waiting)
            while self._waiting and len(self._groups) < self.max_groups:
                self._start_group()
            self._groups = [g for g in self._groups if self._step(g)]
        self._take(block=False)
        for j in [j for g in self._groups for j in g.jobs if j.remaining] + list(self._waiting):
            j.put(RuntimeError("the server is shutting down"))  # tell whoever still waits
