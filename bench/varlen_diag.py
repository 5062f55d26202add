"""Why the varlen start-up check passes or fails on this machine: varlen vs sdpa vs a float32 reference.

On the packed batch the training check uses (two rows of 128, each ending in a padding segment) this
prints, for bf16 sdpa and bf16 varlen against the same model in float32 (sdpa), the per-position
logit error at real tokens and at padding separately, what the check decides now, and what the old
check (largest absolute difference over every position against 5% of the largest logit) would have
decided. The kernel alone against float32 attention is reported too.

    python bench/varlen_diag.py --out varlen.json          # CUDA, the embedded model
    python bench/varlen_diag.py --smoke                    # CPU, tiny model, a stand-in kernel
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def stand_in_kernel(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
    """Causal attention per segment in torch: the CPU has no varlen kernel (for --smoke only)."""
    import torch

    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    out = torch.empty_like(q)
    b = cu_q.tolist()
    for a, e in zip(b, b[1:]):
        out[a:e] = torch.nn.functional.scaled_dot_product_attention(
            q[a:e].transpose(0, 1), k[a:e].transpose(0, 1), v[a:e].transpose(0, 1), is_causal=True,
            scale=scale).transpose(0, 1)
    return out


def per_position(ref, got, real) -> dict:
    """Largest absolute and relative (L2 over the vocabulary) logit error at real tokens and at padding."""
    diff = (got.float() - ref.float())
    rel = diff.norm(dim=-1) / ref.float().norm(dim=-1).clamp(min=1e-6)
    out = {}
    for name, where in (("real", real), ("padding", ~real)):
        if where.any():
            out[name] = {"abs_max": round(float(diff.abs().amax(-1)[where].max()), 4),
                         "rel_max": round(float(rel[where].max()), 5), "rel_mean": round(float(rel[where].mean()), 5),
                         "positions": int(where.sum())}
    worst = rel.masked_fill(~real, -1).flatten().argmax()
    out["worst_real_position"] = {"row": int(worst // real.shape[1]), "col": int(worst % real.shape[1])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny random model, a torch stand-in for the kernel")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model

    from selfid.model.load import load_model
    from selfid.train import packed

    device = None
    if a.smoke:
        from tests.tiny import build_tiny_model

        a.model = str(build_tiny_model(Path(tempfile.mkdtemp(prefix="varlen-diag-"))))
        device = "cpu"
        packed._varlen_fn = lambda: stand_in_kernel
    loaded = load_model(a.model, device=device, progress=False)
    dev = loaded.device
    result = {"bench": "varlen_diag", "model": a.model, "device": str(dev), "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
              "varlen_available": dev.type == "cuda" and packed._varlen_fn() is not None or a.smoke}
    if not result["varlen_available"]:
        result["error"] = "no varlen kernel here (needs CUDA and torch.nn.attention.varlen)"
        print(json.dumps(result))
        if a.out:
            a.out.write_text(json.dumps(result, indent=2))
        return
    try:
        import inspect

        result["varlen_signature"] = str(inspect.signature(packed._varlen_fn()))
    except (TypeError, ValueError):
        pass
    # as training has it: LoRA on all linear layers (zero-initialised B, so the same function), fp32 LoRA weights
    model = get_peft_model(loaded.model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    logits: dict = {}
    report = packed.varlen_report(model, dev, keep=logits)  # the logits it judged, for the per-position detail
    real = logits.pop("real")
    result["check"] = {"report": report, "reason": packed.judge(report)}
    print(f"check: {result['check']['reason'] or 'passes'}; kernel vs float32 {report['kernel_rel_error']:.2e}; "
          f"worst real-token relative error {report['rel_max_real']:.3g}; padding max abs {report['abs_max_padding']:.3g}",
          flush=True)

    old_err = float((logits["sdpa"] - logits["varlen"]).abs().max())
    old_scale = float(logits["sdpa"].abs().max())
    result["old_check"] = {"abs_max_all_positions": round(old_err, 4), "scale": round(old_scale, 3),
                           "passes": old_err <= 0.05 * old_scale}
    result["vs_float32"] = {k: per_position(logits["float32"], logits[k], real) for k in ("sdpa", "varlen")}
    result["varlen_vs_sdpa"] = per_position(logits["sdpa"], logits["varlen"], real)
    for name, r in result["vs_float32"].items():
        print(f"{name:>6} vs float32: real max abs {r['real']['abs_max']}, rel max {r['real']['rel_max']}, "
              f"padding max abs {r.get('padding', {}).get('abs_max')}", flush=True)
    vs = result["varlen_vs_sdpa"]
    print(f"varlen vs sdpa: real max abs {vs['real']['abs_max']} (rel {vs['real']['rel_max']}), padding max abs "
          f"{vs.get('padding', {}).get('abs_max')}; old check: {old_err:.3g} vs 5% of {old_scale:.3g} -> "
          f"{'pass' if result['old_check']['passes'] else 'FAIL'}", flush=True)
    print(json.dumps({k: result[k] for k in ("old_check",)}))
    if a.out:
        a.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
