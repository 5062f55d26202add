"""Where `selfid gate`'s default thresholds come from: the minimum detectable effect (80% power, Holm over the
default cells) that `selfid gate --plan` computes at the quick profile, both runs at the profile, on the committed
held-out runs of the base model and plain LoRA at 0.5B and 1.5B; and the quick profile's size, time and MDE at 1.5B.

    python bench/gate_defaults.py [--out defaults.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "results"
RUNS = ["study-0.5b/base/heldout", "study-0.5b/plain/heldout", "study-1.5b/base/heldout", "study-1.5b/plain/heldout"]


def main() -> None:
    from selfid.gate.plan import Grid, plan, profile_grid
    from selfid.gate.tallies import read
    from selfid.gate.thresholds import Thresholds

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    thresholds = Thresholds()
    table: dict[str, dict[str, float]] = {}
    quick = None
    for name in RUNS:
        reference = read(ROOT / name)
        result = plan(reference, thresholds, profile_grid(Grid.of(reference.grid), "quick"), device="gpu")
        for c in result["cells"]:
            if c["mde_both"] is not None:
                row = table.setdefault(c["metric"], {})
                row[name] = max(row.get(name, 0.0), c["mde_both"])
        if name == "study-1.5b/base/heldout":
            quick = result
    print("largest MDE over system prompts, quick profile, both runs at it (points; NER: F1 points)")
    print(f"{'metric':22s}" + "".join(f"{n:>28s}" for n in RUNS) + f"{'largest':>10s}{'default':>9s}")
    for metric, row in table.items():
        largest = max(row.values())
        default = getattr(thresholds, metric)
        print(f"{metric:22s}" + "".join(f"{100 * row.get(n, float('nan')):28.1f}" for n in RUNS)
              + f"{100 * largest:10.1f}{default:9g}")
    print(f"\nquick profile at 1.5B: {quick['grid']['grid']}; {quick['grid']['generations']:,} generations per audit; "
          f"{quick['grid']['time']['seconds'] / 60:.1f} minutes of generation per audit on a GPU "
          f"({quick['grid']['time']['source']})")
    by_metric: dict[str, list] = {}
    for c in quick["cells"]:
        by_metric.setdefault(c["metric"], []).append(c)
    for metric, cells in by_metric.items():
        both = [c["mde_both"] for c in cells if c["mde_both"] is not None]
        recorded = [c["mde_recorded"] for c in cells if c["mde_recorded"] is not None]
        if both:
            print(f"  {metric:22s} MDE {100 * min(both):.1f}-{100 * max(both):.1f} (both at the profile); "
                  f"{100 * min(recorded):.1f}-{100 * max(recorded):.1f} (candidate at the profile, the committed "
                  "reference as recorded)")
    if args.out:
        args.out.write_text(json.dumps({"largest_mde": table, "quick_1.5b": quick}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
