"""A second model family: Gemma 3 (sliding-window and global layers, 1 + weight norms, scaled embeddings, a tied head,
no chat template in the pretrained model), on a tiny random Gemma 3 with a window shorter than every prompt."""

import json

import pytest
import torch
from typer.testing import CliRunner

from selfid.engine import InProcessEngine, Request, SamplingParams
from selfid.errors import SelfidError
from selfid.model.chat import conversation
from selfid.model.load import load_model
from selfid.train.collate import collate, encode_many
from selfid.train.packed import packed_logits, set_attention
from tests.tiny import GEMMA_TEMPLATE, GEMMA_WINDOW

QUESTIONS = ["hi", "你是谁？请详细介绍一下你自己。", "Who are you?", "Tell me about the quick brown fox and the lazy dog.",
             "北京 上海", "The quick brown fox jumps over the lazy dog. " * 3]


@pytest.fixture(scope="module")
def prompts(tiny_gemma):
    return [tiny_gemma.chat.render(conversation(q)).text for q in QUESTIONS]


def greedy_alone(loaded, prompt: str, n: int) -> list[int]:
    """Greedy tokens from full forward passes over one unpadded sequence, no cache: the reference."""
    ids = loaded.tokenizer(prompt, add_special_tokens=False).input_ids
    out: list[int] = []
    for _ in range(n):
        with torch.no_grad():
            tok = int(loaded.model(torch.tensor([ids + out])).logits[0, -1].argmax())
        out.append(tok)
        if tok in loaded.eos_token_ids:
            break
    return out


def test_a_model_without_a_chat_template_is_one_line_naming_what_to_pass(tiny_gemma_dir):
    with pytest.raises(SelfidError, match=r"has no chat template .* pass --chat-template FILE") as e:
        load_model(str(tiny_gemma_dir), device="cpu", progress=False)
    assert "\n" not in str(e.value)
    from selfid.cli import app

    got = CliRunner().invoke(app, ["chat", "--model", str(tiny_gemma_dir), "--prompt", "hi", "--device", "cpu"])
    assert got.exit_code != 0 and isinstance(got.exception, SelfidError) and "--chat-template" in str(got.exception)
    with pytest.raises(SelfidError, match="--chat-template .*nope.jinja: no such file"):
        load_model(str(tiny_gemma_dir), device="cpu", progress=False, chat_template=tiny_gemma_dir / "nope.jinja")


def test_the_template_file_renders_gemmas_turns_and_its_end_of_turn_ends_a_reply(tiny_gemma):
    rendered = tiny_gemma.chat.render(conversation("Who are you?", system="Be brief."))
    assert rendered.text == "<bos><start_of_turn>user\nBe brief.\n\nWho are you?<end_of_turn>\n<start_of_turn>model\n"
    assert tiny_gemma.chat.default_system is None  # Gemma's format inserts no system prompt of its own
    assert tiny_gemma.template_source == f"--chat-template {GEMMA_TEMPLATE}"
    assert tiny_gemma.tokenizer.convert_tokens_to_ids("<end_of_turn>") in tiny_gemma.eos_token_ids
    enc = encode_many(tiny_gemma.tokenizer, [conversation("hi") + [{"role": "assistant", "content": "Hello."}]],
                      tiny_gemma.eos_token_ids)[0]
    assert tiny_gemma.tokenizer.decode(enc.ids[enc.label_pos]) == "Hello.<end_of_turn>"


