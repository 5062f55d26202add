"""llama.cpp's own OpenAI-compatible server (the xllamacpp wheel) on a GGUF, for the study's runtime comparisons.

    python -m selfid.study.llamacpp_server --port 8081 [--gguf PATH] [--parallel 8] [--threads 2]

The GGUF carries no sampling defaults, so the server is given the model's published ones (temperature
0.7, top_p 0.8, top_k 20, repetition penalty 1.05; min_p off), as selfid api uses them. One difference
stays: llama.cpp's repetition penalty looks back over the last 64 tokens, transformers' over the
whole sequence. Not a selfid dependency: `pip install xllamacpp` (a prebuilt wheel) to use it.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from selfid.model.embedded import EMBEDDED, embedded_gguf


def main() -> None:
    import xllamacpp as x  # not a selfid dependency: imported where it is used, so --help works without it

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=None, help="default: the embedded model's verified GGUF")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=8192, help="shared by the parallel slots")
    a = ap.parse_args()
    d = EMBEDDED["embedded"].generation_defaults
    p = x.CommonParams()
    p.model.path = str(a.gguf or embedded_gguf("embedded"))
    p.port, p.n_parallel, p.n_ctx = a.port, a.parallel, a.ctx
    p.cpuparams.n_threads = p.cpuparams_batch.n_threads = a.threads
    p.sampling.temp, p.sampling.top_p, p.sampling.top_k = d["temperature"], d["top_p"], d["top_k"]
    p.sampling.penalty_repeat, p.sampling.min_p = d["repetition_penalty"], 0.0
    server = x.Server(p)  # serves until this process ends
    print(f"llama.cpp serving {p.model.path} on port {a.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    del server


if __name__ == "__main__":
    main()
