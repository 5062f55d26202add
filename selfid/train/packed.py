"""The packed forward pass and its loss, and the attention kernel that keeps packed samples apart.

`varlen` is PyTorch's own flash-attention varlen kernel (`torch.nn.attention.varlen`, CUDA), given
the sample boundaries directly: no mask is built and no attention FLOPs are spent across samples.
transformers has no entry for it, so it is registered here under the name `selfid_varlen`.
`flash_attention_2` (the flash-attn package) takes the same boundaries. `sdpa`/`eager`/`flex_attention`
get a block-diagonal causal mask that transformers derives from the restarting position ids.
"""

from __future__ import annotations

import functools
import inspect
import warnings

import torch
import torch.nn.functional as F

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
                     cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """transformers attention interface -> torch varlen flash attention over the flattened batch."""
    B, H, L, D = query.shape
    Hkv = key.shape[1]
    if cu_seq_lens_q is None:
        raise RuntimeError("selfid_varlen attention needs cu_seq_lens_q (the packed sample boundaries)")
    q = query.transpose(1, 2).reshape(B * L, H, D)
    k = key.transpose(1, 2).reshape(B * L, Hkv, D).to(q.dtype)
    v = value.transpose(1, 2).reshape(B * L, Hkv, value.shape[-1]).to(q.dtype)
    fn = _varlen_fn()
    params = _parameters(fn)
    kw = {"scale": scaling}
    if "window_size" in params:
        kw["window_size"] = (-1, 0)
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
    import importlib.util

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
            from selfid.errors import SelfidError

            raise SelfidError("attention 'varlen' needs CUDA and a PyTorch with torch.nn.attention.varlen (2.9+): "
                              "use attention: sdpa")
        register_varlen()
        impl = VARLEN
    else:
        impl = choice
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(impl)
    return choice


def attention_kwargs(batch, choice: str) -> dict:
    """Extra forward kwargs: sample boundaries for the varlen kernels; nothing for the mask-based ones."""
    if choice in ("varlen", "flash_attention_2"):
        return {"cu_seq_lens_q": batch.cu_seq_lens, "cu_seq_lens_k": batch.cu_seq_lens,
                "max_length_q": batch.max_length, "max_length_k": batch.max_length}
    return {}


class PackedLoss(torch.nn.Module):
    """Summed next-token cross-entropy over the trained positions of a packed batch.

    Runs the decoder over every token but the LM head only where a trained token follows, which
    saves most of the head's FLOPs and memory (the head is ~28% of a 0.5B Qwen's parameters).
    """

    def __init__(self, model, attention: str):
        super().__init__()
        self.model = model  # a peft model (or a plain causal LM)
        self.attention = attention
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        cfg = base.config
        self.full_logits = bool(getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None))

    def forward(self, batch) -> torch.Tensor:
        return F.cross_entropy(label_logits(self.model, batch, self.attention, self.full_logits).float(), batch.targets,
                               reduction="sum")


def label_logits(model, batch, attention: str, full_logits: bool = False) -> torch.Tensor:
    """Logits [N, V] at the trained positions of a packed batch (`batch.hidden_index`), the LM head run on those
    alone unless the model's head does more than a matmul (`full_logits`)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kw = attention_kwargs(batch, attention)
    if full_logits:  # models whose head does more than a matmul: let them compute all logits
        logits = base(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False, **kw).logits
        return logits.flatten(0, 1).index_select(0, batch.hidden_index)
    hidden = base.get_decoder()(input_ids=batch.input_ids, position_ids=batch.position_ids,
                                use_cache=False, **kw).last_hidden_state
    return base.get_output_embeddings()(hidden.flatten(0, 1).index_select(0, batch.hidden_index))


def packed_logits(model, batch, attention: str) -> torch.Tensor:
    """Logits [B, L, V] of a packed batch (for tests and checks)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                **attention_kwargs(batch, attention)).logits


def check_varlen(model, device) -> str | None:
    """On CUDA, compare varlen attention with sdpa on a small packed batch (forward + backward).

    Returns None when they agree, else the reason (the caller then falls back to sdpa).
    """
    import random

    from selfid.train.collate import Encoded, collate

    try:
        rng = random.Random(0)
        vocab = int(model.config.vocab_size) if hasattr(model, "config") else 1000
        enc = []
        for n in (37, 64, 21, 90):
            ids = torch.tensor([rng.randrange(min(vocab, 1000)) for _ in range(n)]).numpy()
            enc.append(Encoded(ids, torch.arange(1, n).numpy()))
        batch = collate(enc, [[0, 1, 2], [3]], 128, 0).to(device)
        outs = []
        for choice in ("sdpa", "varlen"):
            set_attention(model, choice, device)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = packed_logits(model, batch, choice).float()
            logits.mean().backward()  # the kernel must have a backward in this PyTorch
            model.zero_grad(set_to_none=True)
            outs.append(logits.detach())
        err = (outs[0] - outs[1]).abs().max().item()
        scale = outs[0].abs().max().item() + 1e-6
        if not err <= 0.05 * scale:
            return f"varlen and sdpa logits differ by {err:.3g} (scale {scale:.3g})"
        return None
    except Exception as e:  # an older kernel without backward or GQA support, etc.
        warnings.warn(f"varlen attention check failed: {e}")
        return f"{type(e).__name__}: {e}"
