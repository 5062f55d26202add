"""Load on `selfid api`: 1, 8, 16 and 32 concurrent streaming clients; throughput, time to first token,
and how much batching buys over one client at a time.

    python bench/serve_load.py                       # starts `selfid api --model embedded` (CUDA when present)
    python bench/serve_load.py --url http://127.0.0.1:8000   # an already running server
    python bench/serve_load.py --profile host.txt    # and records the server with py-spy during the levels
    python bench/serve_load.py --smoke               # CPU, a tiny random model, well under a minute

Each level runs closed-loop clients: every client sends its next request as soon as its previous reply
ends. Requests stream with usage, so tokens are the server's own count (completion tokens only).

A level lasts --seconds (default 15): each client keeps sending requests until that many seconds have
passed since the level started; a reply still streaming then is closed (the client hangs up) and not
counted. The level's numbers count only the requests that finished: tokens/s is their completion tokens
over the level's wall time from its start to the end of the last finished request, requests/s likewise,
and TTFT and latency are theirs; `cut_off` says how many were closed unfinished. With --seconds 0 a level
is instead --rounds requests per client (at least 8), all of them run to the end, and the wall time runs
to the last one's end (the --smoke run does this, small, so that it stays fast).

The speedup column is the level's tokens/s over the 1-client (sequential) level's tokens/s. When the
server reports its decoding on /health (`decode`), each level records the engine's counters over that
level (graph vs plain decode steps, prefills, captures), so a level that fell back to eager steps shows.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "你是谁？", "Who are you?", "Who created you?", "请介绍一下你自己。", "What model are you based on?",
    "找出这句话中的人名、地名和机构名：新华社北京三月五日电，国务院总理在人民大会堂作政府工作报告。",
    "Write a Python function that checks whether a string is a palindrome.",
    "用一句话解释什么是机器学习。", "Explain the difference between a list and a tuple in Python.",
    "你的开发者是谁？", "What can you help me with?", "Summarise the plot of Romeo and Juliet in two sentences.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, device: str, decode: str | None = None) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    cmd = [sys.executable, "-m", "selfid.cli", "api", "--model", model, "--port", str(port), "--device", device]
    print(f"starting: {' '.join(cmd)}" + (f" (SELFID_DECODE={decode})" if decode else ""), file=sys.stderr)
    log = open(Path(tempfile.gettempdir()) / f"selfid-serve-load-{port}.log", "w")
    env = {**os.environ, "API_KEY": "", **({"SELFID_DECODE": decode} if decode else {})}
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url, Path(log.name)
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the server did not come up in 15 minutes; see {log.name}")
        time.sleep(0.25)


async def one(client: httpx.AsyncClient, url: str, model: str, i: int, max_tokens: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "seed": i,
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = None
    usage = None
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise SystemExit(f"request failed: {r.status_code} {(await r.aread()).decode()[:300]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if first is None and any(c["delta"].get("content") for c in chunk.get("choices", [])):
                first = time.perf_counter() - t0
    end = time.perf_counter()
    return {"ttft": first if first is not None else end - t0, "latency": end - t0, "end": end,
            "tokens": usage["completion_tokens"] if usage else 0}


async def level(url: str, model: str, clients: int, max_tokens: int, requests: int = 0, seconds: float = 0) -> dict:
    """One level of closed-loop clients: `seconds` long when given (replies unfinished then are closed and not
    counted), else `requests` in all, each run to its end. The module's docstring says what is counted."""
    todo = itertools.count()  # shared: each client takes the next request number when it is free
    results: list[dict] = []
    cut_off = 0

    async def worker(client, deadline: float | None):
        nonlocal cut_off
        for i in todo:
            if deadline is None:
                if i >= requests:
                    return
                results.append(await one(client, url, model, i, max_tokens))
                continue
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            try:
                results.append(await asyncio.wait_for(one(client, url, model, i, max_tokens), left))
            except asyncio.TimeoutError:  # still streaming at the deadline: closed, not counted
                cut_off += 1
                return

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600), limits=limits) as client:
        t0 = time.perf_counter()
        deadline = t0 + seconds if seconds > 0 else None
        await asyncio.gather(*(worker(client, deadline) for _ in range(clients)))
    if not results:
        raise SystemExit(f"no request finished within the {seconds:g} s level at {clients} clients (each takes "
                         "longer): raise --seconds or lower --max-tokens")
    wall = max(r["end"] for r in results) - t0
    ttft = sorted(r["ttft"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    return {"clients": clients, "seconds": seconds or None, "requests": len(results), "cut_off": cut_off,
            "wall_s": wall, "requests_per_s": len(results) / wall, "tokens": tokens, "tokens_per_s": tokens / wall,
            "ttft_p50_s": statistics.median(ttft), "ttft_p95_s": ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))],
            "latency_p50_s": statistics.median(r["latency"] for r in results)}


