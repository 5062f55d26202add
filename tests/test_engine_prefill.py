"""Long prompts are prefilled in chunks: the same tokens as a whole prefill, other rows decode between the chunks,
and a request cancelled during its prefill stops at the next chunk."""

import pytest

from selfid.engine import Request, SamplingParams
from selfid.model.chat import conversation

CHUNK = 40


def long_prompt(tiny, words: int = 60) -> str:
    text = " ".join(f"word{i % 37} and more" for i in range(words))
    return tiny.chat.render(conversation(f"Summarise this: {text}")).text


@pytest.fixture(scope="module", params=["eager", "static", "static-ahead"])
def make_engine(tiny, request):
    """Engines over the tiny model decoding as the param says, with the prefill chunk given."""
    from selfid.engine import InProcessEngine

    def make(chunk: int):
        eng = InProcessEngine(tiny, decode=request.param.split("-")[0], prefill_chunk=chunk)
        eng.run_ahead = request.param.endswith("-ahead")
        eng.generate(["hi"], SamplingParams(max_new_tokens=1))  # the static decoder's start-up check runs now
        return eng

    return make


def counting(engine) -> list[int]:
    """Record the width of every forward pass the engine runs (prefill chunks are wider than one token)."""
    widths: list[int] = []
    forward = engine._forward

    def counted(cache, adapter_names, **inputs):
        widths.append(inputs["input_ids"].shape[1])
        return forward(cache, adapter_names, **inputs)

    engine._forward = counted
    return widths


def test_a_prompt_prefilled_in_chunks_gives_the_tokens_a_whole_prefill_gives(make_engine, tiny):
    prompts = [long_prompt(tiny, 12), long_prompt(tiny, 25), tiny.chat.render(conversation("hi")).text]
    chunked, whole = make_engine(CHUNK), make_engine(100_000)
    lengths = [len(chunked.encode(p)) for p in prompts]
    assert max(lengths) > 8 * CHUNK and min(lengths) < CHUNK  # several chunks, and a row short enough to skip them
    params = SamplingParams(max_new_tokens=12)
    widths = counting(chunked)
    got = [r.completions[0].token_ids for r in chunked.generate(prompts, params)]
    assert max(widths) <= CHUNK  # no forward pass ran more columns than a chunk
    assert got == [r.completions[0].token_ids for r in whole.generate(prompts, params)]


def test_short_requests_decode_between_the_chunks_of_a_long_prompt(make_engine, tiny):
    engine = make_engine(CHUNK)
    long = Request(long_prompt(tiny, 28), SamplingParams(max_new_tokens=2), stream=True)
    short = Request(tiny.chat.render(conversation("hi")).text, SamplingParams(max_new_tokens=3))
    chunks = -(-len(engine.encode(long.prompt)) // CHUNK)
    assert chunks >= 10
    joined = []

    def admit(free_rows):  # the short request arrives while the long prompt's first chunk has run
        if joined:
            return []
        joined.append(short)
        return [short]

    widths = counting(engine)
    order = []
    for ev in engine.events([long], admit=admit):
        order.append((ev.request, ev.finished is not None, len([w for w in widths if w > 1])))
    short_done = next(prefills for request, finished, prefills in order if request == 1 and finished)
    assert short_done < chunks  # the short request finished while the long prompt was still being prefilled
    assert order[0][0] == 1  # and nothing of the long one came out before it
    assert [r for r, finished, _ in order if finished] == [1, 0]


def test_a_request_cancelled_during_its_prefill_stops_at_the_next_chunk(make_engine, tiny):
    engine = make_engine(CHUNK)
    long = Request(long_prompt(tiny, 28), SamplingParams(max_new_tokens=4))
    chunks = -(-len(engine.encode(long.prompt)) // CHUNK)
    widths = counting(engine)
    forward = engine._forward

    def cancel_after_two(cache, adapter_names, **inputs):
        out = forward(cache, adapter_names, **inputs)
        if len(widths) == 2:
            long.cancel()  # the client left after two chunks
        return out

    engine._forward = cancel_after_two
    [result] = engine.generate([long])
    assert result.completions[0].finish_reason == "cancelled" and result.completions[0].token_ids == []
    assert len(widths) == 2 < chunks


def test_a_cancelled_row_leaves_a_prefill_whose_other_rows_go_on(make_engine, tiny):
    engine, whole = make_engine(CHUNK), make_engine(100_000)
    params = SamplingParams(max_new_tokens=6)
    gone, kept = Request(long_prompt(tiny, 20), params), Request(long_prompt(tiny, 18), params)
    widths = counting(engine)
    forward = engine._forward

    def cancel_one(cache, adapter_names, **inputs):
        out = forward(cache, adapter_names, **inputs)
        if len(widths) == 3:
            gone.cancel()
        return out

    engine._forward = cancel_one
    results = engine.generate([gone, kept])
    assert results[0].completions[0].finish_reason == "cancelled"
    assert results[1].completions[0].token_ids == whole.generate([kept.prompt], params)[0].completions[0].token_ids
