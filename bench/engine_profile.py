"""Where a decoding step's time goes: wall time per step against the GPU's kernel time per step.

For 1, 32 and 1,024 rows (streaming requests for 1 and 32, as `selfid api` sends them; plain requests for
1,024, as the audit does), with the model's sampling defaults and up to 64 new tokens, this times the
engine three ways: plainly (wall ms per step), under torch.profiler (the kernels' own time per step, so
wall minus kernels is what the host adds: Python, sampling launches, read-backs), and under cProfile (the
host functions that cost most, by own time). The profiled passes are slower than the plain one; their
kernel times and function rankings are what they are for.

    python bench/engine_profile.py --out engine_profile.json      # CUDA, the embedded model
    python bench/engine_profile.py --smoke                        # CPU, tiny random model: proves it runs
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTIONS = ["你是谁？", "Who are you?", "Who created you?", "请介绍一下你自己。", "What model are you based on?",
             "Write a Python function that checks whether a string is a palindrome.", "用一句话解释什么是机器学习。",
             "Explain the difference between a list and a tuple in Python.", "你的开发者是谁？", "What can you help me with?"]


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def steps_taken(engine) -> int:
    stats = engine.decode_report().get("stats") or {}
    return stats.get("graph_steps", 0) + stats.get("plain_steps", 0)


def run_once(engine, requests) -> int:
    """Run the requests to completion (consuming every event, as a server would); generated tokens."""
    tokens = 0
    for ev in engine.events(requests):
        if ev.finished is not None:
            tokens += len(ev.finished.token_ids)
    return tokens


def measure(engine, loaded, make, rows: int, label: str, top: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    run_once(engine, make())  # warm: captures, allocations
    before = steps_taken(engine)
    sync(loaded.device)
    t = time.perf_counter()
    tokens = run_once(engine, make())
    sync(loaded.device)
    wall = time.perf_counter() - t
    steps = max(steps_taken(engine) - before, 1)
    out = {"label": label, "rows": rows, "tokens": tokens, "steps": steps, "wall_s": round(wall, 4),
           "wall_ms_per_step": round(1000 * wall / steps, 3), "tokens_per_s": round(tokens / wall, 1)}
    if loaded.device.type == "cuda":
        acts = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
        with profile(activities=acts) as prof:
            run_once(engine, make())
            torch.cuda.synchronize()
        events = prof.key_averages()
        kernel_us = sum(e.self_device_time_total for e in events)
        out["kernel_ms_per_step"] = round(kernel_us / 1000 / steps, 3)
        out["host_ms_per_step"] = round(out["wall_ms_per_step"] - out["kernel_ms_per_step"], 3)
        ranked = sorted(events, key=lambda e: -e.self_device_time_total)[:top]
        out["top_device_ops"] = [{"op": e.key[:80], "ms_per_step": round(e.self_device_time_total / 1000 / steps, 4),
                                  "calls": e.count} for e in ranked if e.self_device_time_total > 0]
    prof = cProfile.Profile()
    prof.enable()
    run_once(engine, make())
    sync(loaded.device)
    prof.disable()
    stats = pstats.Stats(prof)
    ranked = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]  # (file, line, fn) -> (cc, nc, tt, ct, callers)
    out["top_host_functions"] = [{"function": f"{Path(k[0]).name}:{k[1]}:{k[2]}", "own_ms_per_step": round(1000 * v[2] / steps, 4),
                                  "calls": v[1]} for k, v in ranked]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--decode", default=None, choices=["auto", "eager", "static", "graph", "compiled"])
    ap.add_argument("--rows", default="1,32,1024", help="batch sizes, comma-separated")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--top", type=int, default=15, help="entries in each ranking")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny random model, small batches")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from selfid.engine import InProcessEngine, Request, SamplingParams
    from selfid.model.chat import conversation
    from selfid.model.load import load_model

    if args.smoke:
        from tests.tiny import build_tiny_model

        args.model = str(build_tiny_model(Path(tempfile.mkdtemp(prefix="selfid-tiny-"))))
        args.device, args.rows, args.max_new_tokens = "cpu", "1,8", 8
        args.decode = args.decode or "static"
    loaded = load_model(args.model, device=args.device, progress=False)
    sizes = [int(x) for x in args.rows.split(",")]
    engine = InProcessEngine(loaded, max_batch_size=max(sizes), decode=args.decode)
    prompts = [loaded.chat.render(conversation(q)).text for q in QUESTIONS]

    def maker(n: int):
        def make():
            return [Request(prompts[i % len(prompts)], SamplingParams.from_defaults(
                loaded.generation_defaults, max_new_tokens=args.max_new_tokens, seed=i), stream=n <= 32)
                for i in range(n)]
        return make

    results = [measure(engine, loaded, maker(n), n, f"{n} rows" + (" streaming" if n <= 32 else ""), args.top)
               for n in sizes]
    import torch

    report = {"bench": "engine_profile", "model": args.model, "device": str(loaded.device),
              "gpu": torch.cuda.get_device_name(0) if loaded.device.type == "cuda" else None,
              "decode": engine.decode_report(), "max_new_tokens": args.max_new_tokens, "results": results}
    for r in results:
        kern = f", kernels {r['kernel_ms_per_step']} ms, host {r['host_ms_per_step']} ms" if "kernel_ms_per_step" in r else ""
        print(f"{r['label']:>20}: {r['steps']} steps, {r['wall_ms_per_step']} ms a step{kern}, {r['tokens_per_s']} tok/s")
        for f in r["top_host_functions"][:8]:
            print(f"{'':>22}{f['own_ms_per_step']:8.3f} ms/step  {f['function']}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
