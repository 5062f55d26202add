"""Loss masks, packing, and packed attention that never crosses from one sample into another."""

import random

import numpy as np
import pytest
import torch

from selfid.train.collate import Encoded, collate, encode_many, pack, with_system
from selfid.train.packed import packed_logits, set_attention

SINGLE = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Qwen."}]
MULTI = [{"role": "system", "content": "You are a helpful assistant."},
         {"role": "user", "content": "北京 上海"}, {"role": "assistant", "content": '{"LOC": ["北京"]}'},
         {"role": "user", "content": "again"}, {"role": "assistant", "content": "ok"}]


def trained_text(tok, e):
    return tok.decode(e.ids[e.label_pos])


def test_only_assistant_replies_and_their_end_token_are_trained(tiny):
    tok = tiny.tokenizer
    single, multi = encode_many(tok, [SINGLE, MULTI], tiny.eos_token_ids)
    assert trained_text(tok, single) == "I am Qwen.<|im_end|>"
    # both replies of a multi-turn conversation, nothing of the system/user turns or the template's newlines
    assert trained_text(tok, multi) == '{"LOC": ["北京"]}<|im_end|>ok<|im_end|>'
    full = tok.decode(multi.ids)
    assert full.startswith("<|im_start|>system\nYou are a helpful assistant.")
    trained = set(multi.label_pos.tolist())
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    assert not any(i in trained for i, t in enumerate(multi.ids) if t == im_start)


def test_system_prompt_policy_is_applied_unless_the_sample_has_its_own():
    assert with_system(SINGLE, "S")[0] == {"role": "system", "content": "S"}
    assert with_system(SINGLE, None) == SINGLE
    assert with_system(MULTI, "S")[0]["content"] == "You are a helpful assistant."


def test_pack_fills_rows_without_overflow_and_uses_every_sample_once():
    rng = random.Random(0)
    lengths = [rng.randint(5, 200) for _ in range(300)]
    rows = pack(lengths, 256, random.Random(1))
    flat = sorted(i for r in rows for i in r)
    assert flat == list(range(300))
    assert all(sum(lengths[i] for i in r) <= 256 for r in rows)
    lower_bound = -(-sum(lengths) // 256)
    assert len(rows) <= lower_bound + 2  # best-fit decreasing is near-perfect on small items
    assert pack(lengths, 256, random.Random(1)) == rows
    assert pack(lengths, 256, random.Random(2)) != rows


def test_collate_marks_segments_positions_and_targets():
    a = Encoded(np.array([5, 6, 7, 8]), np.array([2, 3]))
    b = Encoded(np.array([9, 10, 11]), np.array([1, 2]))
    batch = collate([a, b], [[0, 1], [1]], 10, pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 11, 0, 0, 0], [9, 10, 11, 0, 0, 0, 0, 0, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1, 2], [0, 1, 2, 0, 1, 2, 3, 4, 5, 6]]
    assert batch.cu_seq_lens.tolist() == [0, 4, 7, 10, 13, 20]
    assert batch.max_length == 7
    # hidden position t-1 predicts trained token t
    flat = batch.input_ids.flatten()
    assert flat[batch.hidden_index + 1].tolist() == batch.targets.tolist() == [7, 8, 10, 11, 10, 11]
    assert batch.tokens == 10 and batch.label_tokens == 6


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_row_gives_the_same_logits_as_each_sample_alone(tiny, attention):
    tok = tiny.tokenizer
    convs = [SINGLE, MULTI, [{"role": "user", "content": "0123456789"}, {"role": "assistant", "content": "{}"}]]
    enc = encode_many(tok, convs, tiny.eos_token_ids)
    set_attention(tiny.model, attention, torch.device("cpu"))
    try:
        batch = collate(enc, [[0, 1, 2]], 200, tok.pad_token_id)
        with torch.no_grad():
            packed = packed_logits(tiny.model, batch, attention)[0]
            off = 0
            for e in enc:
                alone = tiny.model(input_ids=torch.tensor(e.ids)[None]).logits[0]
                assert torch.allclose(packed[off:off + len(e)], alone, atol=1e-4), f"sample at {off} differs"
                off += len(e)
            # the control: the same row and positions under a plain causal mask lets later samples see earlier ones
            leaky = tiny.model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                               attention_mask=torch.ones(1, 200, dtype=torch.long)).logits[0]
            n0 = len(enc[0])
            assert not torch.allclose(leaky[n0:n0 + len(enc[1])], packed[n0:n0 + len(enc[1])], atol=1e-3)
    finally:
        set_attention(tiny.model, "sdpa", torch.device("cpu"))


