"""Benchmark (GPU): `selfid train` with train.compile twice, cold then with the compile cache warm (issue 24).

    python bench/train_cache.py --out train_cache.json                  # examples/msra.yaml's whole run, 0.5B
    python bench/train_cache.py --set train.epochs=1 --out t.json       # one epoch of it
    python bench/train_cache.py --smoke                                 # CPU, tiny model: the script runs

Each run is its own process with its own empty inductor and Triton caches (TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR),
so the only thing the second run can reuse is what the first saved in selfid's compile cache (beside the converted
model, selfid/model/compile_cache.py); the first run starts with that entry deleted. Reported per run: real tokens/s
over the whole training loop (compilation included) and after the first logged interval, the loop's wall time, the
process's wall time (loading and compiling included), the final loss and the compile cache's status at start and end.
`--default-too` adds a third run without train.compile, for the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one(out: Path, overrides: list[str]) -> None:
    """One training run in this process (the child side); its numbers go to `out`."""
    from bench.train_speed import run_selfid
    from selfid.config import load_config

    t = time.perf_counter()
    config = load_config(str(ROOT / "examples" / "msra.yaml"), overrides)
    got = run_selfid(config, 0)
    got["process_wall_s"] = round(time.perf_counter() - t, 1)
    out.write_text(json.dumps(got))


def clear_train_cache(home: Path) -> int:
    """Delete the compile cache's training entries under SELFID_HOME (the cold run compiles from nothing)."""
    gone = 0
    for f in [*home.glob("models/*.compile/train-*"), *home.glob("compile/*/train-*")]:
        f.unlink()
        gone += 1
    return gone


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    ap.add_argument("--default-too", action="store_true", help="a third run without train.compile")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny random model, a few steps")
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one is not None:
        one(a.one, a.overrides)
        return
    from selfid.io import selfid_home

    work = Path(tempfile.mkdtemp(prefix="train-cache-"))
    base = ["eval_ner=0", "train.save_every=0"]
    if a.smoke:
        from tests.tiny import build_tiny_model

        tiny = build_tiny_model(work / "tiny")
        base += [f"model={tiny}", "device=cpu", "data.0.limit=32", "train.pack_length=512", "train.batch_tokens=2048",
                 "train.max_steps=3", "train.log_every=1", "lora.r=4"]
    runs = [("cold", ["train.compile=true"]), ("warm", ["train.compile=true"])]
    if a.default_too:
        runs.append(("default", ["train.compile=false"]))
    home = selfid_home()
    print(f"train_cache: {clear_train_cache(home)} earlier training entries deleted from {home}", file=sys.stderr)
    results: dict = {"overrides": base + a.overrides, "runs": {}}
    for name, extra in runs:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(work / f"inductor-{name}"),
               "TRITON_CACHE_DIR": str(work / f"triton-{name}")}
        got = work / f"{name}.json"
        cmd = [sys.executable, __file__, "--one", str(got)]
        for o in base + a.overrides + extra + [f"output={work / name}"]:
            cmd += ["--set", o]
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=ROOT)
        if proc.returncode != 0 or not got.is_file():
            results["runs"][name] = {"error": f"exit {proc.returncode}"}
        else:
            results["runs"][name] = {**json.loads(got.read_text()), "wall_s": round(time.perf_counter() - t, 1)}
        print(f"{name}: {json.dumps(results['runs'][name])}", flush=True)
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(results, indent=2))
    print(f"\n{'run':<9}{'tok/s whole':>13}{'tok/s steady':>14}{'loop s':>8}{'process s':>11}{'loss':>9}  compile cache")
    for name, r in results["runs"].items():
        if "error" in r:
            print(f"{name:<9} {r['error']}")
            continue
        cache = r.get("compile_cache") or {}
        print(f"{name:<9}{r['tokens_per_s']:>13,.0f}{r.get('steady_tokens_per_s') or 0:>14,.0f}{r['train_wall_s']:>8.1f}"
              f"{r['process_wall_s']:>11.1f}{r['final_loss']:>9.4f}  {cache.get('at_start')} -> {cache.get('at_end')}")


if __name__ == "__main__":
    main()
