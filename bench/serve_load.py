"""Load on `selfid api`: 1, 8, 16 and 32 concurrent streaming clients; throughput, time to first token,
and how much batching buys over one client at a time.

    python bench/serve_load.py                       # starts `selfid api --model embedded` (CUDA when present)
    python bench/serve_load.py --url http://127.0.0.1:8000   # an already running server
    python bench/serve_load.py --smoke               # CPU, a tiny random model, well under a minute

Each level runs closed-loop clients: every client sends its next request as soon as its previous reply
ends, until the level's requests are used up. Requests stream with usage, so tokens are the server's own
count. The speedup column is the level's tokens/s over the 1-client level's (sequential) tokens/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
    return {"ttft": first if first is not None else time.perf_counter() - t0, "latency": time.perf_counter() - t0,
            "tokens": usage["completion_tokens"] if usage else 0}


async def level(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    todo = iter(range(requests))
    results: list[dict] = []

    async def worker(client):
        for i in todo:  # a shared iterator: each client takes the next request when it is free
            results.append(await one(client, url, model, i, max_tokens))

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600), limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    ttft = sorted(r["ttft"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    return {"clients": clients, "requests": len(results), "wall_s": wall, "requests_per_s": len(results) / wall,
            "tokens": tokens, "tokens_per_s": tokens / wall, "ttft_p50_s": statistics.median(ttft),
            "ttft_p95_s": ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))],
            "latency_p50_s": statistics.median(r["latency"] for r in results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="an already running server (default: start one)")
    ap.add_argument("--model", default="embedded", help="--model for the server this starts")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--clients", default="1,8,16,32", help="concurrency levels, comma-separated")
    ap.add_argument("--rounds", type=int, default=2, help="requests per client at each level (at least 8 in all)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny random model, small levels: proves the script works")
    ap.add_argument("--decode", default=None, choices=["auto", "eager", "static", "graph"],
                    help="the server's decode mode (SELFID_DECODE; default: graph on CUDA, eager on the CPU)")
    args = ap.parse_args()

    if args.smoke:
        sys.path.insert(0, str(ROOT))
        from tests.tiny import build_tiny_model

        args.model = str(build_tiny_model(Path(tempfile.mkdtemp(prefix="selfid-tiny-"))))
        args.device, args.clients, args.max_tokens = "cpu", "1,4,8", 16
        args.decode = args.decode or "static"  # the CPU's stand-in for the graph path
    proc = None
    url = args.url
    log_path = None
    if url is None:
        proc, url, log_path = start_server(args.model, args.device, args.decode)
    try:
        health = httpx.get(url + "/health").json()
        model = health["models"][0]
        print(f"server {url}: {model} on {health.get('device', '?')} ({health.get('dtype', '?')})", file=sys.stderr)
        asyncio.run(level(url, model, 1, 1, 4))  # warm-up
        rows = []
        for c in [int(x) for x in args.clients.split(",")]:
            row = asyncio.run(level(url, model, c, max(c * args.rounds, 8), args.max_tokens))
            rows.append(row)
            print(f"{c:>3} clients: {row['requests']} requests in {row['wall_s']:.1f} s", file=sys.stderr)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    base = next((r["tokens_per_s"] for r in rows if r["clients"] == 1), None)
    print(f"\nmodel {model} on {health.get('device', '?')}, max_tokens {args.max_tokens}, streaming, "
          f"sampling defaults of the model")
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
                                        "decode": args.decode or "default", "engine_log": engine_lines,
                                        "levels": rows}, indent=2))


if __name__ == "__main__":
    main()
