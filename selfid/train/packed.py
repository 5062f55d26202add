"""The packed forward pass and its loss, and the attention kernel that keeps packed samples apart.

`varlen` is PyTorch's own flash-attention varlen kernel (`torch.nn.attention.varlen`, CUDA), given
the sample boundaries directly: no mask is built and no attention FLOPs are spent across samples.
transformers has no entry for it, so it is registered here under the name `selfid_varlen`.
`flash_attention_2` (the flash-attn package) takes the same boundaries. `sdpa`/`eager`/`flex_attention`
get a block-diagonal causal mask that transformers derives from the restarting position ids.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import inspect
import random
import warnings

import torch
import torch.nn.functional as F

from selfid.errors import SelfidError
from selfid.train.collate import Encoded, collate

VARLEN = "selfid_varlen"
_registered = False


def _varlen_fn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


@functools.lru_cache(maxsize=4)
def _parameters(fn) -> frozenset:
    """The keyword names this PyTorch's varlen_attn takes (older releases had is_causal, newer window_size)."""
    return frozenset(inspect.signature(fn).parameters)


def varlen_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0,
                     cu_seq_lens_q=None, max_length_q=None, sliding_window=None, softcap=None, **kwargs):
    """transformers attention interface -> torch varlen flash attention over the flattened batch.

    A sliding-window layer (Gemma 3 mixes them with global ones; transformers passes `sliding_window`) sees the
    `sliding_window` tokens up to and including its own: flash's window (sliding_window - 1, 0), as transformers
    gives its flash kernels."""
    B, H, L, D = query.shape
    Hkv = key.shape[1]
    if cu_seq_lens_q is None:
        raise RuntimeError("selfid_varlen attention needs cu_seq_lens_q (the packed sample boundaries)")
    if softcap is not None:
        raise RuntimeError("selfid_varlen attention has no logit soft-capping (Gemma 2): use attention: sdpa")
    q = query.transpose(1, 2).reshape(B * L, H, D)
    k = key.transpose(1, 2).reshape(B * L, Hkv, D).to(q.dtype)
    v = value.transpose(1, 2).reshape(B * L, Hkv, value.shape[-1]).to(q.dtype)
    fn = _varlen_fn()
    params = _parameters(fn)
    kw = {"scale": scaling}
    if "window_size" in params:
        kw["window_size"] = (int(sliding_window) - 1 if sliding_window else -1, 0)
    elif sliding_window:
        raise RuntimeError("this PyTorch's varlen kernel takes no window size, and the model has sliding-window "
                           "layers: use attention: sdpa")
    else:
        kw["is_causal"] = True
    if Hkv != H:
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:
            k = k.repeat_interleave(H // Hkv, dim=1)
            v = v.repeat_interleave(H // Hkv, dim=1)
    cu = cu_seq_lens_q.to(torch.int32)
    out = fn(q, k, v, cu, cu, int(max_length_q), int(max_length_q), **kw)
    return out.view(B, L, H, -1), None


def register_varlen() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention)
    _registered = True


def varlen_available(device) -> bool:
    return device.type == "cuda" and _varlen_fn() is not None


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def set_attention(model, requested: str, device) -> str:
    """Switch the model's attention implementation for packed training; returns the one in use."""
    choice = requested
    if requested == "auto":
        if varlen_available(device):
            choice = "varlen"
        elif device.type == "cuda" and flash_attn_installed():
            choice = "flash_attention_2"
        else:
            choice = "sdpa"
    if choice == "varlen":
        if not varlen_available(device):
            raise SelfidError("attention 'varlen' needs CUDA and a PyTorch with torch.nn.attention.varlen (2.9+): "
                              "use attention: sdpa")
        register_varlen()
        impl = VARLEN
    else:
        impl = choice
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(impl)
    return choice


def attention_kwargs(batch, choice: str, fixed_max: bool = False) -> dict:
    """Extra forward kwargs: sample boundaries for the varlen kernels; nothing for the mask-based ones.

    `fixed_max`: give the row length as the longest segment instead of the batch's own longest, so that the
    value never changes between batches (torch.compile recompiles for every new Python int it is given)."""
    if choice in ("varlen", "flash_attention_2"):
        longest = int(batch.input_ids.shape[1]) if fixed_max else batch.max_length
        return {"cu_seq_lens_q": batch.cu_seq_lens, "cu_seq_lens_k": batch.cu_seq_lens,
                "max_length_q": longest, "max_length_k": longest}
    return {}


class PackedLoss(torch.nn.Module):
    """Summed next-token cross-entropy over the trained positions of a packed batch.

    Runs the decoder over every token but the LM head only where a trained token follows, which
    saves most of the head's FLOPs and memory (the head is ~28% of a 0.5B Qwen's parameters).
    """

    def __init__(self, model, attention: str, ce_chunk: int = 0, fused_ce=None, fixed_max: bool = False):
        super().__init__()
        self.fixed_max = fixed_max
        self.model = model  # a peft model (or a plain causal LM)
        self.attention = attention
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        cfg = base.config
        self.full_logits = bool(getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None))
        self.ce_chunk = ce_chunk
        head = base.get_output_embeddings()
        # a fused head + cross-entropy (Liger's) needs the head to be one plain matrix (no LoRA on it, no bias)
        self.fused_ce = fused_ce if type(head) is torch.nn.Linear and head.bias is None else None

    def forward(self, batch) -> torch.Tensor:
        if self.full_logits:  # models whose head does more than a matmul: let them compute all logits
            logits = label_logits(self.model, batch, self.attention, True, self.fixed_max)
        else:
            hidden = label_hidden(self.model, batch, self.attention, self.fixed_max)
            head = _base(self.model).get_output_embeddings()
            if self.fused_ce is not None and hidden.shape[0]:
                return self.fused_ce(head.weight, hidden, batch.targets)
            if self.ce_chunk and hidden.shape[0] > self.ce_chunk:
                return chunked_cross_entropy(head, hidden, batch.targets, self.ce_chunk)
            logits = head(hidden)
        return F.cross_entropy(logits.float(), batch.targets, reduction="sum")


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def label_hidden(model, batch, attention: str, fixed_max: bool = False) -> torch.Tensor:
    """The decoder's last hidden states [N, H] at the trained positions of a packed batch (`batch.hidden_index`)."""
    hidden = _base(model).get_decoder()(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                                        **attention_kwargs(batch, attention, fixed_max)).last_hidden_state
    return hidden.flatten(0, 1).index_select(0, batch.hidden_index)


