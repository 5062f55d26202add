"""Under load: concurrent streaming clients are batched, each gets its own reply, and one that hangs up is dropped."""

import asyncio
import json
import time

import httpx

from tests.serve_helpers import plain_server, run_async  # noqa: F401  (fixture)

CLIENTS = 32


def body(i: int, stream: bool) -> dict:
    b = {"model": "m", "messages": [{"role": "user", "content": f"Question {i}: " + "who are you? " * (i % 5)}],
         "max_tokens": 4 + (i % 7) * 2, "stream": stream}
    # half greedy, half seeded sampling with their own temperatures: rows keep their own parameters
    b.update({"temperature": 0} if i % 2 == 0 else {"temperature": 0.5 + i / 40, "seed": 1000 + i, "top_p": 0.9})
    return b


async def streamed(client: httpx.AsyncClient, url: str, b: dict) -> str:
    text = ""
    async with client.stream("POST", url, json=b) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for c in json.loads(line[6:])["choices"]:
                    text += c["delta"].get("content") or ""
    return text


async def hang_up(client: httpx.AsyncClient, url: str) -> int:
    """Start a long reply, read until its first text arrives, then close the connection."""
    b = {"model": "m", "messages": [{"role": "user", "content": "tell me everything"}], "max_tokens": 450,
         "temperature": 0, "stream": True}
    async with client.stream("POST", url, json=b) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: {") and any(c["delta"].get("content") for c in json.loads(line[6:])["choices"]):
                return 1
    return 0


def test_concurrent_streams_are_batched_without_cross_talk_and_survive_a_hang_up(plain_server):
    bg, service = plain_server
    url = bg.url + "/v1/chat/completions"
    stats = service.scheduler.stats
    before = dict(stats)

    async def main():
        limits = httpx.Limits(max_connections=CLIENTS + 2)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            tasks = [streamed(client, url, body(i, True)) for i in range(CLIENTS)]
            return await asyncio.gather(hang_up(client, url), *tasks)

    hung, *together = run_async(main)
    assert hung == 1
    batches = stats["batches"] - before.get("batches", 0)
    assert batches <= CLIENTS // 4, f"{CLIENTS + 1} requests ran as {batches} batches: they were not batched"

    deadline = time.monotonic() + 30  # the hang-up is noticed at its next chunk; then its row is dropped
    while stats["cancelled"] == before.get("cancelled", 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats["cancelled"] - before.get("cancelled", 0) == 1
    assert service.scheduler.busy_rows == 0

    alone = [httpx.post(url, json=body(i, False), timeout=60).json()["choices"][0]["message"]["content"]
             for i in range(CLIENTS)]
    assert together == alone
    assert len(set(alone)) == CLIENTS  # every prompt has its own reply, so cross-talk could not go unseen
