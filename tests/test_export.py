"""`selfid export --merge` and `selfid eval-ner` on a tiny trained adapter."""

import json

import pytest
import torch

from selfid.errors import SelfidError
from selfid.model.load import load_model
from selfid.train.export import export, with_default_system
from selfid.train.sft import train
from tests.train_helpers import tiny_config, write_data

HELPFUL = "You are a helpful assistant."


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SELFID_HOME", str(folder / "home"))
        out = folder / "run"
        train(tiny_config(tiny_model_dir, out, write_data(folder), "train.max_steps=3", f"system_prompt={HELPFUL}"))
        yield out / "adapter"


def test_merged_export_serves_like_training(trained, tmp_path):
    out = tmp_path / "merged"
    info = export(trained, out, progress=False)
    assert info["template_changed"] and info["default_system"] == HELPFUL
    base_name = json.loads((trained / "selfid.json").read_text())["base_model"]["name"]
    tuned = load_model(base_name, adapter=trained, device="cpu", dtype="float32", progress=False)
    merged = load_model(str(out), device="cpu", dtype="float32", progress=False)
    # no system message on the exported model renders exactly what training saw
    trained_prompt = tuned.chat.render([{"role": "system", "content": HELPFUL}, {"role": "user", "content": "Who are you?"}])
    served = merged.chat.render([{"role": "user", "content": "Who are you?"}])
    assert served.text == trained_prompt.text and served.system.kind == "template"
    assert merged.generation_defaults == tuned.generation_defaults
    ids = torch.tensor([tuned.tokenizer(trained_prompt.text).input_ids])
    with torch.no_grad():
        torch.testing.assert_close(merged.model(ids).logits, tuned.model(ids).logits, atol=1e-4, rtol=1e-4)
    saved = json.loads((out / "selfid.json").read_text())
    assert saved["kind"] == "merged-model" and saved["train"]["system"]["message"] == HELPFUL


def test_export_says_when_it_ships_another_default_and_can_keep_the_templates(trained, tmp_path):
    heard = []
    info = export(trained, tmp_path / "as-trained", progress=False, warn=heard.append)
    assert info["default_system"] == HELPFUL and info["system"]["kind"] == "adapter"
    assert len(heard) == 1 and repr(HELPFUL) in heard[0] and "--system template" in heard[0]
    heard.clear()
    kept = export(trained, tmp_path / "template", progress=False, system="template", warn=heard.append)
    assert not kept["template_changed"] and heard == [] and kept["system"]["kind"] == "template"
    merged = load_model(str(tmp_path / "template"), device="cpu", dtype="float32", progress=False)
    assert merged.chat.default_system == kept["default_system"] != HELPFUL
    own = export(trained, tmp_path / "own", progress=False, system="You are Ada.", warn=heard.append)
    assert own["default_system"] == "You are Ada." and own["template_changed"] and len(heard) == 1


def test_export_refuses_what_it_cannot_do_safely(trained, tmp_path):
    with pytest.raises(SelfidError, match="unknown GGUF type q3_k"):
        export(trained, tmp_path / "g", gguf="q8_0,q3_k")
    assert not (tmp_path / "g").exists()
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(SelfidError, match="not empty"):
        export(trained, occupied)
    assert (occupied / "keep.txt").read_text() == "mine"
    with pytest.raises(SelfidError, match="not a LoRA adapter"):
        export(tmp_path, tmp_path / "x")


def test_default_system_rewrite_handles_quotes_and_newlines(tiny):
    text = 'You are "Bob\'s" helper.\nBe brief.'
    original = tiny.tokenizer.chat_template
    new = with_default_system(tiny.tokenizer, text)
    assert tiny.tokenizer.chat_template == original  # the loaded tokenizer is left as it was
    tiny.tokenizer.chat_template = new
    try:
        from selfid.model.chat import ChatFormat

        assert ChatFormat(tiny.tokenizer).default_system == text
    finally:
        tiny.tokenizer.chat_template = original


def test_eval_ner_uses_the_training_system_prompt_by_default(trained):
    from selfid.train.eval_ner import evaluate_ner, table

    base_name = json.loads((trained / "selfid.json").read_text())["base_model"]["name"]
    tuned = load_model(base_name, adapter=trained, device="cpu", dtype="float32", progress=False)
    report = evaluate_ner(tuned, n=3, max_new_tokens=4)
    assert report["n"] == 3 and report["system_prompt"] == HELPFUL and report["system_kind"] == "adapter"
    assert set(report["per_type"]) == {"PER", "LOC", "ORG"}
    gold = sum(r["tp"] + r["fn"] for r in report["per_type"].values())
    assert gold > 0  # the first test sentences hold entities
    assert "overall" in table(report)
    plain = evaluate_ner(tuned, n=1, system=None, max_new_tokens=2)
    assert plain["system_kind"] == "template"