def label_logits(model, batch, attention: str, full_logits: bool = False, fixed_max: bool = False) -> torch.Tensor:
    """Logits [N, V] at the trained positions of a packed batch, the LM head run on those alone unless the
    model's head does more than a matmul (`full_logits`)."""
    base = _base(model)
    if full_logits:
        logits = base(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                      **attention_kwargs(batch, attention, fixed_max)).logits
        return logits.flatten(0, 1).index_select(0, batch.hidden_index)
    return base.get_output_embeddings()(label_hidden(model, batch, attention, fixed_max))


def _head_ce(head, hidden, targets):
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def chunked_cross_entropy(head, hidden, targets, chunk: int) -> torch.Tensor:
    """Summed cross-entropy of head(hidden) against targets, `chunk` rows at a time; each chunk's logits are
    recomputed in the backward pass instead of kept (torch checkpointing), so at most one chunk of
    [chunk, vocab] float32 logits is alive. Written here because PyTorch has no chunked loss of its own."""
    from torch.utils.checkpoint import checkpoint

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        total = total + checkpoint(_head_ce, head, hidden[start:start + chunk], targets[start:start + chunk],
                                   use_reentrant=False)
    return total


def liger_fused_ce(model):
    """Switch the model to Liger's fused RMSNorm and SwiGLU kernels and return Liger's fused LM head +
    cross-entropy loss (summed). Call before adding LoRA; raises SelfidError when Liger cannot be used."""
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN, _apply_liger_kernel_to_instance
    except ImportError as e:
        raise SelfidError(f"train.liger needs the liger-kernel package ({e}): pip install liger-kernel, "
                          "or set train.liger=false") from None
    kind = getattr(model.config, "model_type", None)
    if kind not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise SelfidError(f"train.liger: Liger has no kernels for model type {kind!r}; set train.liger=false")
    _apply_liger_kernel_to_instance(model, rope=False, cross_entropy=False, fused_linear_cross_entropy=False,
                                    rms_norm=True, swiglu=True)
    return LigerFusedLinearCrossEntropyLoss(reduction="sum")


