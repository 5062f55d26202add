"""From conversations to packed training rows.

- `encode`: render a conversation with the model's own chat template and mark the tokens the model
  is trained to produce (each assistant reply and its end-of-turn token; never the prompt).
- `pack`: best-fit-decreasing bin packing of samples into rows of `pack_length` tokens.
- `collate`: rows -> tensors. Each sample restarts its position ids at 0 and the batch carries
  `cu_seq_lens` (sample boundaries in the flattened batch), so attention never crosses from one
  packed sample into another: varlen/flash kernels take the boundaries directly, and sdpa/eager get
  a block-diagonal mask that transformers builds from the position ids. The loss is taken only at
  `hidden_index` (positions whose next token is a trained one), so the LM head runs on those alone.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from selfid.errors import SelfidError
from selfid.model.chat import render_keeping_text, tokenize


@dataclass(frozen=True)
class Encoded:
    ids: np.ndarray  # int64 token ids
    label_pos: np.ndarray  # positions t (>= 1) whose token is trained on (predicted from t - 1)

    def __len__(self) -> int:
        return len(self.ids)


def with_system(messages: Sequence[dict], system: str | None) -> list[dict]:
    """The messages with `system` as their system message, unless they carry their own (None: send none)."""
    msgs = list(messages)
    if system is None or msgs[0]["role"] == "system":
        return msgs
    return [{"role": "system", "content": system}, *msgs]


def _render(tokenizer, messages, add_generation_prompt: bool) -> str:
    return render_keeping_text(tokenizer, messages, add_generation_prompt)[0]


def assistant_spans(tokenizer, messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]], tuple]:
    """(full text, [(start, end) character span of each assistant reply, end-of-turn included], the spans
    of message text to encode as plain text)."""
    full, literal = render_keeping_text(tokenizer, messages, False)
    spans = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:k], True)
        upto = full if k == len(messages) - 1 else _render(tokenizer, messages[:k + 1], False)
        if not (full.startswith(upto) and upto.startswith(prefix)):
            raise SelfidError("this chat template renders earlier turns differently once later turns follow "
                              "(e.g. it strips reasoning from old turns), so replies cannot be masked by prefix: "
                              "train on single-turn conversations")
        spans.append((len(prefix), len(upto)))
    return full, spans, literal


def encode_many(tokenizer, conversations: Sequence[Sequence[dict]], eos_ids: Sequence[int]) -> list[Encoded]:
    """Tokenize conversations; label each assistant reply up to and including its end-of-turn token.

    Message text stays text: special-token strings in it never become control tokens (selfid.model.chat).
    """
    texts, spans, literals = zip(*(assistant_spans(tokenizer, c) for c in conversations)) if conversations else ((), (), ())
    enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)  # one batched call
    encoded = [tokenize(tokenizer, t, lit, offsets=True) if lit else (i, o)
               for t, lit, i, o in zip(texts, literals, enc["input_ids"], enc["offset_mapping"])]
    eos = set(int(e) for e in eos_ids)
    out = []
    for (ids, offsets), sp in zip(encoded, spans):
        starts = np.array([o[0] for o in offsets], dtype=np.int64)
        ids = np.asarray(ids, dtype=np.int64)
        keep = np.zeros(len(ids), dtype=bool)
        for a, b in sp:
            inside = np.flatnonzero((starts >= a) & (starts < b))
            if len(inside) == 0:
                continue
            stops = [i for i in inside if int(ids[i]) in eos]
            if stops:  # the reply ends at its end-of-turn token; the newline after it is template, not reply
                inside = inside[inside <= stops[0]]
            keep[inside] = True
        keep[0] = False  # nothing predicts the first token
        out.append(Encoded(ids, np.flatnonzero(keep)))
    return out


def pack(lengths: Sequence[int], capacity: int, rng: random.Random) -> list[list[int]]:
    """Best-fit decreasing: sample indices grouped into rows of at most `capacity` tokens, rows shuffled.

    Samples of equal length keep a seeded random order, so each epoch packs differently.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    order.sort(key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"sample {i} has {n} tokens, more than a row's {capacity}")
        j = bisect.bisect_left(free, (n, -1))
        if j < len(free):
            room, r = free.pop(j)
            rows[r].append(i)
            room -= n
        else:
            rows.append([i])
            r, room = len(rows) - 1, capacity - n
        if room > 0:
            bisect.insort(free, (room, r))
    rng.shuffle(rows)
    return rows


@dataclass
class Batch:
    input_ids: "torch.Tensor"  # [B, L]
    position_ids: "torch.Tensor"  # [B, L], restarting at 0 for every sample (and for the padding tail)
    cu_seq_lens: "torch.Tensor"  # int32 [S + 1], boundaries of every sample in the flattened [B * L]
    max_length: int  # longest segment
    hidden_index: "torch.Tensor"  # int64 [N]: flattened positions whose next token is trained on
    targets: "torch.Tensor"  # int64 [N]: those next tokens
    tokens: int  # real (non-padding) tokens
    label_tokens: int

    def to(self, device) -> "Batch":
        nb = device.type == "cuda"
        move = lambda t: t.to(device, non_blocking=nb)  # noqa: E731
        return Batch(move(self.input_ids), move(self.position_ids), move(self.cu_seq_lens), self.max_length,
                     move(self.hidden_index), move(self.targets), self.tokens, self.label_tokens)


def collate(encoded: Sequence[Encoded], rows: Sequence[Sequence[int]], pack_length: int, pad_id: int,
            pin: bool = False, min_rows: int = 1) -> Batch:
    """Rows of sample indices -> a packed batch of shape [max(len(rows), min_rows), pack_length].

    Rows past `rows` are padding with nothing to learn (a compiled model then sees one batch shape all run)."""
    import torch

    B, L = max(len(rows), min_rows, 1), pack_length
    ids = np.full((B, L), pad_id, dtype=np.int64)
    pos = np.zeros((B, L), dtype=np.int64)
    cu = [0]
    hidden, targets = [], []
    tokens = 0
    for b, row in enumerate(rows):
        off = 0
        for i in row:
            e = encoded[i]
            n = len(e.ids)
            ids[b, off:off + n] = e.ids
            pos[b, off:off + n] = np.arange(n)
            hidden.append(b * L + off + e.label_pos - 1)
            targets.append(e.ids[e.label_pos])
            off += n
            cu.append(b * L + off)
        tokens += off
        if off < L:  # the padding tail is a segment of its own, so no sample attends to it
            pos[b, off:] = np.arange(L - off)
            cu.append(b * L + L)
    for b in range(len(rows), B):  # padding rows (an empty micro-batch, DDP's last step): each a segment of its own
        pos[b] = np.arange(L)
        cu.append(b * L + L)
    segs = np.diff(cu)
    hidden_index = np.concatenate(hidden) if hidden else np.zeros(0, dtype=np.int64)
    target_ids = np.concatenate(targets) if targets else np.zeros(0, dtype=np.int64)
    t = lambda a, dt=torch.long: torch.from_numpy(np.ascontiguousarray(a)).to(dt)  # noqa: E731
    batch = Batch(t(ids), t(pos), t(np.asarray(cu), torch.int32), int(segs.max()), t(hidden_index), t(target_ids),
                  tokens, len(target_ids))
    if pin:
        batch = Batch(batch.input_ids.pin_memory(), batch.position_ids.pin_memory(), batch.cu_seq_lens.pin_memory(),
                      batch.max_length, batch.hidden_index.pin_memory(), batch.targets.pin_memory(),
                      batch.tokens, batch.label_tokens)
    return batch
