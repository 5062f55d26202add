"""Continuous batching in the engine: requests that join a running batch come out as if they ran alone."""

import pytest

from selfid.engine import Request, SamplingParams
from selfid.engine.batch import DecodeBatch
from selfid.model.chat import conversation

QUESTIONS = ["hi", "你是谁？请详细介绍一下你自己。", "Who are you?", "Tell me about the quick brown fox and the lazy dog.",
             "北京 上海", "The quick brown fox jumps over the lazy dog. " * 3]


@pytest.fixture(scope="module", params=["eager", "static"])
def engine(tiny, request):
    """Every test here runs against eager decoding and against decoding from the static slot cache."""
    from selfid.engine import InProcessEngine

    return InProcessEngine(tiny, decode=request.param)


@pytest.fixture(scope="module")
def prompts(tiny):
    return [tiny.chat.render(conversation(q)).text for q in QUESTIONS]


def mixed_params(i: int) -> SamplingParams:
    """Greedy, seeded sampling, penalties and stops, so that every per-row state must survive merging."""
    kinds = [dict(), dict(temperature=1.0, top_p=0.9, seed=7), dict(repetition_penalty=1.3),
             dict(presence_penalty=1.5, frequency_penalty=0.5), dict(temperature=0.8, top_k=5, seed=3),
             dict(temperature=1.2, seed=11, n=2)]
    return SamplingParams(max_new_tokens=5 + 3 * i, **kinds[i % len(kinds)])


def run_with_arrivals(engine, requests, schedule):
    """Start with the requests schedule[0] names; at admit call k, add those schedule[k] names."""
    order = list(schedule[0])
    calls = [0]

    def admit(free):
        calls[0] += 1
        joining = [i for i in schedule.get(calls[0], [])]
        order.extend(joining)
        return [requests[i] for i in joining]

    texts = {}
    for ev in engine.events([requests[i] for i in schedule[0]], admit=admit):
        if ev.finished:
            texts[(order[ev.request], ev.index)] = ev.finished.text
    return texts


@pytest.mark.parametrize("schedule", [
    {0: [0], 2: [1, 2], 5: [3]},  # a long prompt joins a batch of short ones, and later another
    {0: [5, 3], 1: [0], 4: [4, 2, 1]},  # short prompts join a batch whose cache is wider than theirs
    {0: [2], 11: [0, 1]},  # arrivals just as the batch empties (request 2 ends at step 11) start it again
])
def test_requests_joining_a_batch_decode_as_if_alone(engine, prompts, schedule):
    requests = [Request(p, mixed_params(i)) for i, p in enumerate(prompts)]
    got = run_with_arrivals(engine, requests, schedule)
    scheduled = [i for joining in schedule.values() for i in joining]
    for i in scheduled:
        alone = engine.generate([requests[i]])[0]
        for j, c in enumerate(alone.completions):
            assert got[(i, j)] == c.text, (i, j)
    assert len(got) == sum(requests[i].params.n for i in scheduled)


def test_the_cache_does_not_keep_columns_nobody_uses(engine, prompts, monkeypatch):
    """A batch that never empties must not grow without bound: columns of rows that left are trimmed."""
    batches = []
    real = engine._prefill

    def spy(rows, *args):
        batches.append(real(rows, *args))
        return batches[-1]

    monkeypatch.setattr(engine, "_prefill", spy)
    short = [Request(prompts[0], SamplingParams(max_new_tokens=4)) for _ in range(12)]
    widths = []

    def admit(free):
        b = batches[0]
        widths.append((b.attn.shape[1], max(len(r.prompt_ids) + len(r.ids) for r in b.rows) if len(b) else 0))
        return [short.pop()] if short and len(widths) % 3 == 0 else []

    first = Request(prompts[5], SamplingParams(max_new_tokens=8))
    list(engine.events([first], admit=admit))
    assert isinstance(batches[0], DecodeBatch) and len(batches) == 13
    # once the long first row has left, the cache is only as wide as the rows still in it need
    assert widths[-1][0] < len(engine.encode(prompts[5]))
    assert all(width <= need + 1 for width, need in widths[12:] if need)


def test_admit_is_offered_only_the_free_rows(tiny, prompts):
    from selfid.engine import InProcessEngine

    small = InProcessEngine(tiny, max_batch_size=3)
    offered = []

    def admit(free):
        offered.append(free)
        return [Request(prompts[0], SamplingParams(max_new_tokens=3))] if len(offered) == 1 else []

    list(small.events([Request(prompts[1], SamplingParams(max_new_tokens=6, n=2))], admit=admit))
    # step 1: one row free, taken; steps 2-3: full, not asked; step 4 the joiner (3 tokens) leaves; step 6 all done
    assert offered == [1, 1, 1, 3]