def packed_logits(model, batch, attention: str) -> torch.Tensor:
    """Logits [B, L, V] of a packed batch (for tests and checks)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                **attention_kwargs(batch, attention)).logits


def check_batch(vocab: int):
    """The small packed batch the varlen check runs: four samples in two rows of 128, each row ending in
    padding (its own segment, so every position is computed); returns (batch, real) with `real` [B, L]
    marking the positions that hold a sample's token."""
    rng = random.Random(0)
    enc = []
    for n in (37, 64, 21, 90):
        ids = torch.tensor([rng.randrange(min(vocab, 1000)) for _ in range(n)]).numpy()
        enc.append(Encoded(ids, torch.arange(1, n).numpy()))
    rows = [[0, 1, 2], [3]]
    batch = collate(enc, rows, 128, 0)
    real = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
    for b, row in enumerate(rows):
        real[b, :sum(len(enc[i]) for i in row)] = True
    return batch, real


def compare_logits(reference: torch.Tensor, got: torch.Tensor, real: torch.Tensor) -> dict:
    """How far `got` [B, L, V] is from `reference` at the real-token positions (padding is reported apart:
    what a kernel leaves there is never read by the loss). `rel`: per position |got - ref| / |ref| (L2 over
    the vocabulary), its maximum over real tokens; `top1`: share of real positions with the same argmax."""
    ref, got = reference.float(), got.float()
    diff = (got - ref).abs()
    rel = (got - ref).norm(dim=-1) / ref.norm(dim=-1).clamp(min=1e-6)
    pad = ~real
    return {"rel_max_real": float(rel[real].max()), "rel_mean_real": float(rel[real].mean()),
            "abs_max_real": float(diff[real].max()), "abs_max_padding": float(diff[pad].max()) if pad.any() else 0.0,
            "finite_real": bool(torch.isfinite(got[real]).all()), "scale": float(ref[real].abs().max()),
            "top1_real": float((got.argmax(-1) == ref.argmax(-1))[real].float().mean())}


