"""Teacher-forced scoring: the log-probability a model gives a continuation after a context.

Used by the audit's identity margin ("I am" -> " Qwen" vs " ChatGPT"). Sequences are right-padded
and scored in batches with one forward pass each; no sampling, no cache.
"""

from __future__ import annotations

from typing import Sequence


def continuation_logprobs(loaded, pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                          batch_size: int = 32) -> list[list[float]]:
    """For each (context ids, continuation ids), the log-probability of every continuation token."""
    import torch

    model, dev = loaded.model, loaded.device
    pad = loaded.tokenizer.pad_token_id or 0
    out: list[list[float]] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        seqs = [list(c) + list(x) for c, x in chunk]
        if any(not c or not x for c, x in chunk):
            raise ValueError("context and continuation must both be non-empty")
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float()
        logp = logits.log_softmax(-1)
        for i, (c, x) in enumerate(chunk):
            pos = torch.arange(len(c) - 1, len(c) + len(x) - 1, device=logp.device)
            tgt = torch.tensor(list(x), device=logp.device)
            out.append(logp[i, pos, tgt].tolist())
    return out