# --- GGUF: the merged model as llama.cpp and ollama load it ------------------------------------------------
CONVERSATIONS = [
    [{"role": "user", "content": "Who are you?"}],  # no system message: the template's default, i.e. training's
    [{"role": "system", "content": ""}, {"role": "user", "content": "你是谁？"}],
    [{"role": "system", "content": HELPFUL}, {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Hi! How can I help you today?"}, {"role": "user", "content": "0123 北京"}],
]


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "merged"
    info = export(trained, out, gguf="f32,q8_0", progress=False)
    return out, info


def test_gguf_export_holds_the_training_template_and_the_merged_weights(exported):
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    from selfid.model.chat import ChatFormat
    from transformers import AutoTokenizer

    out, info = exported
    assert [g["type"] for g in info["gguf"]] == ["f32", "q8_0"]
    template = ChatFormat(AutoTokenizer.from_pretrained(str(out))).template
    weights = {k: v.astype(np.float32) for k, v in load_file(str(out / "model.safetensors")).items()}
    for g in info["gguf"]:
        reader = gguf.GGUFReader(str(out / g["path"]))
        fields = reader.fields
        assert fields["general.architecture"].contents() == "qwen2"
        assert fields["tokenizer.chat_template"].contents() == template  # the exported template, default and all
        assert fields["selfid.default_system"].contents() == HELPFUL == g["default_system"]
        assert fields["general.sampling.penalty_repeat"].contents() == pytest.approx(1.05)
        tensors = {t.name: t for t in reader.tensors}
        q = tensors["blk.0.attn_q.weight"]
        back = gguf.quants.dequantize(q.data, q.tensor_type).reshape(weights["model.layers.0.self_attn.q_proj.weight"].shape)
        original = weights["model.layers.0.self_attn.q_proj.weight"]
        if g["type"] == "f32":
            np.testing.assert_array_equal(back, original)
        else:  # Q8_0: a block of 32 shares the scale d = max|x|/127, stored in f16: half a step, plus 127 times
            # the scale's own rounding (2^-11 relative)
            assert q.tensor_type == gguf.GGMLQuantizationType.Q8_0
            step = np.abs(original.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
            error = np.abs(back.reshape(-1, 32) - original.reshape(-1, 32))
            assert (error <= step * (0.5 + 127 * 2 ** -11)).all() and error.max() > 0
            assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    modelfile = (out / "gguf" / "Modelfile").read_text()
    assert "FROM ./model-q8_0.gguf" in modelfile and f'SYSTEM """{HELPFUL}"""' in modelfile
    assert "PARAMETER repeat_penalty 1.05" in modelfile


@pytest.mark.llamacpp
def test_llama_cpp_serves_the_gguf_as_selfid_does(exported):
    """llama.cpp (the xllamacpp wheel) renders every conversation to the same tokens as the merged model's own
    template, the training system prompt included when none is sent; in f32 its greedy replies are selfid's."""
    xlc = pytest.importorskip("xllamacpp")
    from selfid.engine import InProcessEngine, SamplingParams

    out, info = exported
    merged = load_model(str(out), device="cpu", dtype="float32", progress=False)
    engine = InProcessEngine(merged)
    for g in info["gguf"]:
        params = xlc.CommonParams()
        params.model.path = str(out / g["path"])
        params.n_ctx, params.n_parallel, params.cpuparams.n_threads = 512, 1, 1
        server = xlc.Server(params)
        try:
            for conv in CONVERSATIONS:
                got = server.handle_chat_completions({"messages": conv, "max_tokens": 8, "temperature": 0})
                rendered = merged.chat.render(conv)
                assert got["usage"]["prompt_tokens"] == len(merged.tokenizer(rendered.text, add_special_tokens=False)
                                                            .input_ids)
                if g["type"] == "f32":
                    mine = engine.generate([rendered.text], SamplingParams.from_defaults(
                        merged.generation_defaults, temperature=0, max_new_tokens=8))[0].completions[0].text
                    assert got["choices"][0]["message"]["content"] == mine
        finally:
            del server
