"""How far a fine-tuned model's per-prompt rates move from its base model's beyond sampling noise: the constant
`selfid gate --plan` sizes grids with (selfid/gate/power.py INTERACTION).

For each committed pair base vs plain LoRA (0.5B and 1.5B, development and held-out sets) and each metric x system
prompt with at least 10 prompts, the observed variance of the per-prompt differences minus what each reply's own
noise explains (p(1-p)/n on either side), as a share of p(1-p):

    kappa = (var(d_i) - mean(w_a/n_a + w_b/n_b)) / mean(w_a)

    python bench/gate_interaction.py [--out interaction.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "results"
PAIRS = [(f"study-{size}/base/{split}", f"study-{size}/plain/{split}") for size in ("0.5b", "1.5b")
         for split in ("audit", "heldout")]


def _w(k: int, n: int) -> float:
    p = k / n
    return p * (1 - p) * n / (n - 1) if n > 1 else p * (1 - p)


def kappas() -> dict[str, list[float]]:
    from selfid.gate.tallies import read

    out: dict[str, list[float]] = {}
    for a_dir, b_dir in PAIRS:
        a, b = read(ROOT / a_dir), read(ROOT / b_dir)
        for metric, by_system in a.rates.items():
            for system, ra in by_system.items():
                rb = b.rates.get(metric, {}).get(system)
                if not rb:
                    continue
                shared = sorted(p for p in ra.keys() & rb.keys() if ra[p][1] and rb[p][1])
                if len(shared) < 10:
                    continue
                d = [rb[p][0] / rb[p][1] - ra[p][0] / ra[p][1] for p in shared]
                sampling = statistics.fmean(_w(*ra[p]) / ra[p][1] + _w(*rb[p]) / rb[p][1] for p in shared)
                w = statistics.fmean(_w(*ra[p]) for p in shared)
                if w > 0:
                    kappa = (statistics.variance(d) - sampling) / w
                    out.setdefault(metric, []).append(kappa)
                    print(f"{a_dir:26s} {metric:20s} {system:13s} prompts={len(shared):3d} kappa={kappa:+.3f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    found = kappas()
    summary = {}
    for metric, values in [*found.items(), ("all", [v for vs in found.values() for v in vs])]:
        values = sorted(values)
        summary[metric] = {"cells": len(values), "median": statistics.median(values),
                           "q75": values[int(0.75 * len(values))]}
        print(f"{metric:20s} cells={len(values):3d} median={summary[metric]['median']:.3f} q75={summary[metric]['q75']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