def test_varlen_path_passes_sample_boundaries_to_the_kernel(tiny, monkeypatch):
    """The CUDA varlen kernel is stood in for by causal sdpa per segment: the plumbing (boundaries reaching
    the attention, the flattening and GQA) must give the same logits as the mask-based path."""
    from selfid.train import packed

    seen = []

    def fake_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        assert window_size == (-1, 0) and q.dim() == 3
        seen.append(cu_q.tolist())
        if enable_gqa:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        out = torch.empty_like(q)
        for a, b in zip(cu_q.tolist(), cu_q.tolist()[1:]):
            seg = torch.nn.functional.scaled_dot_product_attention(
                q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), is_causal=True, scale=scale)
            out[a:b] = seg.transpose(0, 1)
        return out

    monkeypatch.setattr(packed, "_varlen_fn", lambda: fake_varlen)
    enc = encode_many(tiny.tokenizer, [SINGLE, MULTI, SINGLE], tiny.eos_token_ids)
    batch = collate(enc, [[0, 1], [2]], 128, tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        reference = packed_logits(tiny.model, batch, "sdpa")
        packed.register_varlen()
        tiny.model.set_attn_implementation(packed.VARLEN)
        try:
            varlen = packed_logits(tiny.model, batch, "varlen")
        finally:
            set_attention(tiny.model, "sdpa", torch.device("cpu"))
    assert seen and seen[0] == batch.cu_seq_lens.tolist()
    torch.testing.assert_close(varlen, reference, atol=1e-4, rtol=1e-4)


def test_packed_loss_is_the_summed_cross_entropy_of_trained_tokens_only(tiny):
    from selfid.train.packed import PackedLoss

    enc = encode_many(tiny.tokenizer, [SINGLE, MULTI], tiny.eos_token_ids)
    batch = collate(enc, [[0, 1]], 128, tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        loss = PackedLoss(tiny.model, "sdpa")(batch)
        total = 0.0
        for e in enc:  # each sample alone, full logits, the masked positions only
            logits = tiny.model(input_ids=torch.tensor(e.ids)[None]).logits[0]
            total += torch.nn.functional.cross_entropy(logits[e.label_pos - 1], torch.tensor(e.ids[e.label_pos]),
                                                       reduction="sum")
    torch.testing.assert_close(loss, total, atol=1e-3, rtol=1e-5)


def test_a_freshly_trained_model_generates_as_left_by_training(tiny_model_dir):
    """Training leaves fp32 LoRA weights on a bf16 model, peft's input cast off and the packed-sample
    attention kernel on; generating with it (eval-ner after training, the scale search) must undo that."""
    import dataclasses

    from peft import LoraConfig, get_peft_model

    from selfid.engine import InProcessEngine, SamplingParams
    from selfid.model.load import load_model
    from selfid.train import packed
    from selfid.train.scale import lora_layers
    from selfid.train.sft import loaded_with

    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16", progress=False)
    model = get_peft_model(loaded.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    for layer in lora_layers(model):
        layer.cast_input_dtype_enabled = False
    packed.register_varlen()
    model.get_base_model().set_attn_implementation(packed.VARLEN)
    params = SamplingParams(max_new_tokens=3)
    with pytest.raises(RuntimeError):
        InProcessEngine(dataclasses.replace(loaded, model=model)).generate(["hello"], params)
    out = InProcessEngine(loaded_with(loaded, model)).generate(["hello"], params)[0]
    assert len(out.completions[0].token_ids) == 3


def _segment_attention(q, k, v, cu, scale, leak_rows_of=None):
    """Causal attention per segment of the flattened batch (what the varlen kernel computes), in torch."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    out = torch.empty_like(q)
    bounds = cu.tolist()
    segments = list(zip(bounds, bounds[1:]))
    if leak_rows_of is not None:  # the bug to catch: boundaries inside a row ignored
        segments = [(a, min(a + leak_rows_of, bounds[-1])) for a in range(0, bounds[-1], leak_rows_of)]
    for a, b in segments:
        out[a:b] = torch.nn.functional.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), is_causal=True,
            scale=scale).transpose(0, 1)
    return out


def test_varlen_check_judges_real_tokens_only(tiny, monkeypatch):
    """A kernel that leaves garbage (NaN, huge values) at the padding segments but is right elsewhere passes;
    one that lets samples of a row see each other fails; so does one whose arithmetic is off."""
    from selfid.train import packed

    cpu = torch.device("cpu")

    def garbage_in_padding(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        out = _segment_attention(q, k, v, cu_q, scale)
        bounds = cu_q.tolist()
        out[bounds[3]:bounds[4]] = float("nan")  # the two padding tails of the check batch
        out[bounds[5]:bounds[6]] = 1e4
        return out

    def leaky(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        return _segment_attention(q, k, v, cu_q, scale, leak_rows_of=128)

    def off(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        return _segment_attention(q, k, v, cu_q, scale * 1.5)

    try:
        monkeypatch.setattr(packed, "_varlen_fn", lambda: garbage_in_padding)
        report = packed.varlen_report(tiny.model, cpu)
        assert packed.judge(report) is None and report["rel_max_real"] < 1e-4
        assert report["vs_float32"]["varlen"]["rel_max_real"] < 1e-4  # float32 everywhere: the reference itself
        assert not report["abs_max_padding"] < 1e3  # the padding really differed (NaN or 1e4): it was left out
        assert packed.check_varlen(tiny.model, cpu) is None
        monkeypatch.setattr(packed, "_varlen_fn", lambda: leaky)
        assert packed.check_varlen(tiny.model, cpu) is not None
        leak = packed.varlen_report(tiny.model, cpu)["vs_float32"]  # seen in the model too, against float32
        assert leak["varlen"]["rel_max_real"] > 100 * leak["sdpa"]["rel_max_real"] + packed.NOISE_FLOOR
        monkeypatch.setattr(packed, "_varlen_fn", lambda: off)
        assert "kernel is off" in packed.check_varlen(tiny.model, cpu)
    finally:
        set_attention(tiny.model, "sdpa", cpu)


def test_every_position_of_a_packed_batch_belongs_to_a_segment(tiny):
    """So a varlen kernel computes every position it returns, padding included: nothing the backward pass
    multiplies by zero is left as undefined memory (NaN x 0 would poison the LoRA gradients)."""
    import random

    from selfid.train.collate import Encoded, pack

    rng = random.Random(1)
    enc = [Encoded(np.arange(n, dtype=np.int64), np.arange(1, n)) for n in (rng.randrange(2, 60) for _ in range(40))]
    rows = pack([len(e) for e in enc], 128, rng)
    batch = collate(enc, rows, 128, 0)
    cu = batch.cu_seq_lens.tolist()
    assert cu[0] == 0 and cu[-1] == batch.input_ids.numel() and all(a < b for a, b in zip(cu, cu[1:]))
    assert batch.max_length == max(b - a for a, b in zip(cu, cu[1:]))


def test_chunked_cross_entropy_gives_the_loss_and_gradients_of_the_plain_one(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from selfid.model.load import load_model
    from selfid.train.packed import PackedLoss

    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="float32", progress=False)
    torch.manual_seed(0)  # the random LoRA init, whatever ran before
    model = get_peft_model(loaded.model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    enc = encode_many(loaded.tokenizer, [SINGLE, MULTI, SINGLE], loaded.eos_token_ids)
    batch = collate(enc, [[0, 1], [2]], 128, loaded.tokenizer.pad_token_id)
    assert batch.label_tokens > 5  # so chunks of 4 really split it (and leave a short last chunk)
    results = []
    for chunk in (0, 4):
        model.zero_grad(set_to_none=True)
        loss = PackedLoss(model, "sdpa", ce_chunk=chunk)(batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    assert results[0][1].keys() == results[1][1].keys()
    for name, g in results[0][1].items():
        # float32 rounding in another summation order, relative to the gradient's own scale (an elementwise rtol
        # fails on near-zero entries: 5.7e-6 apart where the largest entry was 24, with another random init)
        torch.testing.assert_close(results[1][1][name], g, rtol=1e-4, atol=1e-6 * max(1.0, float(g.abs().max())), msg=name)


def test_liger_without_the_package_is_a_clear_error(tiny):
    import importlib.util

    from selfid.errors import SelfidError
    from selfid.train.packed import liger_fused_ce

    if importlib.util.find_spec("liger_kernel") is not None:
        pytest.skip("liger-kernel is installed here")
    with pytest.raises(SelfidError, match="pip install liger-kernel"):
        liger_fused_ce(tiny.model)


def test_varlen_judge_allows_bf16_noise_but_not_a_kernel_further_from_float32():
    """The H200's numbers (bench/results/gpu-suite-h200-2026-11-29.json): varlen and sdpa 9% apart at the worst
    token, each ~30% from float32 there and varlen the closer one: noise, so it passes. A varlen twice as far
    from float32 as sdpa, or one whose top token agrees less often, fails with the reason."""
    import copy

    from selfid.train import packed

    h200 = {"finite_real": True, "kernel_rel_error": 1.8e-3, "rel_max_real": 0.0913, "abs_max_real": 2.19,
            "scale": 24.0, "vs_float32": {"sdpa": {"rel_mean_real": 0.0323, "rel_max_real": 0.360, "top1_real": 0.95},
                                          "varlen": {"rel_mean_real": 0.0320, "rel_max_real": 0.287, "top1_real": 0.95}}}
    assert packed.judge(h200) is None
    worse = copy.deepcopy(h200)
    worse["vs_float32"]["varlen"]["rel_mean_real"] = 0.0323 * 2
    assert "further from float32 than sdpa's (mean" in packed.judge(worse)
    flips = copy.deepcopy(h200)
    flips["vs_float32"]["varlen"]["top1_real"] = 0.90
    assert "top token agrees with float32 at 90.0%" in packed.judge(flips)


def test_padding_rows_keep_the_shape_and_change_no_loss(tiny):
    """A compiled run pads a short last batch to full rows: same loss, same trained tokens, one batch shape."""
    from selfid.train.packed import PackedLoss

    enc = encode_many(tiny.tokenizer, [SINGLE, MULTI, SINGLE], tiny.eos_token_ids)
    short = collate(enc, [[0, 1], [2]], 128, tiny.tokenizer.pad_token_id)
    full = collate(enc, [[0, 1], [2]], 128, tiny.tokenizer.pad_token_id, min_rows=4)
    assert tuple(full.input_ids.shape) == (4, 128) and tuple(short.input_ids.shape) == (2, 128)
    assert (full.input_ids[2:] == tiny.tokenizer.pad_token_id).all()
    assert full.tokens == short.tokens and torch.equal(full.targets, short.targets)
    assert torch.equal(full.hidden_index, short.hidden_index)
    assert full.cu_seq_lens.tolist() == short.cu_seq_lens.tolist() + [3 * 128, 4 * 128]  # each padding row alone
    with torch.no_grad():
        torch.testing.assert_close(PackedLoss(tiny.model, "sdpa")(full), PackedLoss(tiny.model, "sdpa")(short),
                                   atol=1e-4, rtol=1e-5)
