"""The static decoder's start-up check: one scripted batch decoded eagerly and from the slots (static.py), compared.

Its own module because it drives the whole engine (rows, the forward pass, DecodeBatch) around the decoder: the
engine (inprocess.py) imports it, and it imports only what sits below the engine.
"""

from __future__ import annotations

import random

import torch

from selfid.engine.batch import DecodeBatch
from selfid.engine.static import SlotDecoder
from selfid.engine.types import Request, SamplingParams


def check(engine, decoder: SlotDecoder) -> tuple[str | None, dict]:
    """Run one scripted batch (three prompts, a row leaving, a row joining, teacher-forced tokens) eagerly and
    from slots (graphs and plain, graph and eager prefill); (reason they disagree or None, the errors measured).
    `engine`: the InProcessEngine asking, whose rows and forward pass the batch uses."""
    vocab = int(engine.model.config.vocab_size)
    rng = random.Random(0)
    top = min(vocab, 1000)

    def prompt(n):
        return [rng.randrange(top) for _ in range(n)]

    first = [prompt(n) for n in (5, 19, 11)]
    joiner = [prompt(9)]
    forced = [[rng.randrange(top) for _ in range(3)] for _ in range(6)]

    def script(static):
        def rows(prompts, start):
            return engine._rows([Request(p, SamplingParams(max_new_tokens=32)) for p in prompts], start, None)

        made = lambda rs: DecodeBatch(rs, engine._forward, engine.pad_id, vocab, engine.loaded.device, None,  # noqa: E731
                                      static=static)
        batch = made(rows(first, 0))
        seen = [batch.logits.float().cpu()]
        for step, toks in enumerate(forced):
            keep = [0, 2] if step == 2 else list(range(len(batch)))
            nxt = torch.tensor(toks[:len(batch)], device=engine.loaded.device)
            batch.advance(nxt, keep)
            if step == 3:
                batch.merge(made(rows(joiner, 3)), None)
            seen.append(batch.logits.float().cpu())
        if static is not None:
            static.used.clear()
        return seen

    def worst(a, b):
        return max(float((x - y).norm(dim=-1).div(y.norm(dim=-1).clamp(min=1e-6)).max()) for x, y in zip(a, b))

    half = decoder.dtype in (torch.float16, torch.bfloat16)
    tol = 0.1 if half else 1e-3  # bf16: ~1% between two attention kernels; a wrong slot, mask or stale graph: O(1)
    reference = script(None)
    info = {}
    graphs = decoder.graphs_on
    rows_limit = decoder.prefill_rows
    decoder.acquire()
    try:
        plain = None
        for use_graphs in ([False, True] if graphs else [False]):
            decoder.graphs_on = use_graphs
            name = "graph" if use_graphs else "plain"
            got = script(decoder)
            info[f"{name}_vs_eager"] = worst(got, reference)
            if use_graphs:  # the same kernels replayed: any difference beyond rounding is a stale input
                info["graph_vs_plain"] = worst(got, plain)
            plain = got
            decoder.prefill_rows = 0  # the long-prompt route: eager prefill, copied into the slots
            try:
                info[f"{name}_eager_prefill_vs_eager"] = worst(script(decoder), reference)
            finally:
                decoder.prefill_rows = rows_limit
    finally:
        decoder.graphs_on = graphs and decoder.capture_error is None
        decoder.release()
    if decoder.capture_error is not None:
        return f"capturing a CUDA graph failed ({decoder.capture_error})", info
    if decoder.compile_error is not None:
        return f"compiling the decode step failed ({decoder.compile_error})", info
    if decoder.compiled and not decoder.stats["compiled_steps"]:
        return "the compiled decode step never ran", info
    for name, err in info.items():
        limit = min(tol, 0.02) if name == "graph_vs_plain" else tol
        if not err <= limit:
            return f"{name.replace('_', ' ')}: logits differ by {err:.3g} (relative; tolerance {limit:g})", info
    return None, info
