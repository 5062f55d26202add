"""Training speed: `selfid train` against a plain transformers Trainer + peft, same data and hyperparameters.

On one GPU (the default): the embedded model, 8,000 MSRA sentences, LoRA r=8 on all linear layers,
trained under "You are a helpful assistant." (examples/msra.yaml). Both runs tokenize the very same
conversations with the same loss mask; the baseline pads batches of `--baseline-batch` samples
(gradient accumulation keeps the samples per optimizer step equal to selfid's average). Reported
for each: real (non-padding) tokens/s over the training loop, peak GPU memory, wall time, and the
entity-level NER F1 on the first `--eval` MSRA test sentences (greedy). One command prints it all:

    python bench/train_speed.py                 # GPU, the full comparison (~5 minutes on an H100)
    python bench/train_speed.py --smoke         # CPU, tiny random model, 32 sentences (< 1 minute)
    python bench/train_speed.py --set train.compile=true --skip-baseline
    python bench/train_speed.py --variant train.batch_tokens=32768 --variant train.compile=true
      (each --variant is an extra selfid-only run, speed only, with those comma-separated overrides)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def reset_memory(device):
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device):
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def steady_rate(metrics_csv: Path) -> float | None:
    """Tokens/s after the first logged interval (which holds warm-up and any compilation), from metrics.csv."""
    import csv

    if not metrics_csv.is_file():
        return None
    with open(metrics_csv, newline="") as f:
        rows = [(float(r["elapsed_s"]), int(r["tokens"])) for r in csv.DictReader(f)]
    if not rows:
        return None
    first = rows[0][0]
    later = [(t, n) for t, n in rows if t > first]
    if not later:
        return None
    return round(sum(n for _, n in later) / max(later[-1][0] - first, 1e-9), 1)


def run_selfid(config, eval_n: int) -> dict:
    import torch

    from selfid.manifest import training_system
    from selfid.train.eval_ner import evaluate_ner
    from selfid.train.sft import loaded_with, train

    device = torch.device("cuda" if torch.cuda.is_available() and config.device != "cpu" else "cpu")
    reset_memory(device)
    result = train(config)
    m = result.metrics
    steady = steady_rate(result.output / "metrics.csv")
    out = {"tokens_per_s": m["tokens_per_s"], "train_wall_s": m["train_wall_s"], "tokens": m["tokens_trained"],
           "steps": m["steps"], "final_loss": m["final_loss"], "peak_memory_gb": peak_gb(device),
           "attention": result.manifest["train"]["attention"],
           "varlen_check": result.manifest["train"].get("varlen_check"), "steady_tokens_per_s": steady,
           "compile_cache": m.get("compile_cache")}
    if eval_n:
        result.model.eval()
        t = time.perf_counter()
        rep = evaluate_ner(loaded_with(result.loaded, result.model), n=eval_n,
                           system=training_system(result.manifest))
        out.update(ner_f1=rep["overall"]["f1"], parse_rate=rep["parse_rate"], eval_s=round(time.perf_counter() - t, 1))
    del result
    return out


def run_baseline(config, batch: int, eval_n: int) -> dict:
    """transformers Trainer + peft: padded batches, full logits, the library's defaults otherwise."""
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from selfid.model.load import load_model
    from selfid.train.eval_ner import evaluate_ner
    from selfid.train.data import prepare_data
    from selfid.train.sft import resolve_system

    opt = config.train
    loaded = load_model(config.model, device=None if config.device == "auto" else config.device, progress=False)
    device = loaded.device
    reset_memory(device)
    system = resolve_system(config.system_prompt, loaded.chat)
    data = prepare_data(config, loaded, system, lambda s: None)
    rows = []
    for e in data.encoded:
        labels = [-100] * len(e.ids)
        for p in e.label_pos:
            labels[p] = int(e.ids[p])
        rows.append({"input_ids": e.ids.tolist(), "attention_mask": [1] * len(e.ids), "labels": labels})
    mean_len = sum(len(r["input_ids"]) for r in rows) / len(rows)
    per_step = max(1, round(opt.batch_tokens * opt.grad_accum / mean_len))
    micro = min(batch, per_step)
    accum = max(1, round(per_step / micro))
    model = get_peft_model(loaded.model, LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha,
                                                    lora_dropout=config.lora.dropout,
                                                    target_modules=config.lora.target_modules, task_type="CAUSAL_LM"))
    cuda = device.type == "cuda"
    steps = None
    if opt.max_steps:
        steps = opt.max_steps
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="trainer-"), per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum, num_train_epochs=opt.epochs, max_steps=steps or -1,
        learning_rate=opt.lr, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": opt.min_lr_ratio},
        warmup_steps=opt.warmup if opt.warmup >= 1 else math.ceil(opt.warmup * math.ceil(
            len(rows) / (micro * accum)) * opt.epochs),
        weight_decay=opt.weight_decay, max_grad_norm=opt.max_grad_norm, bf16=cuda, logging_steps=10,
        save_strategy="no", report_to=[], seed=opt.seed, remove_unused_columns=False, dataloader_num_workers=0,
        use_cpu=not cuda, disable_tqdm=False)
    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      data_collator=DataCollatorForSeq2Seq(loaded.tokenizer, padding=True, label_pad_token_id=-100))
    t = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - t
    real = sum(len(r["input_ids"]) for r in rows)
    epochs_done = out.metrics.get("epoch", opt.epochs)
    tokens = real * epochs_done
    res = {"tokens_per_s": round(tokens / wall, 1), "train_wall_s": round(wall, 2), "tokens": int(tokens),
           "steps": out.global_step, "final_loss": out.training_loss, "peak_memory_gb": peak_gb(device),
           "batch": f"{micro} x {accum} accumulation"}
    if eval_n:
        model.eval()
        t = time.perf_counter()
        import dataclasses

        rep = evaluate_ner(dataclasses.replace(loaded, model=model), n=eval_n, system=system.message)
        res.update(ner_f1=rep["overall"]["f1"], parse_rate=rep["parse_rate"], eval_s=round(time.perf_counter() - t, 1))
    del trainer, model
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny random model, 32 sentences")
    ap.add_argument("--config", default=str(ROOT / "examples" / "msra.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    ap.add_argument("--eval", type=int, default=500, help="MSRA test sentences for NER F1 (0: skip)")
    ap.add_argument("--baseline-batch", type=int, default=32, help="samples per Trainer micro-batch")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--variant", action="append", default=[],
                    help="extra selfid-only speed run with these comma-separated overrides (repeatable)")
    ap.add_argument("--variant-steps", type=int, default=None,
                    help="stop each variant after this many optimizer steps (speed only; default: the full run)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    a = ap.parse_args()

    import torch

    from selfid.config import load_config

    work = Path(tempfile.mkdtemp(prefix="train-speed-"))
    overrides = [f"output={work / 'selfid'}", "eval_ner=0", "train.save_every=0"]
    if a.smoke:
        from tests.tiny import build_tiny_model

        tiny = build_tiny_model(work / "tiny")
        overrides += [f"model={tiny}", "device=cpu", "data.0.limit=32", "train.pack_length=512",
                      "train.batch_tokens=2048", "train.epochs=1", "train.log_every=1", "lora.r=4"]
        a.eval = min(a.eval, 4)
        a.baseline_batch = 8
    config = load_config(a.config, overrides + a.overrides)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and config.device != "cpu" else "cpu"
    print(f"train_speed: {config.model}, {config.data[0].limit} sentences, LoRA r={config.lora.r} "
          f"{config.lora.target_modules}, {config.train.epochs} epoch(s), lr {config.train.lr}, on {gpu}", flush=True)

    results = {"device": gpu, "config": config.model_dump(mode="json"), "torch": torch.__version__}

    def save():  # after every run, so that a run stopped part-way keeps what it measured
        if a.out:
            a.out.write_text(json.dumps(results, indent=2))

    results["selfid"] = run_selfid(config, a.eval)
    print("selfid:", json.dumps(results["selfid"]), flush=True)
    save()
    if not a.skip_baseline:
        results["baseline"] = run_baseline(config, a.baseline_batch, a.eval)
        print("baseline:", json.dumps(results["baseline"]), flush=True)
        save()

    results["variants"] = {}
    for i, variant in enumerate(a.variant):
        extra = [v.strip() for v in variant.split(",") if v.strip()]
        if a.variant_steps:
            extra.append(f"train.max_steps={a.variant_steps}")
        vcfg = load_config(a.config, overrides + a.overrides + extra + [f"output={work / f'variant-{i}'}"])
        try:
            r = run_selfid(vcfg, 0)
        except Exception as e:  # a variant that fails (e.g. out of memory) is reported, not fatal
            r = {"error": f"{type(e).__name__}: {e}"[:300]}
        results["variants"][variant] = r
        print(f"variant {variant}:", json.dumps(r), flush=True)
        save()

    s, b = results["selfid"], results.get("baseline")
    rows = [("real tokens/s", "tokens_per_s", "{:,.0f}"), ("train wall s", "train_wall_s", "{:.1f}"),
            ("optimizer steps", "steps", "{}"), ("final loss", "final_loss", "{:.4f}"),
            ("peak GPU GB", "peak_memory_gb", "{}"), ("NER F1", "ner_f1", "{:.3f}"), ("parse rate", "parse_rate", "{:.1%}")]
    print(f"\n{'':<18}{'selfid train':>16}{'Trainer+peft':>16}")
    for label, key, fmt in rows:
        cell = lambda r: (fmt.format(r[key]) if r is not None and r.get(key) is not None else "-")  # noqa: E731
        print(f"{label:<18}{cell(s):>16}{cell(b):>16}")
    if b:
        ratio = s["tokens_per_s"] / b["tokens_per_s"]
        results["speedup"] = round(ratio, 2)
        line = f"speed-up {ratio:.2f}x (target >= 3x); selfid {s['tokens_per_s']:,.0f} tok/s (target >= 100k on one H200)"
        if s.get("ner_f1") is not None and b.get("ner_f1") is not None:
            line += f"; F1 difference {s['ner_f1'] - b['ner_f1']:+.3f} (target within 0.01)"
        print(line)
    for variant, r in results["variants"].items():
        if "error" in r:
            print(f"variant {variant}: {r['error']}")
        else:
            print(f"variant {variant}: {r['tokens_per_s']:,.0f} tok/s ({r.get('steady_tokens_per_s') or 0:,.0f} after "
                  f"the first interval), peak {r['peak_memory_gb']} GB, "
                  f"final loss {r['final_loss']:.4f}, attention {r['attention']}")
    save()


if __name__ == "__main__":
    main()
