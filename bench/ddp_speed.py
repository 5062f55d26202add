"""Two GPUs against one: `torchrun --nproc_per_node N selfid train` with the config one GPU runs.

Both runs train on the same global batches: the one-process run accumulates N micro-batches per step
where the N processes take one each (train.grad_accum=N), so the loss curves should match step for step
within noise. Reported: real tokens/s of each, their ratio, and the loss curves side by side.

    python bench/ddp_speed.py --out ddp.json                       # CUDA, 2 GPUs, examples/msra.yaml, 1 epoch
    python bench/ddp_speed.py --smoke                              # CPU, 2 gloo processes, tiny model
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str], env: dict, timeout: float) -> tuple[int, str, float]:
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return p.returncode, (p.stdout + p.stderr)[-4000:], time.perf_counter() - t


def curve(output: Path) -> list[tuple[int, float]]:
    with open(output / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def main() -> None:
    from selfid.manifest import read as read_manifest

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "examples" / "msra.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny random model, gloo")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ddp-speed-"))
    sets = ["eval_ner=0", "train.save_every=0", "train.epochs=1", "train.log_every=1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    if a.smoke:
        sys.path.insert(0, str(ROOT))
        from tests.tiny import build_tiny_model

        tiny = build_tiny_model(work / "tiny")
        sets += [f"model={tiny}", "device=cpu", "data.0.limit=48", "train.pack_length=512", "train.batch_tokens=512",
                 "lora.r=4", "train.max_steps=4"]
        env["OMP_NUM_THREADS"] = "1"
    sets += a.overrides
    base = [sys.executable, "-m", "selfid.cli", "train", a.config] + [x for s in sets for x in ("--set", s)]
    one = base + ["--set", f"output={work / 'one'}", "--set", f"train.grad_accum={a.procs}"]
    many = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.procs}", "-m",
             "selfid.cli", "train", a.config] + [x for s in sets for x in ("--set", s)]
            + ["--set", f"output={work / 'many'}"])
    result = {"bench": "ddp_speed", "procs": a.procs, "config": a.config, "overrides": sets, "smoke": a.smoke}
    for name, cmd in (("one", one), ("many", many)):
        print(f"{name}: {' '.join(cmd[:8])} ...", flush=True)
        rc, tail, wall = run(cmd, env, a.timeout)
        out = work / name
        manifest = read_manifest(out / "adapter") if rc == 0 else None
        if manifest is None:
            result[name] = {"error": f"exit {rc}", "log_tail": tail[-2000:]}
            print(f"{name}: failed (exit {rc})\n{tail[-1500:]}", flush=True)
            continue
        metrics = manifest.record()["metrics"]
        result[name] = {"tokens_per_s": metrics.get("tokens_per_s"), "train_wall_s": metrics.get("train_wall_s"),
                        "steps": metrics.get("steps"), "final_loss": metrics.get("final_loss"), "wall_s": round(wall, 1),
                        "curve": curve(out)}
        print(f"{name}: {metrics.get('tokens_per_s'):,.0f} tokens/s, final loss {metrics.get('final_loss'):.4f}, "
              f"{metrics.get('steps')} steps", flush=True)
    if "tokens_per_s" in result.get("one", {}) and "tokens_per_s" in result.get("many", {}):
        r1, r2 = result["one"], result["many"]
        result["speedup"] = round(r2["tokens_per_s"] / r1["tokens_per_s"], 2)
        pairs = [(l1, l2) for (s1, l1), (s2, l2) in zip(r1["curve"], r2["curve"]) if s1 == s2]
        diffs = [abs(x - y) for x, y in pairs]
        result["loss_curve"] = {"steps_compared": len(pairs), "max_abs_diff": round(max(diffs), 4) if diffs else None,
                                "mean_abs_diff": round(sum(diffs) / len(diffs), 4) if diffs else None}
        print(f"{a.procs} processes vs 1: {result['speedup']:.2f}x tokens/s (goal >= 1.8x); loss curves over "
              f"{len(pairs)} steps differ by at most {result['loss_curve']['max_abs_diff']} "
              f"(mean {result['loss_curve']['mean_abs_diff']})", flush=True)
    if a.out:
        a.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
