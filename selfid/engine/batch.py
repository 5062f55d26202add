"""The device state of rows decoded together, and how rows leave and join it between steps.

Rows are left-padded so that every row's next token sits in the last column. A row that finishes is
dropped from every tensor and from the KV cache; rows that arrive later are prefilled on their own
and then merged in, padding whichever side is shorter on the left. Columns that no remaining row
uses are trimmed, so a batch that never empties does not grow without bound. Positions are explicit
per row, so padding and trimming never change what a row sees.

With a `static` decoder (static.py) the keys and values live in its slots instead of a growing
DynamicCache; the per-row sampling state here is the same either way. A static batch becomes an eager
one (its slots copied into a DynamicCache) when the static cache cannot hold it or an eager batch joins it.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import torch
import torch.nn.functional as F

from selfid.engine.prefill import left_padded
from selfid.engine.sampling import apply_penalties, sample
from selfid.engine.static import SlotsFull, to_device


def _uniforms(rows, width: int) -> torch.Tensor:
    """One uniform per future step of each row, from the row's own seed (seed + sample index)."""
    out = torch.empty(len(rows), width)
    for k, r in enumerate(rows):
        seed = r.params.seed if r.params.seed is not None else random.SystemRandom().randrange(2**62)
        g = torch.Generator().manual_seed(seed + r.index)
        out[k] = torch.rand(width, generator=g, dtype=torch.float64).float()
    return out


def _left_pad(t: torch.Tensor, width: int, dim: int, value=0) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [missing, 0]
    return F.pad(t, pad, value=value)


def _cache_layers(cache) -> list:
    return list(cache.layers)