def decode_report(url: str) -> dict | None:
    """The server's account of its decoding (mode in use, step counters), or None when /health has none."""
    return httpx.get(url + "/health", timeout=30).json().get("decode")


def decode_delta(before: dict | None, after: dict | None) -> dict | None:
    """The engine's counters over one level: the mode in use at its end and how much each counter grew."""
    if before is None or after is None:
        return None
    was = before.get("stats") or {}
    return {"using": after.get("using"),
            **{k: v - was.get(k, 0) for k, v in (after.get("stats") or {}).items() if isinstance(v, (int, float))}}


def find_py_spy() -> str | None:
    # on PATH, or beside this interpreter (a virtual environment's bin/ that is not activated)
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.is_file() else None)


def start_profile(pid: int, path: Path) -> tuple[subprocess.Popen | None, str]:
    """py-spy recording process `pid` (and its children) into `path` in raw (collapsed stack) format."""
    exe = find_py_spy()
    if exe is None:
        return None, "py-spy is not installed (pip install py-spy): the levels run without a profile"
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "record", "--format", "raw", "--rate", "200", "--subprocesses", "-o", str(path), "-p", str(pid)]
    print(f"profiling the server: {' '.join(cmd)}", file=sys.stderr)
    with open(path.with_name(path.name + ".log"), "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), f"recording with {exe}"


def stop_profile(proc: subprocess.Popen, path: Path) -> str:
    """Stop py-spy as Ctrl-C would (it writes the file then); what became of the profile."""
    log = path.with_name(path.name + ".log")
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    said = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
    if path.is_file() and path.stat().st_size:
        counts = next((ln.split("Samples:", 1)[1].strip() for ln in said if "Samples:" in ln), "?")
        return f"wrote {path} (py-spy: samples {counts})"
    return f"py-spy wrote no profile (exit {proc.returncode}): {' | '.join(said[-3:]) or 'no output'} (see {log})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="an already running server (default: start one)")
    ap.add_argument("--model", default="embedded", help="--model for the server this starts")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--clients", default="1,8,16,32", help="concurrency levels, comma-separated")
    ap.add_argument("--seconds", type=float, default=None,
                    help="how long each level sends requests (default 15; 0: count-based levels of --rounds; "
                         "--smoke: 0)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="with --seconds 0: requests per client at each level (at least 8 in all)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--profile", type=Path, default=None,
                    help="record the server this script starts with py-spy (raw collapsed stacks, 200 Hz) into "
                         "this file, from before the first level to after the last")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny random model, small levels: proves the script works")
    ap.add_argument("--decode", default=None, choices=["auto", "eager", "static", "graph", "compiled"],
                    help="the server's decode mode (SELFID_DECODE; default: graph on CUDA, eager on the CPU)")
    args = ap.parse_args()
    if args.seconds is not None and args.seconds < 0:
        raise SystemExit(f"--seconds is {args.seconds:g}: give 0 (count-based levels) or a positive number")
    seconds = args.seconds if args.seconds is not None else 0 if args.smoke else 15

    if args.smoke:
        sys.path.insert(0, str(ROOT))
        from tests.tiny import build_tiny_model

        args.model = str(build_tiny_model(Path(tempfile.mkdtemp(prefix="selfid-tiny-"))))
        args.device, args.clients, args.max_tokens = "cpu", "1,4,8", 16
        args.decode = args.decode or "static"  # the CPU's stand-in for the graph path
    proc = None
    url = args.url
    log_path = None
    profiler, profile_note = None, None
    if url is None:
        proc, url, log_path = start_server(args.model, args.device, args.decode)
    elif args.profile is not None:
        profile_note = ("not recorded: --profile records the server this script starts; for one started elsewhere "
                        "run `py-spy record -p PID` yourself")
    if profile_note:
        print(f"--profile: {profile_note}", file=sys.stderr)
    rows = []
    try:
        health = httpx.get(url + "/health").json()
        model = health["models"][0]
        print(f"server {url}: {model} on {health.get('device', '?')} ({health.get('dtype', '?')})", file=sys.stderr)
        asyncio.run(level(url, model, 1, 4, requests=1))  # warm-up
        if proc is not None and args.profile is not None:
            profiler, profile_note = start_profile(proc.pid, args.profile.resolve())
            if profiler is None:
                print(f"--profile: {profile_note}", file=sys.stderr)
        for c in [int(x) for x in args.clients.split(",")]:
            before = decode_report(url)
            row = asyncio.run(level(url, model, c, args.max_tokens, requests=max(c * args.rounds, 8), seconds=seconds))
            row["decode"] = decode_delta(before, decode_report(url))
            rows.append(row)
            steps = row["decode"] or {}
            print(f"{c:>3} clients: {row['requests']} requests in {row['wall_s']:.1f} s"
                  + (f" ({row['cut_off']} still streaming at the deadline, not counted)" if seconds else "")
                  + (f"; decoding {steps['using']}: {steps.get('graph_steps', 0)} graph steps, "
                     f"{steps.get('plain_steps', 0)} plain steps" if steps.get("using") else ""), file=sys.stderr)
    finally:
        if profiler is not None:
            profile_note = stop_profile(profiler, args.profile.resolve())
            print(f"--profile: {profile_note}", file=sys.stderr)
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    base = next((r["tokens_per_s"] for r in rows if r["clients"] == 1), None)
    print(f"\nmodel {model} on {health.get('device', '?')}, max_tokens {args.max_tokens}, streaming, "
          f"sampling defaults of the model, "
          + (f"{seconds:g} s a level (finished requests only)" if seconds else f"{args.rounds} requests a client"))
    print(f"{'clients':>7} {'requests':>8} {'req/s':>7} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p95':>9} "
          f"{'latency p50':>11} {'vs 1 client':>11}")
    for r in rows:
        r["speedup_vs_1_client"] = r["tokens_per_s"] / base if base else None
        speed = f"{r['speedup_vs_1_client']:.2f}x" if base else "-"
        print(f"{r['clients']:>7} {r['requests']:>8} {r['requests_per_s']:>7.2f} {r['tokens_per_s']:>8.1f} "
              f"{r['ttft_p50_s']:>8.3f}s {r['ttft_p95_s']:>8.3f}s {r['latency_p50_s']:>10.2f}s {speed:>11}")
    engine_lines = []  # what the engine said about its decoding (a fallback to eager says why)
    if log_path is not None and log_path.is_file():
        engine_lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if "selfid engine" in ln]
        for ln in engine_lines:
            print(f"server: {ln}")
    if args.out:
        args.out.write_text(json.dumps({"model": model, "health": health, "max_tokens": args.max_tokens,
                                        "seconds": seconds or None, "rounds": None if seconds else args.rounds,
                                        "decode": args.decode or "default", "engine_log": engine_lines,
                                        "profile": profile_note, "levels": rows}, indent=2))


if __name__ == "__main__":
    main()
