"""Long prompts run through the model a chunk of columns at a time (chunked prefill, as vLLM and SGLang do).

A prompt longer than the engine's `prefill_chunk` is not run in one forward pass: it becomes a `Prefill`, and the
engine runs one chunk of it between two decoding steps of the rows already generating (inprocess.py), so a
6,000-token prompt costs the others one chunk per token instead of the whole prompt at once. Rows whose request
is cancelled are dropped between chunks, so a client that left stops costing anything at the next chunk.

Rows are left-padded as in a decoding batch (batch.py), so a finished Prefill hands its KV cache, mask and last
logits to a `DecodeBatch` unchanged, and a chunked prompt sees exactly what a whole one would.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from selfid.engine.static import to_device


def left_padded(rows: Sequence, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of the rows' prompts, left-padded to the longest, on the host."""
    lens = [len(r.prompt_ids) for r in rows]
    width = max(lens)
    # one tensor from Python lists (a tensor per row cost ~0.1 s for a batch of 1,024 rows)
    ids = torch.tensor([[pad_id] * (width - n) + list(r.prompt_ids) for n, r in zip(lens, rows)], dtype=torch.long)
    attn = torch.tensor([[0] * (width - n) + [1] * n for n in lens], dtype=torch.long)
    return ids, attn


class Prefill:
    """Rows whose prompts are being run through the model, `chunk` columns per `step`."""

    def __init__(self, rows: list, forward: Callable[..., Any], pad_id: int, device, adapter_names, chunk: int):
        from transformers import DynamicCache

        self.rows = rows
        self.forward = forward  # forward(cache=..., adapter_names=..., **model inputs) -> model output
        self.device = device
        self.adapter_names = adapter_names
        self.chunk = max(1, chunk)
        self.ids, attn = left_padded(rows, pad_id)
        self.attn = attn.to(device)
        self.pos = (self.attn.cumsum(-1) - 1).clamp(min=0)
        self.cache = DynamicCache()
        self.done = 0  # columns run so far
        self.logits: torch.Tensor | None = None  # after the last column: each row's next-token logits
        self.chunks = 0  # forward passes run

    @property
    def width(self) -> int:
        return self.ids.shape[1]

    @property
    def finished(self) -> bool:
        return self.done >= self.width

    def step(self) -> None:
        """Run the next chunk of columns (the last chunk keeps the logits of each row's last token)."""
        a, b = self.done, min(self.done + self.chunk, self.width)
        out = self.forward(input_ids=self.ids[:, a:b].to(self.device), attention_mask=self.attn[:, :b],
                           position_ids=self.pos[:, a:b], logits_to_keep=1, cache=self.cache,
                           adapter_names=self.adapter_names)
        self.done, self.chunks = b, self.chunks + 1
        if self.finished:
            self.logits = out.logits[:, -1, :]

    def keep(self, keep: list[int]) -> None:
        """Drop the rows not in `keep` (their clients left) from the prompts and from what is cached of them."""
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[k] for k in keep]
        if not self.rows:
            return
        sel = to_device(keep, self.device)
        self.ids = self.ids[torch.tensor(keep, dtype=torch.long)]
        self.attn, self.pos = self.attn[sel], self.pos[sel]
        if self.done:
            self.cache.batch_select_indices(sel)
        if self.adapter_names is not None:
            self.adapter_names = [self.adapter_names[k] for k in keep]
