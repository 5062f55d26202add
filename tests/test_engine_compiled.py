"""Compiled decoding (SELFID_DECODE=compiled, issue 24): which mode an engine picks, and how it falls back.

On the CPU `compiled` decodes eagerly (its step is captured in CUDA graphs, which need CUDA). The selection and
fallback logic is tested here by putting an engine in compiled mode by hand, with `static.compile_step` replaced:
a compiler that gives the step as it is (the check passes; rows join and leave through compiled steps), one whose
step is wrong (the start-up check refuses it), one that fails (refused, the reason kept). In every case the replies
are eager decoding's. The slow test compiles the step with inductor on the CPU and runs the start-up check on it.
"""

import logging
import shutil

import pytest
import torch
from torch._dynamo.utils import counters

from selfid.engine import InProcessEngine, Request, SamplingParams, static, static_check
from selfid.engine.inprocess import resolve_decode
from selfid.errors import SelfidError
from selfid.model.chat import conversation

QUESTIONS = ["hi", "你是谁？请详细介绍一下你自己。", "Who are you?", "Tell me about the quick brown fox and the lazy dog."]


@pytest.fixture(scope="module")
def prompts(tiny):
    return [tiny.chat.render(conversation(q)).text for q in QUESTIONS]


def requests(prompts):
    """Rows finishing at different steps (the batch shrinks bucket by bucket), greedy and seeded samples."""
    kinds = [dict(), dict(temperature=1.0, top_p=0.9, seed=7), dict(temperature=0.8, top_k=5, seed=3, n=3),
             dict(repetition_penalty=1.3)]
    return [Request(p, SamplingParams(max_new_tokens=3 + 4 * i, **kinds[i % len(kinds)])) for i, p in enumerate(prompts)]


def ids(results):
    return [[c.token_ids for c in r.completions] for r in results]


@pytest.mark.parametrize("asked, cuda, mode, why", [
    ("auto", True, "graph", None), ("auto", False, "eager", None),
    ("compiled", True, "compiled", None), ("compiled", False, "eager", "needs a CUDA device"),
    ("static", False, "static", None), ("eager", True, "eager", None),
])
def test_the_mode_an_engine_starts_with(asked, cuda, mode, why):
    got, reason = resolve_decode(asked, cuda)
    assert got == mode and (reason is None if why is None else why in reason)


def test_unknown_modes_and_graphs_without_cuda_are_errors():
    with pytest.raises(SelfidError, match="not one of auto, eager, static, graph, compiled"):
        resolve_decode("fast", True)
    with pytest.raises(SelfidError, match="needs a CUDA device"):
        resolve_decode("graph", False)


def test_compiled_on_the_cpu_decodes_eagerly_and_says_so_once(tiny, prompts, caplog):
    with caplog.at_level(logging.WARNING, logger="selfid.engine"):
        engine = InProcessEngine(tiny, decode="compiled")
        got = engine.generate(requests(prompts))
    assert ids(got) == ids(InProcessEngine(tiny, decode="eager").generate(requests(prompts)))
    report = engine.decode_report()
    assert report["asked"] == "compiled" and report["using"] == "eager" and "CUDA" in report["reason"]
    said = [r.getMessage() for r in caplog.records if r.name == "selfid.engine"]
    assert len(said) == 1 and "compiled decoding is off" in said[0] and "decoding eagerly" in said[0]


def _compiled_engine(tiny, monkeypatch, compiler):
    """An engine in compiled mode on the CPU, `compiler` standing in for static.compile_step."""
    monkeypatch.setattr(static, "compile_step", compiler)
    engine = InProcessEngine(tiny, decode="static")
    engine.decode_mode = "compiled"
    engine.decode_info["asked"] = "compiled"
    return engine


