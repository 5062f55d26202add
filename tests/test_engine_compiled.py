"""Compiled decoding (SELFID_DECODE=compiled, issue 24): which mode an engine picks, and how it falls back.

On the CPU `compiled` decodes eagerly (its step is captured in CUDA graphs, which need CUDA). The selection and
fallback logic is tested here by putting an engine in compiled mode by hand, with `static.compile_step` replaced:
a compiler that gives the step as it is (the check passes; rows join and leave through compiled steps), one whose
step is wrong (the start-up check refuses it), one that fails (refused, the reason kept), one that keeps the weights
it was compiled with as inductor's freezing does (compiled again when the model changes). In every case the replies
are eager decoding's. The slow tests compile the step with inductor on the CPU: it passes the start-up check, freezing
(SELFID_COMPILE_FREEZING=1; off by default)
makes one matrix product of q, k and v and one of gate and up, and a frozen step follows weights changed in place
(compiled again, the old step's weights freed).
"""

import gc
import logging
import re
import shutil

import pytest
import torch
from torch._dynamo.utils import counters
from torch.utils._python_dispatch import TorchDispatchMode

from selfid.engine import InProcessEngine, Request, SamplingParams, static, static_check
from selfid.engine.inprocess import resolve_decode
from selfid.errors import SelfidError
from selfid.model.chat import conversation
from selfid.model.load import load_model
from selfid.train.scale import apply_scale
from tests.serve_helpers import make_adapter

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

    def as_is(fn, device):
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
    def off(fn, device):
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
    def broken(fn, device):
        def step(tok, pos):
            raise RuntimeError("triton is not installed\nsecond line")
        return step

    engine = _compiled_engine(tiny, monkeypatch, broken)
    got = engine.generate(requests(prompts))
    assert ids(got) == ids(InProcessEngine(tiny, decode="eager").generate(requests(prompts)))
    report = engine.decode_report()
    assert report["compiled_refused"] == "compiling the decode step failed (RuntimeError: triton is not installed)"
    assert report["using"] == "static"


def frozen(compiles: list):
    """A stand-in for static.compile_step that does what inductor's freezing does to the step: it computes with the
    weights (parameters and buffers) as they were when it was compiled."""
    def compile_step(fn, device):
        model = fn.__self__.model
        values = {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]}
        compiles.append(values)

        def step(tok, pos):
            with torch.nn.utils.stateless._reparametrize_module(model, values):
                return fn(tok, pos)
        return step
    return compile_step


@pytest.mark.parametrize("change", ["weights changed in place", "the adapter's scale"])
def test_a_step_with_frozen_weights_is_compiled_again_when_the_model_changes(tiny_model_dir, tmp_path, prompts,
                                                                             monkeypatch, selfid_home, change):
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", seed=1) if "adapter" in change else None
    loaded = load_model(str(tiny_model_dir), adapter=adapter, device="cpu", dtype="float32", progress=False)
    compiles = []
    monkeypatch.setenv("SELFID_COMPILE_FREEZING", "1")  # the setting under which a step keeps its weights
    engine = _compiled_engine(loaded, monkeypatch, frozen(compiles))
    before = ids(engine.generate(requests(prompts)))
    assert engine.decode_report()["using"] == "compiled" and len(compiles) == 1
    if adapter is None:
        with torch.no_grad():  # same storage, new values: what an optimizer step or load_state_dict does
            for layer in loaded.model.model.layers:
                layer.self_attn.q_proj.weight.mul_(3.0)
                layer.mlp.up_proj.weight.mul_(-1.0)
    else:
        apply_scale(loaded.model, 4.0)
    want = ids(InProcessEngine(loaded, decode="eager").generate(requests(prompts)))
    assert want != before  # the change shows in the replies
    assert ids(engine.generate(requests(prompts))) == want
    assert len(compiles) == 2 and engine.decode_report()["stats"]["compiled_steps"] > 0


needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                    reason="inductor needs a C++ compiler on the CPU (none found)")


@pytest.mark.slow
@needs_compiler
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


# the matrix products in inductor's generated code: cuBLAS / BLAS calls, or MKL's and oneDNN's linear (frozen weights
# on the CPU are packed for them)
PRODUCT = re.compile(r"extern_kernels\.(?:mm|addmm|bmm|baddbmm)\(|torch\.ops\.mkl\._mkl_linear\.default\("
                     r"|torch\.ops\.mkldnn\._linear_pointwise\.(?:default|binary)\(")


class Products(TorchDispatchMode):
    """The matrix products an uncompiled step runs."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.overloadpacket.__name__ in ("mm", "addmm", "bmm", "baddbmm", "linear", "matmul")
        return func(*args, **(kwargs or {}))


def _one_row(decoder, code: bool = True):
    """One decode step of one row: the uncompiled step's logits and products, the compiled step's logits and (`code`)
    its generated code. Getting the code resets dynamo, which would forget a stale graph: not for a step that must
    show it is not served one."""
    from torch._inductor.utils import run_and_get_code

    with torch.inference_mode():
        decoder.acquire()
        decoder.reserve(1, 64)
        tok, pos = torch.tensor([[5]]), torch.tensor([[3]])
        decoder.kv.rows, decoder.kv.cols = None, pos
        with Products() as products:
            want = decoder._decode_step(tok, pos)
        got, generated = run_and_get_code(decoder._forward, tok, pos) if code else (decoder._forward(tok, pos), [])
        decoder.release()
    return want, products.count, got, "\n".join(generated)


@pytest.mark.slow
@needs_compiler
def test_freezing_makes_one_matrix_product_of_q_k_v_and_one_of_gate_up(tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    engine = InProcessEngine(tiny, decode="static")
    found = {}
    for freezing in ("0", "1"):
        monkeypatch.setenv("SELFID_COMPILE_FREEZING", freezing)
        decoder = static.SlotDecoder(engine.model, tiny.device, engine.context_window, graphs=False, compiled=True)
        want, eager, got, code = _one_row(decoder)
        assert decoder.compile_error is None and decoder.stats["compiled_steps"] == 1, decoder.compile_error
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        found[freezing] = eager, len(PRODUCT.findall(code))
    layers = tiny.model.config.num_hidden_layers
    per_layer = 7  # q, k, v, o, gate, up, down; and the head
    assert found["0"] == (per_layer * layers + 1, per_layer * layers + 1), found
    # frozen: q/k/v one product (3 -> 1), gate/up one (2 -> 1)
    assert found["1"] == (per_layer * layers + 1, (per_layer - 3) * layers + 1), found


@pytest.mark.slow
@needs_compiler
def test_a_frozen_step_follows_weights_changed_in_place(tiny_model_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("SELFID_COMPILE_FREEZING", "1")
    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="float32", progress=False)  # its own weights to change
    engine = InProcessEngine(loaded, decode="static")
    decoder = static.SlotDecoder(engine.model, loaded.device, engine.context_window, graphs=False, compiled=True)
    _, _, old, _ = _one_row(decoder)
    step, constants = decoder._step_fn, _frozen_constants()
    with torch.no_grad():  # the concatenated q/k/v and gate/up weights are copies the compiled step made
        for layer in loaded.model.model.layers:
            layer.self_attn.k_proj.weight.mul_(3.0)
            layer.mlp.gate_proj.weight.mul_(-1.0)
    want, _, got, _ = _one_row(decoder, code=False)
    assert decoder._step_fn is not step and decoder.compile_error is None and decoder.stats["compiled_steps"] == 2
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, old, atol=1e-2)
    assert _frozen_constants() == constants  # the old step's weights were freed, not kept beside the new ones


def _frozen_constants() -> int:
    """Tensors alive that inductor's freezing made (the weights it folded: concatenated, packed)."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is torch.Tensor and getattr(o, "_is_frozen_param", False))
