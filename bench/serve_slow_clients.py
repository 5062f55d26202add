"""Slow clients against `selfid api`: connections that stop during their headers, bodies sent a byte at a time, and
ordinary requests beside them.

    python bench/serve_slow_clients.py                 # a tiny random model (connections do not need a real one)
    python bench/serve_slow_clients.py --model embedded --device cpu

Opens `--stalled` connections that send half a request line and stop, and `--trickling` requests whose body arrives
one byte every `--trickle-every` seconds, then for `--seconds` keeps one client sending short requests. At the times
in `--checks` it counts the stalled and trickling connections the server still holds open (a connection the server
closed reads as end-of-file or a reset; one past the server's cap is answered 503 at once and counts as refused).

Reported: at each check, how many stalled and trickling connections are open, were refused (503) or closed; the
short requests' count, p50, p99 (nearest rank) and worst latency, their failures by kind and when the last one
happened.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.serve_load import start_server  # noqa: E402
from bench.serve_long_prompt import nearest_rank  # noqa: E402


def state(s: socket.socket, seen: dict) -> str:
    """"open" while the server holds this connection (nothing more to read, no end-of-file or reset), else "refused"
    when the server's answer was a 503 (past its connection cap), else "closed". `seen` keeps what each socket got."""
    try:
        while got := s.recv(65536, socket.MSG_DONTWAIT):
            seen[s] = seen.get(s, b"") + got
    except BlockingIOError:
        return "open"
    except OSError:
        pass
    return "refused" if seen.get(s, b"").startswith(b"HTTP/1.1 503") else "closed"


def count(sockets: list, seen: dict) -> dict:
    return dict(Counter(state(s, seen) for s in sockets))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="default: a tiny random model built for the run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--stalled", type=int, default=1000)
    ap.add_argument("--trickling", type=int, default=20)
    ap.add_argument("--trickle-every", type=float, default=3.0)
    ap.add_argument("--seconds", type=float, default=70.0)
    ap.add_argument("--checks", default="5,15,45,65", help="seconds after opening at which open connections are counted")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    model = args.model
    if model is None:
        from tests.tiny import build_tiny_model

        model = str(build_tiny_model(Path(tempfile.mkdtemp(prefix="selfid-slow-clients-"))))
    proc, url, log_path = start_server(model, args.device)
    print(f"server log: {log_path}", file=sys.stderr)
    host, port = url.removeprefix("http://").split(":")
    stalled, trickling, seen = [], [], {}
    try:
        for _ in range(args.trickling):
            s = socket.create_connection((host, int(port)))
            s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                      "Content-Length: 1000000\r\n\r\n{".encode())
            trickling.append(s)
        for _ in range(args.stalled):
            s = socket.create_connection((host, int(port)))
            s.sendall(b"POST /v1/chat/completions HTT")
            stalled.append(s)
        t0 = time.perf_counter()
        stop = threading.Event()

        def trickle():
            while not stop.wait(args.trickle_every):
                for s in trickling:
                    try:
                        s.sendall(b" ")
                    except OSError:
                        pass

        threading.Thread(target=trickle, daemon=True).start()
        latencies, failed, checks, last_failure = [], Counter(), [], None
        due = [float(x) for x in args.checks.split(",")]
        body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}
        with httpx.Client(timeout=120) as client:
            while time.perf_counter() - t0 < args.seconds or due:
                if due and time.perf_counter() - t0 >= due[0]:
                    checks.append({"after_s": due.pop(0), "stalled": count(stalled, seen),
                                   "trickling": count(trickling, seen)})
                    print(checks[-1], file=sys.stderr)
                    continue
                start = time.perf_counter()
                try:
                    r = client.post(url + "/v1/chat/completions", json=body)
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - start)
                        continue
                    failed[f"HTTP {r.status_code}"] += 1
                except httpx.HTTPError as e:
                    failed[type(e).__name__] += 1
                last_failure = time.perf_counter() - t0
                time.sleep(0.05)  # a refused client retrying, not a busy loop
        stop.set()
    finally:
        for s in stalled + trickling:
            s.close()
        proc.terminate()
        proc.wait(60)
    result = {"model": model, "device": args.device, "settings": {k: v for k, v in vars(args).items() if k != "out"},
              "checks": checks,
              "short_requests": {"n": len(latencies), "failed": dict(failed),
                                 "last_failure_after_s": None if last_failure is None else round(last_failure, 1),
                                 **({"p50_s": round(statistics.median(latencies), 3),
                                     "p99_s": round(nearest_rank(latencies, 0.99), 3),
                                     "max_s": round(max(latencies), 3)} if latencies else {})}}
    print(json.dumps(result, indent=2, default=str))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
