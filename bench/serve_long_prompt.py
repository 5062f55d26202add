"""Short requests while long prompts arrive: does one long prompt stall every other client of `selfid api`?

    python bench/serve_long_prompt.py --device cpu               # starts `selfid api --model embedded`
    python bench/serve_long_prompt.py --url http://127.0.0.1:8000 # an already running server
    python bench/serve_long_prompt.py --smoke                     # a tiny random model, about a minute

Two phases against one server. First `--short-clients` closed-loop clients send short questions (greedy,
`--short-max-tokens` new tokens, not streamed) for `--baseline-seconds`: the short requests' latency alone. Then the
same clients go on for `--seconds` while a long prompt of about `--long-tokens` tokens arrives every `--long-every`
seconds (max_tokens 1), every other one abandoned by its client after `--abandon-after` seconds, as the issue that
asked for this did it (a 6,279-token prompt abandoned after 3 s made the next 4-token request take 80 s). Each long
prompt is different text, so nothing could be reused between them.

Reported per phase: the short requests' count, p50, p99 and worst latency (p99 is the value below which 99% of the
latencies fall, nearest rank), and requests that failed; for the long prompts: how many were sent, abandoned,
answered, and the answered ones' latency. Short requests still in flight when a phase ends are waited for and counted
in that phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.serve_load import start_server  # noqa: E402

SHORT = ["Hi", "你好", "Who are you?", "2+2?", "你是谁？", "Say yes."]
WORDS = ("river mountain garden winter market signal harbour lantern copper meadow violet engine orchard canyon "
         "feather compass thunder velvet glacier pepper").split()


def long_text(words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(latencies: list[float]) -> dict:
    if not latencies:
        return {"n": 0}
    return {"n": len(latencies), "p50_s": round(statistics.median(latencies), 3),
            "p99_s": round(nearest_rank(latencies, 0.99), 3), "max_s": round(max(latencies), 3)}


async def short_clients(client: httpx.AsyncClient, url: str, clients: int, max_tokens: int, until: float,
                        out: list[float], failed: list[str]) -> None:
    async def worker(k: int):
        i = k
        while time.perf_counter() < until:
            body = {"model": "m", "messages": [{"role": "user", "content": SHORT[i % len(SHORT)]}],
                    "max_tokens": max_tokens, "temperature": 0}
            t0 = time.perf_counter()
            try:
                r = await client.post(url + "/v1/chat/completions", json=body)
                if r.status_code == 200:
                    out.append(time.perf_counter() - t0)
                else:
                    failed.append(f"HTTP {r.status_code}")
            except httpx.HTTPError as e:
                failed.append(type(e).__name__)
            i += clients

    await asyncio.gather(*(worker(k) for k in range(clients)))


async def long_prompts(url: str, every: float, words: int, abandon_after: float, until: float, seed: int) -> dict:
    sent = abandoned = 0
    answered: list[float] = []
    refused: list[str] = []
    tasks = []

    async def one(n: int):
        nonlocal abandoned
        body = {"model": "m", "messages": [{"role": "user", "content": "Summarise: " + long_text(words, seed + n)}],
                "max_tokens": 1, "temperature": 0}
        leave = n % 2 == 0  # every other client leaves after abandon_after seconds
        timeout = httpx.Timeout(abandon_after if leave else 3600)
        t0 = time.perf_counter()
        async with httpx.AsyncClient(timeout=timeout) as client:  # its own connection, closed when it leaves
            try:
                r = await client.post(url + "/v1/chat/completions", json=body)
                if r.status_code == 200:
                    answered.append(time.perf_counter() - t0)
                else:
                    refused.append(f"HTTP {r.status_code}: {r.text[:200]}")
            except httpx.TimeoutException:
                abandoned += 1

    while time.perf_counter() < until:
        tasks.append(asyncio.create_task(one(sent)))
        sent += 1
        await asyncio.sleep(min(every, max(0.0, until - time.perf_counter())))
    await asyncio.gather(*tasks)
    return {"sent": sent, "abandoned": abandoned, "answered": summary(answered), "refused": refused}


async def run(url: str, args) -> dict:
    limits = httpx.Limits(max_connections=args.short_clients + 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout), limits=limits) as client:
        base: list[float] = []
        base_failed: list[str] = []
        await short_clients(client, url, args.short_clients, args.short_max_tokens,
                            time.perf_counter() + args.baseline_seconds, base, base_failed)
        loaded: list[float] = []
        loaded_failed: list[str] = []
        until = time.perf_counter() + args.seconds
        longs, _ = await asyncio.gather(
            long_prompts(url, args.long_every, args.long_words, args.abandon_after, until, args.seed),
            short_clients(client, url, args.short_clients, args.short_max_tokens, until, loaded, loaded_failed))
    return {"short_alone": {**summary(base), "failed": base_failed},
            "short_with_long_prompts": {**summary(loaded), "failed": loaded_failed}, "long_prompts": longs}


def prompt_tokens(url: str, words: int, seed: int) -> int:
    """The long prompt's length in the server's own tokens (usage.prompt_tokens of a 1-token request)."""
    body = {"model": "m", "messages": [{"role": "user", "content": "Summarise: " + long_text(words, seed - 1)}],
            "max_tokens": 1, "temperature": 0}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=3600)
    if r.status_code != 200:
        raise SystemExit(f"the long prompt was refused: {r.status_code} {r.text[:300]}")
    return r.json()["usage"]["prompt_tokens"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an already running server (default: start `selfid api`)")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--short-clients", type=int, default=2)
    ap.add_argument("--short-max-tokens", type=int, default=4)
    ap.add_argument("--long-words", type=int, default=2000, help="words of a long prompt (about one token each)")
    ap.add_argument("--long-every", type=float, default=30.0)
    ap.add_argument("--abandon-after", type=float, default=3.0)
    ap.add_argument("--baseline-seconds", type=float, default=30.0)
    ap.add_argument("--seconds", type=float, default=150.0, help="length of the phase with long prompts")
    ap.add_argument("--timeout", type=float, default=600.0, help="a short request's client gives up after this")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--smoke", action="store_true", help="a tiny random model and short phases")
    ap.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = ap.parse_args()
    proc = None
    model = args.model
    if args.smoke:
        import tempfile

        from tests.tiny import build_tiny_model

        model = str(build_tiny_model(Path(tempfile.mkdtemp(prefix="selfid-long-prompt-"))))
        args.long_words, args.long_every, args.baseline_seconds, args.seconds = 40, 3.0, 3.0, 10.0
    url = args.url
    if url is None:
        proc, url, log_path = start_server(model, args.device)
        print(f"server log: {log_path}", file=sys.stderr)
    try:
        tokens = prompt_tokens(url, args.long_words, args.seed)
        print(f"long prompts of {tokens} tokens", file=sys.stderr)
        result = {"model": model, "device": args.device, "long_prompt_tokens": tokens,
                  "settings": {k: v for k, v in vars(args).items() if k not in ("out", "url")},
                  **asyncio.run(run(url, args))}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
