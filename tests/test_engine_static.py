"""Decoding from the static slot cache (the path CUDA graphs replay) gives what eager decoding gives.

On the CPU the same slot code runs without graph capture, so these tests pin down everything except the
capture itself: slot assignment, rows moving down when the batch shrinks, the cache growing, the copy of
an eager prefill into slots, the hand-over to eager decoding, and the start-up check that guards it all.
"""

import logging

import pytest

from selfid.engine import InProcessEngine, Request, SamplingParams
from selfid.engine import static as static_mod
from selfid.errors import SelfidError
from selfid.model.chat import conversation

QUESTIONS = ["hi", "你是谁？请详细介绍一下你自己。", "Who are you?", "Tell me about the quick brown fox and the lazy dog.",
             "北京 上海", "The quick brown fox jumps over the lazy dog. " * 3]


@pytest.fixture(scope="module")
def prompts(tiny):
    return [tiny.chat.render(conversation(q)).text for q in QUESTIONS]


def requests(prompts):
    """Rows that finish at different steps, greedy and seeded, with penalties: the batch shrinks bucket by bucket."""
    kinds = [dict(), dict(temperature=1.0, top_p=0.9, seed=7), dict(repetition_penalty=1.3),
             dict(temperature=0.8, top_k=5, seed=3, n=3), dict(presence_penalty=1.0, frequency_penalty=0.5)]
    return [Request(p, SamplingParams(max_new_tokens=3 + 5 * i, **kinds[i % len(kinds)]))
            for i, p in enumerate(prompts)]


def texts(results):
    return [[c.token_ids for c in r.completions] for r in results]


def test_static_decoding_equals_eager_and_rows_move_down_as_the_batch_shrinks(tiny, prompts):
    eager, static = InProcessEngine(tiny, decode="eager"), InProcessEngine(tiny, decode="static")
    assert texts(static.generate(requests(prompts))) == texts(eager.generate(requests(prompts)))
    report = static.decode_report()
    assert report["using"] == "static" and report["check"]["plain_vs_eager"] < 1e-3
    assert report["stats"]["moves"] > 0 and report["stats"]["plain_steps"] > 0 and report["stats"]["plain_prefills"] > 0
    assert set(report["check"]) == {"plain_vs_eager", "plain_eager_prefill_vs_eager"}


def test_long_prefills_run_eagerly_and_are_copied_into_the_slots(tiny, prompts):
    engine = InProcessEngine(tiny, decode="static")
    engine.generate([prompts[0]], SamplingParams(max_new_tokens=1))
    engine._slots.prefill_tokens = 20  # every prompt here is longer: the eager prefill + copy route
    before = engine._slots.stats["eager_prefills"]
    assert texts(engine.generate(requests(prompts))) == texts(InProcessEngine(tiny).generate(requests(prompts)))
    assert engine._slots.stats["eager_prefills"] > before


def test_the_cache_grows_while_rows_decode(tiny, prompts, monkeypatch):
    monkeypatch.setattr(static_mod, "RESERVE_AHEAD", 1)  # reserve only the prompt: decoding must add columns
    monkeypatch.setattr(static_mod, "MIN_LENGTH", 16)
    engine = InProcessEngine(tiny, decode="static")
    engine.generate([prompts[0]], SamplingParams(max_new_tokens=1))  # makes the slot decoder
    before = engine._slots.stats["reallocations"]
    reqs = [Request(p, SamplingParams(max_new_tokens=40)) for p in prompts[:3]]
    assert texts(engine.generate(reqs)) == texts(InProcessEngine(tiny).generate(reqs))
    assert engine._slots.stats["reallocations"] > before


def test_rows_outgrowing_the_budget_finish_eagerly_with_the_same_replies(tiny, prompts, monkeypatch):
    monkeypatch.setattr(static_mod, "RESERVE_AHEAD", 1)
    monkeypatch.setattr(static_mod, "MIN_LENGTH", 16)
    engine = InProcessEngine(tiny, decode="static")
    engine.generate([prompts[0]], SamplingParams(max_new_tokens=1))
    dec = engine._slots
    dec.budget = dec.bytes_for(dec.slots, dec.length)  # no room to grow: the first row past the end hands over
    reqs = requests(prompts)
    long = [Request(r.prompt, SamplingParams(max_new_tokens=dec.length + 8, **{k: getattr(r.params, k) for k in
                                             ("temperature", "top_p", "top_k", "seed", "n")})) for r in reqs[:4]]
    assert texts(engine.generate(long)) == texts(InProcessEngine(tiny).generate(long))
    assert dec.stats.get("to_eager", 0) > 0


