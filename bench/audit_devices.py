"""Benchmark (issue 25): the held-out audit on one device against the same audit split over several
(`selfid audit --device cuda:0,cuda:1`), in one run, on one machine: wall time, the ratio, and whether every reply
is the same (key for key) as one device gives.

Each side is `selfid audit` as a user runs it (its own process: model load, grid, scoring, report), timed whole.

Usage (a machine with two GPUs):
  python bench/audit_devices.py --devices cuda:0,cuda:1                  # the embedded 0.5B, held-out split
  python bench/audit_devices.py --model embedded-1.5b --devices cuda:0,cuda:1
  python bench/audit_devices.py --smoke                                  # a tiny random model, two CPU processes
Prints one JSON line (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GRID = ["--suites", "identity-heldout", "--systems", "template,helpful,empty,personas", "--temperatures", "0,0.7,1.0,1.3",
        "--samples", "4", "--max-tokens", "160"]
SMOKE = ["--suites", "identity", "--systems", "template", "--temperatures", "0,1.0", "--samples", "2", "--max-tokens", "8"]


def audit(model: str, device: str, out: Path, grid: list[str]) -> float:
    """Wall seconds of one `selfid audit` process."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "selfid.cli", "audit", "--model", model, "--device", device, "--out", str(out),
                    "--own", "qwen", *grid], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def replies(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    return {(r["suite"], r["probe"], r["system"], r["temperature"], r["sample"]): r["reply"] for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--devices", default="cuda:0,cuda:1", help="the several devices; one side uses the first alone")
    ap.add_argument("--smoke", action="store_true", help="a tiny random model on two CPU processes, a small grid")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="selfid-devices-", ignore_cleanup_errors=True) as tmp:
        run(args, Path(tmp))


def run(args, tmp: Path) -> None:
    grid = GRID
    if args.smoke:
        from tests.tiny import build_tiny_model

        args.model, args.devices, grid = str(build_tiny_model(tmp / "tiny")), "cpu,cpu", SMOKE
    one = audit(args.model, args.devices.split(",")[0], tmp / "one", grid)
    several = audit(args.model, args.devices, tmp / "several", grid)
    a, b = replies(tmp / "one"), replies(tmp / "several")
    result = {"model": args.model, "devices": args.devices, "generations": len(a), "one_device_s": round(one, 2),
              "several_s": round(several, 2), "speedup": round(one / several, 3),
              "same_replies": sum(a[k] == b.get(k) for k in a), "of": len(a)}
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