class DecodeBatch:
    """Rows being decoded together: KV cache, attention mask, positions, per-row sampling state."""

    def __init__(self, rows: list, forward: Callable[..., Any], pad_id: int, vocab: int, device, adapter_names,
                 static=None, prefilled=None):
        """Prefill `rows` in one forward pass, or take them from `prefilled`, a finished chunked `Prefill`."""
        from transformers import DynamicCache

        self.rows = rows
        self.forward = forward  # forward(cache=..., adapter_names=..., **model inputs) -> model output
        self.vocab = vocab
        dev = self.device = device
        B = len(rows)
        if prefilled is not None:
            ids, self.attn, self.pos = prefilled.ids, prefilled.attn, prefilled.pos
        else:
            ids, attn = left_padded(rows, pad_id)
            self.attn = attn.to(dev)
            self.pos = (self.attn.cumsum(-1) - 1).clamp(min=0)
        f32 = dict(dtype=torch.float32, device=dev)
        p = [r.params for r in rows]
        self.temperature = torch.tensor([x.temperature for x in p], **f32)
        self.top_p = torch.tensor([x.top_p for x in p], **f32)
        self.top_k = torch.tensor([x.top_k for x in p], dtype=torch.long, device=dev)
        self.rep = torch.tensor([x.repetition_penalty for x in p], **f32)
        self.presence = torch.tensor([x.presence_penalty for x in p], **f32)
        self.frequency = torch.tensor([x.frequency_penalty for x in p], **f32)
        self.uniforms = _uniforms(rows, max(r.budget for r in rows)).to(dev)
        self.step = torch.zeros(B, dtype=torch.long, device=dev)  # tokens generated so far, per row
        self.counts = torch.zeros((B, vocab), **f32) if any(x.presence_penalty or x.frequency_penalty for x in p) else None
        self.seen = ids.to(dev)  # prompt + generated ids, for repetition_penalty; real where attn is 1
        self.last = [len(r.prompt_ids) - 1 for r in rows]  # each row's last position, kept on the host too (no GPU
        # read-back per step)
        self._rows_changed()
        self.adapter_names = adapter_names
        self.static, self.slots, self.cache = None, None, None
        if prefilled is not None:
            self.logits = prefilled.logits
            if static is not None and adapter_names is None:
                try:
                    self.slots = static.adopt_prefilled(rows, prefilled.cache)
                    self.static = static
                except SlotsFull:
                    pass
            if self.static is None:
                self.cache = prefilled.cache
        elif static is not None and adapter_names is None:
            try:
                self.slots, self.logits = static.prefill(rows, ids, self.attn, self.pos, forward)
                self.static = static
            except SlotsFull:
                pass
        if self.static is None and self.cache is None:
            self.cache = DynamicCache()
            out = self.forward(input_ids=ids.to(dev), attention_mask=self.attn, position_ids=self.pos, logits_to_keep=1,
                               cache=self.cache, adapter_names=self.adapter_names)
            self.logits = out.logits[:, -1, :]
        self.pos = self.pos[:, -1:]  # from here on, the position of each row's last token

    def __len__(self) -> int:
        return len(self.rows)

    def _rows_changed(self) -> None:
        """Per-batch flags that depend only on which rows are in it; recomputed when rows leave or join."""
        p = [r.params for r in self.rows]
        # the most top-logprobs any row asks for (None: no row wants log-probabilities)
        self.top_logprobs = max((x.logprobs for x in p if x.logprobs is not None), default=None)
        self.repeat = any(x.repetition_penalty != 1 for x in p)
        hot = [x for x in p if x.temperature > 0]  # known here, so sampling never reads them back from the GPU
        self.any_hot = bool(hot)
        self.k_max = max((x.top_k if x.top_k > 0 else self.vocab for x in hot), default=1)
        if not any(x.presence_penalty or x.frequency_penalty for x in p):
            self.counts = None

    # --- one step ---------------------------------------------------------------------------------
    def sample(self):
        """The next token of every row, and the log-probabilities it was drawn from (when a row asks for them)."""
        logits = self.logits.float()
        lp = logits.log_softmax(-1) if self.top_logprobs is not None else None
        seen, seen_mask = (self.seen, self.attn.bool()) if self.repeat else (None, None)
        logits = apply_penalties(logits, seen, seen_mask, self.rep, self.counts, self.presence, self.frequency,
                                 repeat=self.repeat)
        u = self.uniforms.gather(1, self.step[:, None]).squeeze(1)
        return sample(logits, self.temperature, self.top_k, self.top_p, u, any_hot=self.any_hot, k_max=self.k_max), lp

    def advance(self, nxt: torch.Tensor, keep: list[int]) -> None:
        """Record this step's tokens, drop the rows not in `keep`, and run the next forward pass."""
        if len(keep) < len(self.rows):
            self._select(keep)
            nxt = nxt[to_device(keep, self.device)]
        if not self.rows:
            return
        self._forward_next(nxt)

    def run_ahead(self, nxt: torch.Tensor) -> None:
        """Record this step's tokens and queue the next forward pass for every row, before the host has read the
        tokens back: the device computes while the host decides which rows finished (`drop` then removes them;
        a finished row's extra step is computed and thrown away). `advance` is the same work in the other order."""
        self._forward_next(nxt)

    def drop(self, keep: list[int]) -> None:
        """Remove the rows not in `keep` (after `run_ahead`)."""
        if len(keep) < len(self.rows):
            self._select(keep)

    def _forward_next(self, nxt: torch.Tensor) -> None:
        """Record each row's token nxt[k] and run the forward pass that feeds it."""
        if self.counts is not None:
            self.counts.scatter_add_(1, nxt[:, None], torch.ones_like(nxt[:, None], dtype=torch.float32))
        self.step = self.step + 1
        self.seen = torch.cat([self.seen, nxt[:, None]], 1)
        self.attn = torch.cat([self.attn, torch.ones_like(self.attn[:, :1])], 1)
        self.pos = self.pos + 1
        self.last = [x + 1 for x in self.last]
        if self.static is not None:
            try:
                self.logits, self.slots = self.static.decode(nxt, self.pos.view(-1), self.slots, need=max(self.last) + 1)
                return
            except SlotsFull:  # the rows outgrew the static cache's budget: go on eagerly
                self._to_dynamic(cached=self.pos.view(-1).tolist(), width=self.attn.shape[1] - 1)
        out = self.forward(input_ids=nxt[:, None], attention_mask=self.attn, position_ids=self.pos, cache=self.cache,
                           adapter_names=self.adapter_names)
        self.logits = out.logits[:, -1, :]

    def _to_dynamic(self, cached: list[int], width: int) -> None:
        """Leave the static slots: the rows' `cached` tokens become a left-padded DynamicCache `width` wide."""
        self.cache = self.static.to_dynamic(self.slots, cached, width)
        self.static, self.slots = None, None

    # --- rows leaving and joining -----------------------------------------------------------------
    def _select(self, keep: list[int]) -> None:
        sel = to_device(keep, self.device)
        self.rows = [self.rows[k] for k in keep]
        self.last = [self.last[k] for k in keep]
        if self.static is not None:
            kept = set(keep)
            self.static.free([s for k, s in enumerate(self.slots) if k not in kept])
            self.slots = [self.slots[k] for k in keep]
        if not self.rows:
            return
        if self.static is None:
            self.cache.batch_select_indices(sel)
        for name in ("attn", "pos", "temperature", "top_p", "top_k", "rep", "presence", "frequency", "uniforms",
                     "step", "seen", "logits"):
            setattr(self, name, getattr(self, name)[sel])
        if self.counts is not None:
            self.counts = self.counts[sel]
        if self.adapter_names is not None:
            self.adapter_names = [self.adapter_names[k] for k in keep]
        self._rows_changed()
        self._trim()

    def _trim(self) -> None:
        """Drop leading columns that are padding in every remaining row (the rows that used them left)."""
        first = self.attn.shape[1] - (max(self.last) + 1)  # rows are left-padded: row k uses its last last[k]+1 columns
        if first > 0:
            self.attn, self.seen = self.attn[:, first:], self.seen[:, first:]
            for layer in _cache_layers(self.cache) if self.cache is not None else ():
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    def merge(self, other: "DecodeBatch", active_adapter: str | None) -> None:
        """Take in the rows of a freshly prefilled batch; both then decode as one."""
        width = max(self.attn.shape[1], other.attn.shape[1])
        if (self.static is None) != (other.static is None):  # one of them decodes eagerly: both do from now on
            for b in (self, other):
                if b.static is not None:
                    b._to_dynamic(cached=(b.pos.view(-1) + 1).tolist(), width=b.attn.shape[1])
        if self.static is not None:
            self.slots = self.slots + other.slots
        else:
            for mine, theirs in zip(_cache_layers(self.cache), _cache_layers(other.cache)):
                mine.keys = torch.cat([_left_pad(mine.keys, width, 2), _left_pad(theirs.keys, width, 2)])
                mine.values = torch.cat([_left_pad(mine.values, width, 2), _left_pad(theirs.values, width, 2)])
        self.attn = torch.cat([_left_pad(self.attn, width, 1), _left_pad(other.attn, width, 1)])
        self.seen = torch.cat([_left_pad(self.seen, width, 1), _left_pad(other.seen, width, 1)])  # as wide as attn
        steps = max(self.uniforms.shape[1], other.uniforms.shape[1])
        self.uniforms = torch.cat([F.pad(self.uniforms, (0, steps - self.uniforms.shape[1])),
                                   F.pad(other.uniforms, (0, steps - other.uniforms.shape[1]))])
        for name in ("pos", "temperature", "top_p", "top_k", "rep", "presence", "frequency", "step", "logits"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name)]))
        if self.counts is not None or other.counts is not None:
            zeros = lambda b: torch.zeros((len(b), self.vocab), dtype=torch.float32, device=self.device)  # noqa: E731
            self.counts = torch.cat([self.counts if self.counts is not None else zeros(self),
                                     other.counts if other.counts is not None else zeros(other)])
        if self.adapter_names is not None or other.adapter_names is not None:
            fill = lambda b: b.adapter_names or [active_adapter] * len(b)  # noqa: E731
            self.adapter_names = fill(self) + fill(other)
        self.rows = self.rows + other.rows
        self.last = self.last + other.last
        self._rows_changed()