@pytest.mark.parametrize("decode", ["eager", "static"])
def test_batched_decoding_equals_each_prompt_alone_across_the_sliding_window(tiny_gemma, prompts, decode):
    lengths = [len(tiny_gemma.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    assert min(lengths) > GEMMA_WINDOW  # every prompt is longer than the sliding layers see
    engine = InProcessEngine(tiny_gemma, decode=decode)
    reqs = [Request(p, SamplingParams(max_new_tokens=12, temperature=0)) for p in prompts]
    got = [r.completions[0].token_ids for r in engine.generate(reqs)]
    assert got == [greedy_alone(tiny_gemma, p, 12) for p in prompts]
    assert engine.decode_report()["using"] == decode  # static decoding is not refused for Gemma 3's layer mix


def test_static_decoding_without_the_window_would_be_wrong_and_is_refused(tiny_gemma, prompts, monkeypatch):
    from selfid.engine import static

    real = static.SlotDecoder.__init__

    def no_window(self, *a, **kw):  # the global layers' mask for every layer: the windows ignored
        real(self, *a, **kw)
        self.window = None

    monkeypatch.setattr(static.SlotDecoder, "__init__", no_window)
    engine = InProcessEngine(tiny_gemma, decode="static")
    engine.generate([prompts[0]], SamplingParams(max_new_tokens=1))
    report = engine.decode_report()
    assert report["using"] == "eager" and report["reason"].startswith("plain vs eager: logits differ"), report["reason"]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_training_rows_keep_samples_apart_and_windows_slide(tiny_gemma, attention):
    tok = tiny_gemma.tokenizer
    convs = [conversation(q) + [{"role": "assistant", "content": q[::-1]}] for q in QUESTIONS[1:4]]
    enc = encode_many(tok, convs, tiny_gemma.eos_token_ids)
    assert min(len(e) for e in enc) > GEMMA_WINDOW
    set_attention(tiny_gemma.model, attention, torch.device("cpu"))
    try:
        batch = collate(enc, [[0, 1, 2]], 256, tok.pad_token_id)
        with torch.no_grad():
            packed = packed_logits(tiny_gemma.model, batch, attention)[0]
            off = 0
            for e in enc:
                alone = tiny_gemma.model(input_ids=torch.tensor(e.ids)[None]).logits[0]
                torch.testing.assert_close(packed[off:off + len(e)], alone, atol=1e-4, rtol=1e-4)
                off += len(e)
    finally:
        set_attention(tiny_gemma.model, "sdpa", torch.device("cpu"))


def test_varlen_gives_sliding_layers_their_window(tiny_gemma, monkeypatch):
    """The CUDA varlen kernel stood in for by sdpa per segment, with flash's window rule (query i sees keys
    i - left .. i): sliding layers must ask for a window of GEMMA_WINDOW tokens, global ones for none."""
    from selfid.train import packed

    windows = []

    def fake_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        windows.append(window_size)
        if enable_gqa:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        out = torch.empty_like(q)
        for a, b in zip(cu_q.tolist(), cu_q.tolist()[1:]):
            i = torch.arange(b - a)
            left = window_size[0] if window_size[0] >= 0 else b - a
            seen = (i[None, :] <= i[:, None]) & (i[None, :] >= i[:, None] - left)
            seg = torch.nn.functional.scaled_dot_product_attention(
                q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), attn_mask=seen, scale=scale)
            out[a:b] = seg.transpose(0, 1)
        return out

    monkeypatch.setattr(packed, "_varlen_fn", lambda: fake_varlen)
    convs = [conversation(q) + [{"role": "assistant", "content": "ok"}] for q in QUESTIONS[1:4]]
    enc = encode_many(tiny_gemma.tokenizer, convs, tiny_gemma.eos_token_ids)
    batch = collate(enc, [[0, 1], [2]], 128, tiny_gemma.tokenizer.pad_token_id)
    with torch.no_grad():
        reference = packed_logits(tiny_gemma.model, batch, "sdpa")
        packed.register_varlen()
        tiny_gemma.model.set_attn_implementation(packed.VARLEN)
        try:
            varlen = packed_logits(tiny_gemma.model, batch, "varlen")
        finally:
            set_attention(tiny_gemma.model, "sdpa", torch.device("cpu"))
    assert windows == [(GEMMA_WINDOW - 1, 0), (GEMMA_WINDOW - 1, 0), (-1, 0), (GEMMA_WINDOW - 1, 0)]
    torch.testing.assert_close(varlen, reference, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def trained_gemma(tiny_gemma_dir, tmp_path_factory):
    """A few LoRA steps on the tiny Gemma 3 under Gemma's instruction format, given as the config's chat_template."""
    from selfid.train.sft import train
    from tests.train_helpers import tiny_config, write_data

    folder = tmp_path_factory.mktemp("gemma-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SELFID_HOME", str(folder / "home"))
        out = folder / "run"
        result = train(tiny_config(tiny_gemma_dir, out, write_data(folder), "train.max_steps=4", "data.0.weight=2",
                                   f"chat_template={GEMMA_TEMPLATE}"))
        yield out / "adapter", result


def test_training_keeps_the_template_with_the_adapter_and_loading_renders_as_trained(trained_gemma, tiny_gemma_dir,
                                                                                      tiny_gemma):
    adapter, result = trained_gemma
    assert result.steps_done == 4 and result.metrics["final_loss"] > 0
    assert (adapter / "chat_template.jinja").read_text() == GEMMA_TEMPLATE.read_text()
    m = json.loads((adapter / "selfid.json").read_text())
    assert m["chat_template"]["source"] == f"--chat-template {GEMMA_TEMPLATE}"
    assert m["base_model"]["architecture"] == "Gemma3ForCausalLM"
    loaded = load_model(str(tiny_gemma_dir), adapter=adapter, device="cpu", progress=False)  # no --chat-template
    assert loaded.template_source == f"the adapter folder {adapter}"
    assert loaded.chat.template_hash == tiny_gemma.chat.template_hash == m["train"]["template_hash"]


def test_an_audit_of_the_trained_adapter_knows_it_is_googles(trained_gemma, tiny_gemma_dir, tmp_path):
    from selfid.audit.backends import InProcessBackend
    from selfid.audit.run import AuditParams, audit_systems, run_audit
    from tests.audit_helpers import write_probes

    adapter, _ = trained_gemma
    loaded = load_model(str(tiny_gemma_dir), adapter=adapter, device="cpu", progress=False)
    probes = write_probes(tmp_path / "probes.jsonl", ["en-direct-01", "zh-direct-01"])
    params = AuditParams(suites=["identity"], systems=audit_systems(["template"], loaded.chat.default_system),
                         temperatures=[0.0, 0.7], samples=2, seed=1, max_new_tokens=8, ner_limit=1, own="auto",
                         identity_probes=str(probes))
    summary = run_audit(InProcessBackend(loaded), params, tmp_path / "audit", show_progress=False)
    run = json.loads((tmp_path / "audit" / "run.json").read_text())
    assert run["own"] == "google" and "gemma3_text" in run["own_source"]
    assert run["target"]["template_source"].startswith("the adapter folder")
    assert summary["run"]["complete"]
    rendered = [json.loads(line)["rendered"] for line in (tmp_path / "audit" / "generations.jsonl").open()]
    assert rendered and all(r.startswith("<bos><start_of_turn>user\n") for r in rendered)


def test_export_merges_into_a_folder_that_serves_with_the_training_template(trained_gemma, tiny_gemma_dir, tmp_path):
    from selfid.train.export import export

    adapter, _ = trained_gemma
    info = export(adapter, tmp_path / "merged", progress=False)
    merged = load_model(str(tmp_path / "merged"), device="cpu", progress=False)  # its own template now
    assert merged.template_source == "the model's own" and info["template_hash"] == merged.chat.template_hash
    assert merged.chat.template == GEMMA_TEMPLATE.read_text()
    tuned = load_model(str(tiny_gemma_dir), adapter=adapter, device="cpu", progress=False)
    ids = torch.tensor([tuned.chat.encode(tuned.chat.render(conversation(QUESTIONS[3])))])
    with torch.no_grad():
        torch.testing.assert_close(merged.model(ids).logits, tuned.model(ids).logits, atol=1e-4, rtol=1e-4)
        base = load_model(str(tiny_gemma_dir), device="cpu", progress=False, chat_template=GEMMA_TEMPLATE)
        assert not torch.allclose(base.model(ids).logits, tuned.model(ids).logits, atol=1e-3)  # the LoRA moved it


def test_static_decoding_reads_rope_settings_per_layer_type(tiny_gemma, monkeypatch):
    from selfid.engine.static import unsupported

    cfg = tiny_gemma.model.config
    assert set(cfg.rope_parameters) == {"full_attention", "sliding_attention"} and unsupported(tiny_gemma.model) is None
    dynamic = {**cfg.rope_parameters, "full_attention": {"rope_type": "dynamic", "rope_theta": 1e6, "factor": 2.0}}
    monkeypatch.setattr(cfg, "rope_parameters", dynamic)
    assert unsupported(tiny_gemma.model) == "rope type 'dynamic' updates itself from the positions"
