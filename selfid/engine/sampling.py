"""Per-row logits processing and sampling for a batch whose rows have different parameters.

transformers' `generate` applies one sampling configuration to a whole batch; a server batches
requests that each bring their own temperature, top_p, penalties and seed, so this is done here,
vectorised over rows. Order follows transformers: penalties, temperature, top-k, top-p.
"""

from __future__ import annotations

import torch


def apply_penalties(logits, seen, seen_mask, rep, counts, presence, frequency, repeat: bool | None = None):
    """Repetition penalty over prompt+generated tokens; presence/frequency over generated tokens.

    logits [B,V]; seen [B,T] token ids with seen_mask [B,T] marking real ones; rep/presence/frequency [B];
    counts [B,V] (how often each token was generated) or None when no row uses presence/frequency.
    `repeat`: whether any row's repetition penalty is not 1, when the caller knows it (None: read it from `rep`,
    which waits for the GPU).
    """
    if repeat is None:
        repeat = seen is not None and bool((rep != 1).any())
    if seen is not None and repeat:
        ids = torch.where(seen_mask, seen, seen[:, -1:])  # pad slots repeat a real token: harmless
        picked = logits.gather(1, ids)
        r = rep[:, None]
        logits = logits.scatter(1, ids, torch.where(picked > 0, picked / r, picked * r))
    if counts is not None:
        logits = logits - presence[:, None] * (counts > 0) - frequency[:, None] * counts
    return logits


def sample(logits, temperature, top_k, top_p, uniforms, any_hot: bool | None = None, k_max: int | None = None):
    """One token per row. temperature 0 rows take the argmax; others sample by inverse CDF.

    Using one uniform per row per step (drawn ahead from the row's own seeded generator) makes a
    seeded row repeatable whatever else shares its batch. `any_hot` (some row samples) and `k_max` (the
    largest top_k of those rows, the vocabulary size for "off"), when the caller knows them from the rows'
    parameters, save reading them back from the GPU each step.
    """
    greedy = logits.argmax(-1)
    hot = temperature > 0
    if any_hot is None:
        any_hot = bool(hot.any())
    if not any_hot:
        return greedy
    vocab = logits.shape[-1]
    k = torch.where(top_k > 0, top_k, vocab)
    if k_max is None:
        k_max = int(k.max())
    k_max = min(k_max, vocab)
    if k_max < vocab:
        vals, idx = logits.topk(k_max, dim=-1)
    else:
        vals, idx = logits.sort(dim=-1, descending=True)
    t = torch.where(hot, temperature, torch.ones_like(temperature))
    vals = vals / t[:, None]
    ranks = torch.arange(vals.shape[-1], device=vals.device)[None, :]
    vals = vals.masked_fill(ranks >= k[:, None], float("-inf"))
    probs = vals.softmax(-1)
    before = probs.cumsum(-1) - probs  # mass strictly above each candidate
    probs = probs.masked_fill(before >= top_p[:, None], 0.0)  # the first candidate always survives
    cdf = probs.cumsum(-1)
    target = uniforms[:, None] * cdf[:, -1:]
    choice = (cdf <= target).sum(-1).clamp(max=vals.shape[-1] - 1)
    # never land on a zero-probability candidate through rounding at the top of the cdf
    choice = torch.minimum(choice, (probs > 0).sum(-1) - 1)
    drawn = idx.gather(1, choice[:, None]).squeeze(1)
    return torch.where(hot, drawn, greedy)
