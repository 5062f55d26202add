"""The in-process engine: batching with left padding, stops, budgets, seeds, streaming, logprobs."""

import pytest
import torch

from selfid.engine import Request, SamplingParams
from selfid.errors import SelfidError
from selfid.model.chat import conversation

QUESTIONS = ["hi", "你是谁？请详细介绍一下你自己。", "Who are you?", "Tell me about the quick brown fox and the lazy dog."]


@pytest.fixture(scope="module", params=["eager", "static", "static-ahead"])
def engine(tiny, request):
    """Every test here runs against eager decoding, against decoding from the static slot cache, and against
    that with each step queued before the previous step's tokens are read back (what CUDA does)."""
    from selfid.engine import InProcessEngine

    eng = InProcessEngine(tiny, decode=request.param.split("-")[0])
    eng.run_ahead = request.param.endswith("-ahead")
    return eng


@pytest.fixture(scope="module")
def prompts(tiny):
    return [tiny.chat.render(conversation(q)).text for q in QUESTIONS]


def test_batched_greedy_equals_one_by_one(engine, prompts):
    params = SamplingParams(max_new_tokens=16)
    lengths = {len(engine.encode(p)) for p in prompts}
    assert len(lengths) == len(prompts)  # different lengths, so the batch really is left-padded
    batched = engine.generate(prompts, params)
    alone = [engine.generate([p], params)[0] for p in prompts]
    assert [r.completions[0].token_ids for r in batched] == [r.completions[0].token_ids for r in alone]


def test_greedy_matches_a_plain_forward_argmax(engine, tiny, prompts):
    ids = engine.encode(prompts[2])
    got = engine.generate([prompts[2]], SamplingParams(max_new_tokens=5))[0].completions[0].token_ids
    seq = list(ids)
    with torch.no_grad():
        for _ in range(5):
            seq.append(int(tiny.model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert got == seq[len(ids):]


def test_max_new_tokens_is_honoured(engine, prompts):
    for n in (1, 7):
        r = engine.generate([prompts[0]], SamplingParams(max_new_tokens=n))[0]
        c = r.completions[0]
        assert len(c.token_ids) == n and c.finish_reason == "length" and r.completion_tokens == n
        assert r.prompt_tokens == len(engine.encode(prompts[0]))


def test_stop_string_cuts_the_text_and_finishes_with_stop(engine, prompts):
    full = engine.generate([prompts[1]], SamplingParams(max_new_tokens=24))[0].text
    stop = full[6:9]
    assert stop and full.find(stop) == 6
    c = engine.generate([prompts[1]], SamplingParams(max_new_tokens=24, stop=(stop, "never-seen")))[0].completions[0]
    assert c.text == full[:6] and c.finish_reason == "stop"
    assert len(c.token_ids) < 24


def test_eos_finishes_with_stop_and_is_not_in_the_text(engine, prompts, monkeypatch):
    first = engine.generate([prompts[0]], SamplingParams(max_new_tokens=3))[0].completions[0].token_ids
    monkeypatch.setattr(engine, "eos", {first[1]})
    c = engine.generate([prompts[0]], SamplingParams(max_new_tokens=10))[0].completions[0]
    assert c.finish_reason == "stop" and c.token_ids == first[:2]
    assert c.text == engine.tokenizer.decode(first[:1])


def test_seed_makes_sampling_repeatable_whatever_shares_the_batch(engine, prompts):
    p = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=12, seed=1234)
    a = engine.generate([prompts[2]], p)[0].text
    b = engine.generate([prompts[0], prompts[2], prompts[3]], p)[1].text
    c = engine.generate([prompts[2]], SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=12, seed=99))[0].text
    assert a == b
    assert a != c


def test_n_samples_differ_and_are_each_counted(engine, prompts):
    r = engine.generate([Request(prompts[2], SamplingParams(temperature=1.0, max_new_tokens=10, n=3, seed=7))])[0]
    assert len(r.completions) == 3 and len({c.text for c in r.completions}) > 1
    assert r.completion_tokens == sum(len(c.token_ids) for c in r.completions) == 30


def test_rows_keep_their_own_parameters_in_one_batch(engine, prompts):
    greedy = engine.generate([prompts[3]], SamplingParams(max_new_tokens=8))[0].completions[0]
    mixed = engine.generate([Request(prompts[3], SamplingParams(temperature=1.5, max_new_tokens=20, seed=3)),
                             Request(prompts[3], SamplingParams(max_new_tokens=8))])
    assert mixed[1].completions[0].token_ids == greedy.token_ids
    hot = mixed[0].completions[0]
    assert hot.token_ids[:8] != greedy.token_ids and len(hot.token_ids) > 8


def test_streaming_deltas_add_up_to_the_final_text(engine, prompts):
    params = SamplingParams(max_new_tokens=20)
    deltas = list(engine.stream(prompts[1], params))
    assert len(deltas) > 1
    assert "".join(deltas) == engine.generate([prompts[1]], params)[0].text


def test_streamed_text_equals_the_whole_decode_for_sampled_replies(engine, tiny, prompts):
    """Text is streamed from an incremental detokenizer; at a high temperature the tiny byte-level tokenizer
    emits partial multi-byte characters, and the deltas must still add up to decoding the ids whole."""
    for seed in range(12):
        params = SamplingParams(max_new_tokens=24, temperature=1.6, seed=seed)
        events = list(engine.events([Request(prompts[1], params, stream=True)]))
        done = events[-1].finished
        assert "".join(e.delta for e in events) == done.text
        ids = done.token_ids[:-1] if done.finish_reason == "stop" else done.token_ids
        assert done.text == tiny.tokenizer.decode(ids, skip_special_tokens=True)