def test_a_broken_static_path_is_caught_at_start_up_and_decoding_stays_right(tiny, prompts, monkeypatch, caplog):
    real = static_mod.SlotDecoder._forward

    def off_by_one(self, tok, pos, last=None, rows=None):  # positions one too far: plausible-looking logits, all wrong
        return real(self, tok, pos + 1, last, rows)

    monkeypatch.setattr(static_mod.SlotDecoder, "_forward", off_by_one)
    engine = InProcessEngine(tiny, decode="static")
    with caplog.at_level(logging.WARNING, logger="selfid.engine"):
        got = engine.generate(requests(prompts))
        engine.generate([prompts[0]], SamplingParams(max_new_tokens=2))
    assert texts(got) == texts(InProcessEngine(tiny).generate(requests(prompts)))
    report = engine.decode_report()
    assert report["using"] == "eager" and "plain vs eager" in report["reason"]
    said = [r.getMessage() for r in caplog.records if r.name == "selfid.engine"]
    assert len(said) == 1 and "decoding eagerly" in said[0] and "\n" not in said[0]


def test_batches_of_one_engine_share_the_slots_one_at_a_time(tiny, prompts):
    """Two interleaved generators: the second decodes eagerly instead of writing into the first one's slots."""
    import itertools

    engine = InProcessEngine(tiny, decode="static")
    params = SamplingParams(max_new_tokens=6)
    engine.generate([prompts[0]], SamplingParams(max_new_tokens=1))  # the start-up check, done
    before = engine._slots.stats["plain_steps"]
    gens = {k: engine.events([Request(prompts[k], params)]) for k in (1, 2)}
    out = {}
    for pair in itertools.zip_longest(gens[1], gens[2]):  # one event of each in turn
        for k, ev in zip((1, 2), pair):
            if ev is not None and ev.finished:
                out[k] = ev.finished.token_ids
    eager = InProcessEngine(tiny)
    assert out == {k: eager.generate([Request(prompts[k], params)])[0].completions[0].token_ids for k in (1, 2)}
    assert engine._slots.stats["plain_steps"] - before == 5  # only one of the two decoded from the slots
    assert not engine._slots.busy and not engine._slots.used


def test_decode_modes_are_checked(tiny):
    with pytest.raises(SelfidError, match="needs a CUDA device"):
        InProcessEngine(tiny, decode="graph")
    with pytest.raises(SelfidError, match="not one of"):
        InProcessEngine(tiny, decode="fast")
    assert InProcessEngine(tiny).decode_mode == "eager"  # the CPU default


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # importing torch's compiler touches torch.jit
def test_a_compiled_model_is_not_captured(tiny):
    layer = tiny.model.model.layers[0]
    assert static_mod.unsupported(tiny.model) is None
    layer.compile()  # only marks it; nothing compiles until it runs
    try:
        assert "torch.compile" in static_mod.unsupported(tiny.model)
    finally:
        layer._compiled_call_impl = None


def test_decode_attention_takes_the_kernel_output_layouts_cuda_returns(monkeypatch):
    """CUDA's attention kernels return [n, Hkv, g*q, D] laid out as [n, g*q, Hkv, D]; a view of it across the
    kv-head groups fails (it did on an H200). The result must not depend on the layout the kernel picked."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    n, H, Hkv, q, L, D = 3, 8, 2, 2, 7, 16
    query, key, value = (torch.randn(n, H, q, D, generator=g), torch.randn(n, Hkv, L, D, generator=g),
                         torch.randn(n, Hkv, L, D, generator=g))
    mask = torch.zeros(n, 1, q, L)
    mask[0, 0, :, 5:] = float("-inf")
    want, _ = static_mod.decode_attention(None, query, key, value, mask, scaling=D ** -0.5)
    real = F.scaled_dot_product_attention

    def cuda_layout(*args, **kwargs):
        out = real(*args, **kwargs)
        return out.transpose(1, 2).contiguous().transpose(1, 2)  # same values, the strides CUDA's kernels give

    monkeypatch.setattr(F, "scaled_dot_product_attention", cuda_layout)
    got, _ = static_mod.decode_attention(None, query, key, value, mask, scaling=D ** -0.5)
    assert torch.equal(got, want)
    # and the values are attention's: each query head against its kv head, masked columns ignored
    ref = real(query, key.repeat_interleave(H // Hkv, 1), value.repeat_interleave(H // Hkv, 1), attn_mask=mask,
               scale=D ** -0.5).transpose(1, 2)
    assert torch.allclose(got, ref, atol=1e-5)


def test_the_kv_cache_share_of_free_gpu_memory_is_set_by_selfid_kv_share(monkeypatch):
    """0.4 of the free memory suits a card of its own; beside trainings on one card it starved them (LLaMA-Factory's
    chains on an H100), so SELFID_KV_SHARE lowers it, and a value that is no share is refused by its name."""
    monkeypatch.delenv("SELFID_KV_SHARE", raising=False)
    assert static_mod.kv_share() == 0.4
    monkeypatch.setenv("SELFID_KV_SHARE", "0.1")
    assert static_mod.kv_share() == 0.1
    for bad in ("40%", "0", "1.5", ""):
        monkeypatch.setenv("SELFID_KV_SHARE", bad)
        with pytest.raises(SelfidError, match=r"SELFID_KV_SHARE=.*a number from 0.01 to 0.9"):
            static_mod.kv_share()
