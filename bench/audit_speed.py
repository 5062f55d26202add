"""Benchmark: the identity audit grid with selfid's engine vs plain transformers `generate`, same rows, same run.

The grid is what `selfid audit` runs: 64 identity prompts (32 zh, 32 en) x 3 system prompts (default,
helpful, empty) x temperatures 0, 0.7, 1.0 with 8 samples at each temperature above 0 (greedy is
deterministic, so one sample there): 64 x 3 x (1 + 8 + 8) = 3,264 generations of up to 64 new tokens.

  selfid:    run_audit() end to end (batched in-process engine, claim detection, the JSONL log, the report),
             after one probe has gone through the whole audit (first-use imports are not timed); the time
             while the engine decodes is reported beside it ("generation alone"; since each reply is scored and logged
             between decoding steps as it finishes, that figure also holds the scoring that overlapped decoding)
  baseline:  model.generate() over the same rendered prompts and sampling settings, in batches of the
             same size, sorted by prompt length like the engine does; HF applies one sampling config per
             call, so its batches are grouped by temperature

Same replies: greedy rows are compared with `generate`'s greedy replies; and the grid is run a second
time with eager decoding (`--compare-eager`, the default on CUDA, where selfid decodes from CUDA graphs)
to report whether the same seeds gave the same replies and how much faster the graphs were.

Usage:
  python bench/audit_speed.py                 # embedded model, CUDA when present
  python bench/audit_speed.py --smoke         # tiny random model on the CPU, small grid, under a minute
Prints a table and one JSON line (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def hf_baseline(loaded, rows, batch_size: int) -> tuple[float, int, list[list[int]]]:
    """Wall seconds, generated tokens and each row's generated ids (eos cut) for model.generate over
    `rows` = [(prompt text, params)]."""
    import torch

    tok, model, dev = loaded.tokenizer, loaded.model, loaded.device
    tok.padding_side = "left"
    eos = set(loaded.eos_token_ids)
    by_temp: dict[float, list] = {}
    for i, (text, p) in enumerate(rows):
        by_temp.setdefault(p.temperature, []).append((text, p, i))
    for group in by_temp.values():  # by prompt length, as selfid batches; outside the timing (selfid's sort is cheap)
        group.sort(key=lambda r: len(tok(r[0], add_special_tokens=False).input_ids))
    tokens = 0
    replies: list[list[int]] = [[] for _ in rows]
    sync(dev)
    start = time.perf_counter()
    for temp, group in by_temp.items():
        p = group[0][1]
        kw = dict(do_sample=False) if temp == 0 else dict(do_sample=True, temperature=temp, top_p=p.top_p, top_k=p.top_k)
        for i in range(0, len(group), batch_size):
            chunk = group[i:i + batch_size]
            enc = tok([t for t, _, _ in chunk], return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=p.max_new_tokens, repetition_penalty=p.repetition_penalty,
                                     pad_token_id=tok.pad_token_id, eos_token_id=sorted(eos), **kw)
            for (_, _, index), row in zip(chunk, out[:, enc.input_ids.shape[1]:].tolist()):
                n = 0
                for t in row:
                    n += 1
                    if t in eos:
                        break
                tokens += n
                replies[index] = [t for t in row[:n] if t not in eos]
    sync(dev)
    return time.perf_counter() - start, tokens, replies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny random model on the CPU, small grid")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--prompts", type=int, default=64, help="identity prompts (half zh, half en)")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=None, help="rows per batch for both (default: the engine's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--decode", default=None, choices=["auto", "eager", "static", "graph", "compiled"],
                    help="selfid's decode mode (default: the engine's, graph on CUDA)")
    ap.add_argument("--compare-eager", default=None, action=argparse.BooleanOptionalAction,
                    help="run the grid again with eager decoding and compare replies (default: on unless eager)")
    ap.add_argument("--out", type=Path, default=None, help="also write the result JSON here")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="selfid-bench-"))
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, tmp: Path) -> None:
    from selfid.audit.backends import InProcessBackend
    from selfid.audit.probes import load_suite, write_identity_subset
    from selfid.audit.report.summary import load_run
    from selfid.audit.run import AuditParams, run_audit, serving_systems
    from selfid.engine import InProcessEngine, SamplingParams
    from selfid.model.load import load_model

    if args.smoke:
        from tests.tiny import build_tiny_model

        args.model, args.device = str(build_tiny_model(tmp / "tiny")), "cpu"
        args.prompts, args.samples, args.max_new_tokens = min(args.prompts, 8), min(args.samples, 2), min(args.max_new_tokens, 16)
        args.decode = args.decode or "static"  # the CPU's stand-in for the graph path
    loaded = load_model(args.model, device=args.device, progress=False)
    engine = InProcessEngine(loaded, max_batch_size=args.batch_size, decode=args.decode)
    batch = engine.max_batch_size
    compare = args.compare_eager if args.compare_eager is not None else engine.decode_mode != "eager"

    probes = load_suite("identity")
    half = args.prompts // 2
    chosen = [p for p in probes if p.lang == "zh"][:half] + [p for p in probes if p.lang == "en"][:args.prompts - half]
    probe_file = write_identity_subset(tmp / "identity.jsonl", [p.id for p in chosen])
    params = AuditParams(suites=["identity"], systems=serving_systems(), temperatures=[0.0, 0.7, 1.0],
                         samples=args.samples, max_new_tokens=args.max_new_tokens, ner_limit=1, own="qwen",
                         identity_probes=str(probe_file))

    warm = loaded.chat.render([{"role": "user", "content": "hi"}]).text  # CUDA/kernels warm-up for both
    engine.generate([warm] * 2, SamplingParams(max_new_tokens=4))
    hf_baseline(loaded, [(warm, SamplingParams(max_new_tokens=4))], batch)
    # one probe through the whole audit first, so the timed run pays no first-use costs (imports of the
    # report's statistics, regex compilation) that the `generate` baseline never has
    warm_params = AuditParams(suites=["identity"], systems=serving_systems(), temperatures=[0.0], samples=1,
                              max_new_tokens=4, ner_limit=1, own="qwen", identity_probes=str(write_identity_subset(tmp / "warm.jsonl", [chosen[0].id])))
    run_audit(InProcessBackend(loaded, engine), warm_params, tmp / "warm", show_progress=False, margin=False)

    def audit(eng, name):
        """(seconds end to end, seconds while the engine decodes, the log's records with verdicts). The audit hands
        each reply to the log and its scorer as it finishes, between decoding steps, so the second figure also holds
        the scoring that overlapped decoding."""
        inside = [0.0]
        real = eng.events

        def timed(*a, **kw):
            sync(loaded.device)
            t = time.perf_counter()
            try:
                yield from real(*a, **kw)
            finally:
                sync(loaded.device)
                inside[0] += time.perf_counter() - t

        eng.events = timed
        sync(loaded.device)
        start = time.perf_counter()
        try:
            run_audit(InProcessBackend(loaded, eng), params, tmp / name, show_progress=False, margin=False)
        finally:
            del eng.events
        sync(loaded.device)
        return time.perf_counter() - start, inside[0], load_run(tmp / name)[1]

    selfid_s, selfid_gen_s, records = audit(engine, "run")
    selfid_tokens = sum(r.record["completion_tokens"] for r in records)
    print(f"selfid audit: {selfid_s:.2f} s end to end, {selfid_gen_s:.2f} s generating "
          f"({engine.decode_report().get('using')} decoding)", flush=True)

    rows = [(r.record["rendered"], SamplingParams.from_defaults(loaded.generation_defaults, temperature=r.temperature,
                                                                max_new_tokens=args.max_new_tokens)) for r in records]
    hf_s, hf_tokens, hf_ids = hf_baseline(loaded, rows, batch)
    greedy = [(r, ids) for r, ids in zip(records, hf_ids) if r.temperature == 0]
    tok = loaded.tokenizer
    greedy_same = sum(r.reply == tok.decode(ids, skip_special_tokens=True) for r, ids in greedy)

    eager = None
    if compare:
        eager_engine = InProcessEngine(loaded, max_batch_size=args.batch_size, decode="eager")
        eager_engine.generate([warm] * 2, SamplingParams(max_new_tokens=4))
        eager_s, eager_gen_s, eager_records = audit(eager_engine, "eager")
        mine = {(r.key, r.system, r.temperature, r.sample): r.reply for r in records}
        theirs = {(r.key, r.system, r.temperature, r.sample): r.reply for r in eager_records}
        same = [k for k in mine if theirs.get(k) == mine[k]]
        by_temp = {}
        for k in mine:
            t = by_temp.setdefault(str(k[2]), [0, 0])
            t[0] += theirs.get(k) == mine[k]
            t[1] += 1
        eager = {"seconds": round(eager_s, 2), "speedup_vs_eager": round(eager_s / selfid_s, 2),
                 "generate_seconds": round(eager_gen_s, 2), "generate_speedup_vs_eager": round(eager_gen_s / selfid_gen_s, 2),
                 "identical_replies": len(same), "replies": len(mine),
                 "identical_by_temperature": {t: f"{a}/{n}" for t, (a, n) in by_temp.items()},
                 "foreign_claims": {s: sum(bool(r.verdict.foreign) for r in eager_records if r.system == s)
                                    for s in params.systems}}
        print(f"eager decoding: {eager_s:.2f} s; identical replies {len(same)}/{len(mine)} "
              f"({', '.join(f'T={t}: {v}' for t, v in eager['identical_by_temperature'].items())})", flush=True)

    import torch

    result = {
        "bench": "audit_speed", "smoke": args.smoke, "model": args.model, "device": str(loaded.device),
        "gpu": torch.cuda.get_device_name(0) if loaded.device.type == "cuda" else None,
        "dtype": str(next(loaded.model.parameters()).dtype).replace("torch.", ""), "torch": torch.__version__,
        "grid": {"prompts": len(chosen), "systems": 3, "temperatures": [0, 0.7, 1.0], "samples": args.samples,
                 "generations": len(records), "max_new_tokens": args.max_new_tokens, "batch_size": batch},
        "selfid": {"seconds": round(selfid_s, 2), "generate_seconds": round(selfid_gen_s, 2), "tokens": selfid_tokens,
                   "tokens_per_s": round(selfid_tokens / selfid_s, 1)},
        "hf_generate": {"seconds": round(hf_s, 2), "tokens": hf_tokens, "tokens_per_s": round(hf_tokens / hf_s, 1)},
        "speedup_tokens_per_s": round((selfid_tokens / selfid_s) / (hf_tokens / hf_s), 2),
        "speedup_wall": round(hf_s / selfid_s, 2),  # the whole audit (generation, verdicts, report) vs generation alone
        "speedup_generate": round(hf_s / selfid_gen_s, 2),  # generation vs generation
        "foreign_claims": {s: sum(bool(r.verdict.foreign) for r in records if r.system == s) for s in params.systems},
        "decode": engine.decode_report(),
        "greedy_identical_to_hf": {"identical": greedy_same, "greedy_replies": len(greedy)},
        "eager": eager,
    }
    print(f"grid: {len(records)} generations ({len(chosen)} prompts x 3 systems x T 0/0.7/1.0, {args.samples} samples "
          f"above 0), up to {args.max_new_tokens} new tokens, batch {batch}, {result['device']} {result['gpu'] or ''}")
    print(f"selfid audit   {selfid_s:8.2f} s  {selfid_tokens:8d} tok  {selfid_tokens / selfid_s:9.1f} tok/s  "
          f"(generating {selfid_gen_s:.2f} s)")
    print(f"hf generate    {hf_s:8.2f} s  {hf_tokens:8d} tok  {hf_tokens / hf_s:9.1f} tok/s")
    print(f"speedup        {result['speedup_tokens_per_s']:.2f}x tokens/s, {result['speedup_wall']:.2f}x wall (whole audit), "
          f"{result['speedup_generate']:.2f}x generation alone")
    print(f"greedy replies identical to generate's: {greedy_same}/{len(greedy)}")
    if eager:
        print(f"same seeds, eager decoding: {eager['identical_replies']}/{eager['replies']} identical replies, "
              f"graph/static decoding {eager['speedup_vs_eager']:.2f}x faster")
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