def test_streaming_does_not_decode_the_whole_reply_each_step(engine, prompts, monkeypatch):
    calls = []
    real = engine.tokenizer.decode
    monkeypatch.setattr(engine.tokenizer, "decode", lambda ids, **kw: calls.append(len(ids)) or real(ids, **kw))
    deltas = list(engine.stream(prompts[1], SamplingParams(max_new_tokens=20)))
    assert len(deltas) > 1
    assert len(calls) == 1  # the final text only


def test_streaming_never_emits_part_of_a_stop_string(engine, prompts):
    full = engine.generate([prompts[3]], SamplingParams(max_new_tokens=24))[0].text
    stop = full[8:12]
    deltas = list(engine.stream(prompts[3], SamplingParams(max_new_tokens=24, stop=(stop,))))
    assert "".join(deltas) == full[:full.find(stop)]


def test_cancelled_request_stops_early(engine, prompts):
    req = Request(prompts[0], SamplingParams(max_new_tokens=50), stream=True)
    events = engine.events([req])
    next(e for e in events if e.delta)
    req.cancel()
    last = [e for e in events if e.finished][-1].finished
    assert last.finish_reason == "cancelled" and len(last.token_ids) < 50


def test_logprobs_match_the_model(engine, tiny, prompts):
    r = engine.generate([Request(prompts[2], SamplingParams(max_new_tokens=3, logprobs=2))])[0].completions[0]
    ids = engine.encode(prompts[2])
    with torch.no_grad():
        lp = tiny.model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
    first = r.logprobs[0]
    assert first.token_id == r.token_ids[0]
    assert first.logprob == pytest.approx(float(lp[first.token_id]), abs=1e-4)
    assert [t for t, _ in first.top] == lp.topk(2).indices.tolist()


def test_prompt_longer_than_the_context_window_is_rejected(engine):
    with pytest.raises(SelfidError, match="context window is 512"):
        engine.generate([[5 + i % 400 for i in range(600)]], SamplingParams(max_new_tokens=2))


def test_budget_is_clamped_to_the_context_window(engine):
    r = engine.generate([[5 + i % 400 for i in range(500)]], SamplingParams(max_new_tokens=100))[0]
    assert r.completion_tokens == 12 and r.completions[0].finish_reason == "length"


def test_bad_sampling_params_are_rejected():
    for kw, match in [({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"n": 0}, "n must"),
                      ({"max_new_tokens": 0}, "max_new_tokens"), ({"stop": ("",)}, "stop")]:
        with pytest.raises(SelfidError, match=match):
            SamplingParams(**kw)


def test_defaults_come_from_the_model_and_overrides_win(tiny):
    p = SamplingParams.from_defaults(tiny.generation_defaults, temperature=0.0, top_p=None, stop="x")
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty, p.stop) == (0.0, 0.8, 20, 1.05, ("x",))


@pytest.mark.parametrize("decode", ["eager", "static"])
def test_running_a_step_ahead_changes_no_reply(tiny, prompts, decode):
    """Queuing the next step before knowing which rows finished (then dropping them) gives the same replies,
    finish reasons and token counts as the step-by-step order, with rows finishing at different steps through
    end of sequence, budgets and stop strings, and rows joining the batch while it decodes."""
    from selfid.engine import InProcessEngine

    def requests():
        reqs = [Request(p, SamplingParams(max_new_tokens=6 + 5 * i, temperature=0.9 if i % 2 else 0.0, seed=i,
                                          top_k=20, repetition_penalty=1.1), stream=i == 1)
                for i, p in enumerate(prompts)]
        reqs.append(Request(prompts[3], SamplingParams(max_new_tokens=30, stop=("o",))))
        return reqs

    def run(ahead):
        eng = InProcessEngine(tiny, decode=decode)
        eng.run_ahead = ahead
        late = [Request(prompts[2], SamplingParams(max_new_tokens=12, temperature=1.0, seed=7, n=2))]
        done = {}
        for ev in eng.events(requests(), admit=lambda free: [late.pop()] if late else []):
            if ev.finished is not None:
                done[(ev.request, ev.index)] = (ev.finished.text, ev.finished.token_ids, ev.finished.finish_reason)
        return done

    steady, ahead = run(False), run(True)
    assert len(steady) == 7 and {r for _, _, r in steady.values()} >= {"length"}
    assert ahead == steady


def test_the_step_run_after_a_rows_last_token_needs_no_larger_cache(tiny):
    """A row whose prompt and budget fill the cache's columns exactly: the extra step run ahead after its last
    token feeds that token at the row's last reserved column, so it must fit in what the prefill reserved (a
    reallocation would also recapture every CUDA graph mid-decoding)."""
    from selfid.engine import InProcessEngine, static

    prompt = list(range(5, 5 + 40))
    budget = static.MIN_LENGTH - len(prompt)  # prompt + budget = 128 columns

    def reallocations(ahead):
        eng = InProcessEngine(tiny, decode="static")
        eng.run_ahead = ahead
        eng.eos = set()  # rows end at their budget only
        eng.warm()  # the start-up check allocates first; count from here
        before = eng.decode_report()["stats"]["reallocations"]
        done = eng.generate([Request(prompt, SamplingParams(max_new_tokens=budget))])[0].completions[0]
        assert len(done.token_ids) == budget and done.finish_reason == "length"
        stats = eng.decode_report()["stats"]
        return stats["reallocations"] - before, stats["plain_prefills"]

    during_prefill = reallocations(False)
    assert reallocations(True) == during_prefill
