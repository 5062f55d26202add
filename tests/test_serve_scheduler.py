"""The scheduler on its own: what happens to requests when the engine fails, when clients leave early,
and when the server stops."""

import asyncio
import threading

from selfid.engine import InProcessEngine, Request, SamplingParams
from selfid.model.chat import conversation
from selfid.serve.scheduler import DONE, Scheduler
from tests.serve_helpers import run_async


async def collect(job, timeout=60):
    items = []
    while True:
        item = await asyncio.wait_for(job.queue.get(), timeout)
        items.append(item)
        if item is DONE or isinstance(item, Exception):
            return items


class FailsOnce:
    """The tiny engine, except that the first batch it is given blows up."""

    def __init__(self, engine):
        self.engine, self.failed = engine, False
        self.max_batch_size = engine.max_batch_size

    def events(self, requests, prompt_tokens=None, admit=None):
        if not self.failed:
            self.failed = True
            raise RuntimeError("CUDA out of memory (simulated)")
        yield from self.engine.events(requests, prompt_tokens, admit)


def test_an_engine_fault_fails_its_batch_and_the_next_request_is_served(tiny, engine):
    prompt = tiny.chat.render(conversation("hi")).text
    sched = Scheduler(FailsOnce(engine)).start()
    try:
        async def main():
            first = await collect(sched.submit(Request(prompt, SamplingParams(max_new_tokens=3))))
            second = await collect(sched.submit(Request(prompt, SamplingParams(max_new_tokens=3))))
            return first, second

        first, second = run_async(main)
    finally:
        sched.stop()
    assert isinstance(first[-1], RuntimeError) and "out of memory" in str(first[-1])
    assert second[-1] is DONE and second[-2].finished.finish_reason == "length"
    assert second[-2].finished.text == engine.generate([prompt], SamplingParams(max_new_tokens=3))[0].text


def test_a_request_cancelled_before_it_starts_never_reaches_the_engine(tiny, engine):
    prompt = tiny.chat.render(conversation("hi")).text
    seen = []

    class Spy:
        max_batch_size = engine.max_batch_size

        def events(self, requests, prompt_tokens=None, admit=None):
            seen.extend(requests)
            yield from engine.events(requests, prompt_tokens, admit)

    sched = Scheduler(Spy())

    async def main():
        gone = sched.submit(Request(prompt, SamplingParams(max_new_tokens=2)))
        gone.request.cancel()
        kept = sched.submit(Request(prompt, SamplingParams(max_new_tokens=2)))
        sched.start()
        return await collect(kept)

    try:
        items = run_async(main)
    finally:
        sched.stop()
    assert items[-1] is DONE and len(seen) == 1 and sched.stats["cancelled"] == 1


def test_stopping_the_server_ends_requests_in_flight_with_an_error(tiny):
    engine = InProcessEngine(tiny)
    prompt = tiny.chat.render(conversation("tell me a long story")).text
    sched = Scheduler(engine).start()

    async def main():
        job = sched.submit(Request(prompt, SamplingParams(max_new_tokens=400), stream=True))
        await asyncio.wait_for(job.queue.get(), 60)  # it is decoding
        stopper = threading.Thread(target=sched.stop)
        stopper.start()
        items = await collect(job, timeout=30)
        stopper.join()
        return items

    items = run_async(main)
    assert isinstance(items[-1], RuntimeError) and "shutting down" in str(items[-1])
    assert sched.stats["cancelled"] == 1