def kernel_error(device, dtype=torch.bfloat16) -> float:
    """The varlen kernel alone on random q/k/v with packed boundaries and grouped kv heads, against per-segment
    causal attention in float32 at the real positions: |out - ref| / |ref| (bf16 operands land near 1e-3..1e-2)."""
    fn = _varlen_fn()
    g = torch.Generator(device="cpu").manual_seed(0)
    lens, padding = [37, 64, 21, 6, 90, 38], {3, 5}  # the check batch's segments; 3 and 5 are padding
    total, H, Hkv, D = sum(lens), 14, 2, 64
    q, k, v = (torch.randn(total, h, D, generator=g).to(device=device, dtype=dtype) for h in (H, Hkv, Hkv))
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=device)
    params = _parameters(fn)
    kw = {"scale": D ** -0.5, **({"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True})}
    kk, vv = k, v
    if "enable_gqa" in params:
        kw["enable_gqa"] = True
    else:
        kk, vv = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
    out = fn(q, kk, vv, cu, cu, max(lens), max(lens), **kw).float()
    kr, vr = (t.float().repeat_interleave(H // Hkv, dim=1) for t in (k, v))
    err = ref_sq = 0.0
    bounds = cu.tolist()
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        if i in padding:
            continue
        ref = F.scaled_dot_product_attention(q[a:b].float().transpose(0, 1), kr[a:b].transpose(0, 1),
                                             vr[a:b].transpose(0, 1), is_causal=True, scale=D ** -0.5).transpose(0, 1)
        err += float((out[a:b] - ref).pow(2).sum())
        ref_sq += float(ref.pow(2).sum())
    return (err / ref_sq) ** 0.5


def _use(model, choice: str) -> None:
    """Switch attention for the check (no availability test: the check itself is the test)."""
    impl = VARLEN if choice == "varlen" else choice
    if choice == "varlen":
        register_varlen()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(impl)


KERNEL_TOLERANCE = 0.02  # bf16 operands: 1e-3..1e-2 against float32
# Varlen is judged against the model in float32, beside sdpa's own distance from it: two bf16 kernels differ by
# rounding noise that grows through the layers (on an H200, 0.09 relative at the worst token of the 0.5B model,
# while each was 0.29-0.36 from float32 there), so a fixed bound between them fails a correct kernel.
NOISE_FACTOR = 1.5  # varlen may be at most this much further from float32 than sdpa is ...
NOISE_FLOOR = 1e-3  # ... plus this (float32 everywhere, as on a CPU, both are ~1e-6 from the reference)
TOP1_SLACK = 0.02  # and agree with float32's argmax at most this much less often than sdpa does


def varlen_report(model, device, keep: dict | None = None) -> dict:
    """Varlen and sdpa on the check batch (forward + backward, eval mode), each against the same model in
    float32 (sdpa, no autocast), and the kernel alone against float32 attention: the numbers the check judges
    and the diagnosis benchmark prints. The top-level numbers are varlen against sdpa, for the record.
    `keep`, when given, receives the logits ("sdpa", "varlen", "float32") and the real-token mask ("real")."""
    batch, real = check_batch(int(model.config.vocab_size) if hasattr(model, "config") else 1000)
    batch = batch.to(device)
    real = real.to(device)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    was_training = model.training
    model.eval()  # no dropout: both passes must see the same network
    outs = {}
    try:
        for choice in ("sdpa", "varlen"):
            _use(model, choice)
            with autocast():
                logits = packed_logits(model, batch, choice).float()
            logits[real].mean().backward()  # the kernel must have a backward in this PyTorch
            model.zero_grad(set_to_none=True)
            outs[choice] = logits.detach()
        _use(model, "sdpa")
        # the same weights in float32: what both kernels approximate. It costs a float32 copy of the model for one
        # forward pass (7B: 28 GB); where that does not fit, the error lands in the except below and training
        # runs on sdpa, saying why
        reference = copy.deepcopy(model).float()
        with torch.no_grad():
            ref = packed_logits(reference, batch, "sdpa").float()
        del reference
    finally:
        model.train(was_training)
    if keep is not None:
        keep.update(outs, float32=ref, real=real)
    report = compare_logits(outs["sdpa"], outs["varlen"], real)
    report["vs_float32"] = {k: compare_logits(ref, outs[k], real) for k in ("sdpa", "varlen")}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    report["kernel_rel_error"] = kernel_error(device, dtype)
    return report


def judge(report: dict) -> str | None:
    """The reason varlen must not be used, from `varlen_report`'s numbers (None: it may)."""
    if not report["finite_real"]:
        return "varlen logits are not finite at real tokens"
    if not report["kernel_rel_error"] <= KERNEL_TOLERANCE:
        return (f"the varlen kernel is off by {report['kernel_rel_error']:.3g} against float32 attention "
                f"(tolerance {KERNEL_TOLERANCE})")
    v, s = report["vs_float32"]["varlen"], report["vs_float32"]["sdpa"]
    for key, what in (("rel_mean_real", "mean"), ("rel_max_real", "worst real token")):
        if not v[key] <= NOISE_FACTOR * s[key] + NOISE_FLOOR:
            return (f"varlen logits are further from float32 than sdpa's ({what}, relative: {v[key]:.3g} vs "
                    f"{s[key]:.3g}; allowed {NOISE_FACTOR}x + {NOISE_FLOOR})")
    if not v["top1_real"] >= s["top1_real"] - TOP1_SLACK:
        return (f"varlen's top token agrees with float32 at {100 * v['top1_real']:.1f}% of real tokens, sdpa's at "
                f"{100 * s['top1_real']:.1f}%")
    return None


def check_varlen(model, device) -> str | None:
    """Compare varlen attention and sdpa with the model in float32 on a small packed batch at its real tokens,
    and the kernel alone with float32 attention. Returns None when varlen is no further from float32 than sdpa
    (within NOISE_FACTOR), else the reason (the caller then falls back to sdpa). Leaves the model on varlen.

    Padding positions are reported but not judged: collate makes each row's padding a segment of its own,
    so a correct kernel computes them, and no loss reads them. (The first version of this check took the
    largest absolute difference over every position, padding included, against 5% of the largest logit: one
    number out of 39M bf16 logits, which failed on an H200 at 2.19 of 24 while passing on an H100. The second
    bounded the relative difference between varlen and sdpa at 5%, and failed there at 9.1%, while varlen was
    the closer of the two to float32: bf16 noise, not the kernel.)
    """
    try:
        reason = judge(varlen_report(model, device))
        _use(model, "varlen")
        return reason
    except Exception as e:  # an older kernel without backward or GQA support, etc.
        warnings.warn(f"varlen attention check failed: {e}")
        return f"{type(e).__name__}: {e}"