def test_a_step_compiled_right_decodes_every_row_as_eager_rows_joining_and_leaving(tiny, prompts, monkeypatch,
                                                                                   selfid_home):
    calls = []

    def as_is(fn):
        def step(tok, pos):
            calls.append(tok.shape[0])
            return fn(tok, pos)
        return step

    engine = _compiled_engine(tiny, monkeypatch, as_is)
    got = engine.generate(requests(prompts))
    assert ids(got) == ids(InProcessEngine(tiny, decode="eager").generate(requests(prompts)))
    report = engine.decode_report()
    assert report["using"] == "compiled" and report["check"]["plain_vs_eager"] < 1e-3
    assert report["stats"]["compiled_steps"] == len(calls) > 0 and report["stats"]["moves"] > 0
    assert set(calls) <= {1, 2, 4, 8} and len(set(calls)) > 1  # the buckets shrink as rows leave
    assert "compile_cache" in report


def test_a_step_compiled_wrong_is_refused_by_the_check_and_graphs_decode_instead(tiny, prompts, monkeypatch, caplog,
                                                                                  selfid_home):
    def off(fn):
        return lambda tok, pos: fn(tok, pos) + 3.0 * torch.randn(tok.shape[0], tiny.model.config.vocab_size)

    engine = _compiled_engine(tiny, monkeypatch, off)
    with caplog.at_level(logging.WARNING, logger="selfid.engine"):
        got = engine.generate(requests(prompts))
    assert ids(got) == ids(InProcessEngine(tiny, decode="eager").generate(requests(prompts)))
    report = engine.decode_report()
    assert "logits differ" in report["compiled_refused"] and report["using"] == "static"  # "graph" on the CPU
    assert report["stats"]["compiled_steps"] == 0 and "compile_cache" not in report
    said = [r.getMessage() for r in caplog.records if r.name == "selfid.engine"]
    assert len(said) == 1 and "compiled decoding is off" in said[0] and "uncompiled" in said[0]


def test_a_step_that_fails_to_compile_is_refused_with_the_reason(tiny, prompts, monkeypatch, selfid_home):
    def broken(fn):
        def step(tok, pos):
            raise RuntimeError("triton is not installed\nsecond line")
        return step

    engine = _compiled_engine(tiny, monkeypatch, broken)
    got = engine.generate(requests(prompts))
    assert ids(got) == ids(InProcessEngine(tiny, decode="eager").generate(requests(prompts)))
    report = engine.decode_report()
    assert report["compiled_refused"] == "compiling the decode step failed (RuntimeError: triton is not installed)"
    assert report["using"] == "static"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="inductor needs a C++ compiler on the CPU (none found)")
def test_the_decode_step_compiled_by_inductor_passes_the_start_up_check(tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    engine = InProcessEngine(tiny, decode="static")
    decoder = static.SlotDecoder(engine.model, tiny.device, engine.context_window, graphs=False,
                                 prefer_slots=engine.max_batch_size, compiled=True)
    shapes = set()
    compiled_step = decoder._compiled

    def seen(tok, pos):  # the (rows, cache length) of every step given to the compiled function (outside it)
        shapes.add((tok.shape[0], decoder.length))
        return compiled_step(tok, pos)

    decoder._compiled = seen
    graphs = counters["stats"]["unique_graphs"]
    reason, info = static_check.check(engine, decoder)
    assert reason is None and decoder.compile_error is None, (reason, decoder.compile_error)
    assert decoder.stats["compiled_steps"] > 0 and info["plain_vs_eager"] < 1e-4
    with torch.inference_mode():  # every other bucket, compiled against uncompiled
        decoder.reserve(32, decoder.length)
        for n in (1, 8, 16, 32):
            tok, pos = torch.arange(n).view(n, 1) + 5, torch.full((n, 1), 3)
            decoder.kv.rows, decoder.kv.cols = None, pos
            torch.testing.assert_close(decoder._forward(tok, pos), decoder._decode_step(tok, pos), atol=1e-4, rtol=1e-4)
    # automatic dynamic shapes: the buckets seen first and one row specialised, one graph for all others, not one
    # graph per bucket
    compiled = counters["stats"]["unique_graphs"] - graphs
    assert len(shapes) == 6 and compiled <= 3, (compiled, sorted(shapes))
