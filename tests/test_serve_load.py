"""Under load: concurrent streaming clients are batched, each gets its own reply, and one that hangs up is dropped;
bench/serve_load.py's levels count what they say they count."""

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.serve_helpers import plain_server, run_async, static_server  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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


def settled(stats, before: dict, want: int) -> int:
    """Samples the server has ended (finished or cancelled) since `before`, once it has ended `want` (or 30 s passed)."""
    ended = lambda: sum(stats[k] - before.get(k, 0) for k in ("length", "stop", "cancelled"))  # noqa: E731
    deadline = time.monotonic() + 30  # a hang-up is noticed at the request's next chunk
    while ended() < want and time.monotonic() < deadline:
        time.sleep(0.05)
    return ended()


def test_a_timed_level_stops_sending_at_its_deadline_and_counts_only_finished_requests(static_server, monkeypatch):
    from bench import serve_load

    bg, service = static_server
    sent, finished = [], []
    real = serve_load.one

    async def spy(*args):
        sent.append(time.perf_counter())
        r = await real(*args)
        finished.append(r)
        return r

    monkeypatch.setattr(serve_load, "one", spy)
    stats = service.scheduler.stats
    before = dict(stats)
    seconds, clients = 1.5, 3
    row = run_async(lambda: serve_load.level(bg.url, service.base.name, clients, 48, requests=2, seconds=seconds))

    assert max(sent) < min(sent) + seconds  # no request starts after the deadline (the level began before the first)
    assert row["requests"] == len(finished) > 2  # not the count-based level's 2: the clients kept sending
    assert 1 <= row["cut_off"] <= clients and len(sent) == row["requests"] + row["cut_off"]
    assert row["tokens"] == sum(r["tokens"] for r in finished) and all(r["tokens"] > 0 for r in finished)
    assert row["tokens_per_s"] == row["tokens"] / row["wall_s"]
    assert row["wall_s"] >= max(r["end"] for r in finished) - min(sent)  # to the end of the last finished request
    # the server saw every request sent; those cut off were hung up on (or had just finished when the client left)
    assert settled(stats, before, len(sent)) == len(sent)
    ended_whole = sum(stats[k] - before.get(k, 0) for k in ("length", "stop"))
    assert row["requests"] <= ended_whole <= len(sent) and stats["cancelled"] - before.get("cancelled", 0) <= row["cut_off"]


def test_the_script_records_each_levels_decode_steps_and_keeps_count_based_levels(static_server, tmp_path):
    bg, service = static_server
    script = [sys.executable, str(ROOT / "bench" / "serve_load.py"), "--url", bg.url, "--max-tokens", "12"]
    timed = subprocess.run([*script, "--clients", "1,2", "--seconds", "1", "--out", str(tmp_path / "timed.json"),
                            "--profile", str(tmp_path / "host.txt")], capture_output=True, text=True, timeout=300)
    assert timed.returncode == 0, timed.stderr[-2000:]
    out = json.loads((tmp_path / "timed.json").read_text())
    assert out["seconds"] == 1 and [r["clients"] for r in out["levels"]] == [1, 2]
    for r in out["levels"]:
        assert r["seconds"] == 1 and r["requests"] >= 1
        assert r["decode"]["using"] == "static" and r["decode"]["graph_steps"] == 0
        # every token after a reply's first is one decode step, which the rows of a batch share
        assert r["decode"]["plain_steps"] >= (r["tokens"] - r["requests"]) / r["clients"] > 0
    assert out["profile"].startswith("not recorded") and "--profile: not recorded" in timed.stderr
    assert not (tmp_path / "host.txt").exists()

    counted = subprocess.run([*script, "--clients", "1,3", "--seconds", "0", "--rounds", "3",
                              "--out", str(tmp_path / "counted.json")], capture_output=True, text=True, timeout=300)
    assert counted.returncode == 0, counted.stderr[-2000:]
    out = json.loads((tmp_path / "counted.json").read_text())
    assert out["seconds"] is None and out["rounds"] == 3
    assert [(r["requests"], r["cut_off"]) for r in out["levels"]] == [(8, 0), (9, 0)]  # 3 a client, at least 8
    assert all(0 < r["tokens"] <= r["requests"] * 12 for r in out["levels"])
