"""Benchmark (GPU): `selfid api` decoding from uncompiled CUDA graphs (`graph`, today's default) against the compiled
decode step (`compiled`, issue 24), same machine, same run: one client, 16 and 32 clients, tokens/s and time to first
token; then, for each model, the compiled server started again right after its first start, to time a start that
finds its compiled steps in the compile cache.

    python bench/decode_speed.py --out decode.json                         # 0.5B, graph then compiled
    python bench/decode_speed.py --models embedded,embedded-1.5b --out decode.json
    python bench/decode_speed.py --smoke                                    # CPU, tiny model: the script runs

For each model and mode a server is started (`selfid api`, SELFID_DECODE=mode), timed from launch to its first
answered request (`start_s`: loading, the start-up check, the captures and, for `compiled`, compilation), then
bench/serve_load.py's closed-loop levels run (streaming, the model's sampling defaults, --max-tokens) for --seconds
each. The server's own account of its decoding (/health `decode`: mode in use, why a mode was refused, the compile
cache's status, step counters) is kept with each row, so a compiled server that fell back says so. `--budget` stops
starting new servers once that many seconds have passed (rows not run are listed as skipped).
Writes one JSON file (--out) and prints a table; the goals (issue 24) are printed beside it, met or not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import serve_load as sl  # noqa: E402

GOALS = {"embedded": {"one": 600, "32": 4000, "ttft16": 0.025}, "embedded-1.5b": {"one": 350}}


def serve(model: str, device: str, mode: str, clients: list[int], seconds: float, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    proc, url, log = sl.start_server(model, device, mode)
    row: dict = {"model": model, "mode": mode}
    try:
        health = sl.httpx.get(url + "/health").json()
        name = health["models"][0]
        asyncio.run(sl.level(url, name, 1, 4, requests=1))  # the first answer: the server is ready
        row["start_s"] = time.perf_counter() - t0
        row["device"] = health.get("device")
        row["levels"] = []
        for c in clients:
            before = sl.decode_report(url)
            got = asyncio.run(sl.level(url, name, c, max_tokens, requests=max(c * 2, 8), seconds=seconds))
            got["decode"] = sl.decode_delta(before, sl.decode_report(url))
            row["levels"].append(got)
        report = sl.decode_report(url) or {}
        row["decode"] = {k: report.get(k) for k in ("asked", "using", "reason", "compiled_refused", "compile_cache")}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    row["engine_log"] = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if "selfid" in ln][-8:]
    return row


def level(row: dict, clients: int) -> dict | None:
    return next((lv for lv in row.get("levels", []) if lv["clients"] == clients), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="embedded")
    ap.add_argument("--modes", default="graph,compiled", help="SELFID_DECODE values, in order")
    ap.add_argument("--clients", default="1,16,32")
    ap.add_argument("--seconds", type=float, default=8, help="each level's length")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-warm-start", action="store_true", help="skip starting the compiled server a second time")
    ap.add_argument("--budget", type=float, default=330, help="start no new server after this many seconds")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny random model, 1 and 2 clients, 2 s levels")
    args = ap.parse_args()
    models, modes = args.models.split(","), args.modes.split(",")
    clients = [int(c) for c in args.clients.split(",")]
    if args.smoke:
        from tests.tiny import build_tiny_model

        models = [str(build_tiny_model(Path(tempfile.mkdtemp(prefix="selfid-tiny-"))))]
        modes, clients, args.seconds, args.max_tokens, args.device = ["static", "compiled"], [1, 2], 2, 16, "cpu"
    # each model's second compiled start (the compile cache warm) right after its first, so that a budget that
    # runs out drops the later model rather than every warm start
    again = [] if args.no_warm_start or "compiled" not in modes else ["compiled"]
    plan = [(m, mode) for m in models for mode in [*modes, *again]]
    start, rows, skipped = time.perf_counter(), [], []

    def save(goals=None):  # after every server, so that a run stopped part-way (timeout -s INT) keeps what it measured
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"rows": rows, "goals": goals, "skipped": skipped,
                                            "seconds_per_level": args.seconds, "max_tokens": args.max_tokens,
                                            "wall_s": time.perf_counter() - start}, indent=2))

    for model, mode in plan:
        if time.perf_counter() - start > args.budget:
            skipped.append(f"{model} {mode}")
            continue
        print(f"[{time.perf_counter() - start:6.1f}s] {model} {mode}", file=sys.stderr)
        try:
            row = serve(model, args.device, mode, clients if (model, mode) not in [(r["model"], r["mode"]) for r in rows]
                        else clients[:1], args.seconds, args.max_tokens)
        except SystemExit as e:  # the server did not come up or a request failed: keep the others
            row = {"model": model, "mode": mode, "error": str(e)}
        row["start"] = "again (compile cache warm)" if any(r["model"] == model and r["mode"] == mode for r in rows) \
            else "first"
        rows.append(row)
        save()

    print(f"\n{'model':<15} {'mode':<9} {'start':<6} {'start s':>8} {'1 client tok/s':>15} {'TTFT p50 (1)':>13} "
          f"{'TTFT p50 (16)':>14} {'32 clients tok/s':>17}  decoding")
    for r in rows:
        one, sixteen, many = level(r, 1), level(r, 16), level(r, 32)
        dec = r.get("decode") or {}
        print(f"{Path(r['model']).name[:15]:<15} {r['mode']:<9} {r['start'][:5]:<6} {r.get('start_s', float('nan')):>8.1f} "
              f"{one['tokens_per_s'] if one else float('nan'):>15.1f} "
              f"{1000 * one['ttft_p50_s'] if one else float('nan'):>11.1f}ms "
              f"{1000 * sixteen['ttft_p50_s'] if sixteen else float('nan'):>12.1f}ms "
              f"{many['tokens_per_s'] if many else float('nan'):>17.1f}  "
              f"{dec.get('using')} {dec.get('compiled_refused') or ''} cache={dec.get('compile_cache')}"
              + (f"  ERROR {r['error']}" if "error" in r else ""))
    goals = []
    for r in rows:
        g = GOALS.get(r["model"], {})
        if r["mode"] != "compiled" or r["start"] != "first" or not g:
            continue
        one, sixteen, many = level(r, 1), level(r, 16), level(r, 32)
        if one and "one" in g:
            goals.append(f"{r['model']} 1 client >= {g['one']} tok/s: {one['tokens_per_s']:.0f} "
                         f"({'met' if one['tokens_per_s'] >= g['one'] else 'missed'})")
        if many and "32" in g:
            goals.append(f"{r['model']} 32 clients >= {g['32']} tok/s: {many['tokens_per_s']:.0f} "
                         f"({'met' if many['tokens_per_s'] >= g['32'] else 'missed'})")
        if sixteen and "ttft16" in g:
            goals.append(f"{r['model']} TTFT p50 at 16 clients <= {1000 * g['ttft16']:.0f} ms: "
                         f"{1000 * sixteen['ttft_p50_s']:.1f} ms ({'met' if sixteen['ttft_p50_s'] <= g['ttft16'] else 'missed'})")
    for line in goals:
        print("goal:", line)
    if skipped:
        print("skipped (budget):", ", ".join(skipped))
    save(goals)


if __name__ == "__main__":
    main()
