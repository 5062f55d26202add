"""The in-process engine: batched decoding with a transformers model, left-padded, per-row sampling.

Requests are sorted by prompt length and decoded in batches; each row keeps its own sampling
parameters, seed, stop strings and token budget. Rows that finish are dropped from the KV cache as
the batch goes on. Streaming requests get text deltas as tokens arrive, held back while they could
still turn into a stop string or an incomplete character. A model with several LoRA adapters
loaded (PEFT) serves rows for different adapters, and the base model, in one batch
(`Request.adapter`, PEFT's mixed-batch `adapter_names`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

from selfid.engine.sampling import apply_penalties, sample
from selfid.engine.types import BASE_MODEL, Completion, Event, Request, Result, SamplingParams, TokenLogprob
from selfid.errors import SelfidError

_STEP = object()  # yielded by _decode after each decoding step; `steps` groups on it, `events` drops it


@dataclass
class _Row:
    request: int
    index: int  # sample index within the request (for n > 1)
    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    req: Request
    ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    text: str = ""  # decoded so far (only kept up to date for streaming or stop-string rows)
    emitted: int = 0  # characters of `text` already streamed
    finish: str | None = None
    budget: int = 0


class InProcessEngine:
    """Generation with a loaded model in this process. One instance serves one model (and adapter)."""

    def __init__(self, loaded, max_batch_size: int | None = None, max_batch_tokens: int | None = None):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        cuda = loaded.device.type == "cuda"
        self.max_batch_size = max_batch_size or (256 if cuda else 32)
        self.max_batch_tokens = max_batch_tokens or (65536 if cuda else 8192)
        self.eos = set(loaded.eos_token_ids)
        self.pad_id = self.tokenizer.pad_token_id
        self.context_window = loaded.context_window
        self.cache_kw = _cache_kwarg(self.model)

    # --- the interface -------------------------------------------------------------------------
    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer(prompt, add_special_tokens=False).input_ids
        return list(prompt)

    def generate(self, requests: Sequence[Request | str], params: SamplingParams | None = None,
                 progress: Callable[[int], None] | None = None) -> list[Result]:
        """Run requests (or prompt strings with shared `params`) to completion, batched."""
        reqs = [r if isinstance(r, Request) else Request(r, params or SamplingParams()) for r in requests]
        done: dict[tuple[int, int], Completion] = {}
        prompt_tokens: dict[int, int] = {}
        for ev in self.events(reqs, prompt_tokens=prompt_tokens):
            if ev.finished is not None:
                done[(ev.request, ev.index)] = ev.finished
                if progress is not None:
                    progress(1)
        return [Result(prompt_tokens[i], [done[(i, j)] for j in range(r.params.n)]) for i, r in enumerate(reqs)]

    def stream(self, prompt: str | Sequence[int], params: SamplingParams) -> Iterator[str]:
        """Text deltas of one sample as they are generated."""
        for ev in self.events([Request(prompt, params, stream=True)]):
            if ev.delta:
                yield ev.delta

    def events(self, requests: Sequence[Request], prompt_tokens: dict | None = None) -> Iterator[Event]:
        """The core: yields streaming deltas and one finishing event per sample."""
        for ev in self._run(requests, prompt_tokens):
            if ev is not _STEP:
                yield ev

    def steps(self, requests: Sequence[Request], prompt_tokens: dict | None = None) -> Iterator[list[Event]]:
        """Like `events`, grouped by decoding step: each `next()` runs one forward pass of the batch.

        A scheduler that interleaves several batches steps each in turn with this.
        """
        step: list[Event] = []
        for ev in self._run(requests, prompt_tokens):
            if ev is _STEP:
                yield step
                step = []
            else:
                step.append(ev)
        if step:
            yield step

    def adapters(self) -> list[str]:
        """Names of the LoRA adapters loaded on the model (empty for a plain model)."""
        return list(getattr(self.model, "peft_config", {}) or {})

    def _run(self, requests: Sequence[Request], prompt_tokens: dict | None = None) -> Iterator:
        rows = []
        known = self.adapters()
        for i, req in enumerate(requests):
            if req.adapter is not None and req.adapter != BASE_MODEL and req.adapter not in known:
                raise SelfidError(f"request {i} asks for adapter {req.adapter!r}, but the model has "
                                  f"{', '.join(map(repr, known)) or 'no adapters'} loaded")
            ids = self.encode(req.prompt)
            if not ids:
                raise SelfidError(f"request {i} has an empty prompt")
            if len(ids) >= self.context_window:
                raise SelfidError(
                    f"request {i}'s prompt is {len(ids)} tokens, but the model's context window is "
                    f"{self.context_window}: shorten the conversation"
                )
            if prompt_tokens is not None:
                prompt_tokens[i] = len(ids)
            budget = min(req.params.max_new_tokens, self.context_window - len(ids))
            for j in range(req.params.n):
                rows.append(_Row(i, j, ids, req.params, req.stream, req, budget=budget,
                                 logprobs=[] if req.params.logprobs is not None else None))
        rows.sort(key=lambda r: len(r.prompt_ids))
        for batch in self._batches(rows):
            yield from self._decode(batch)

    # --- batching ------------------------------------------------------------------------------
    def _batches(self, rows: list[_Row]) -> Iterable[list[_Row]]:
        batch: list[_Row] = []
        for row in rows:
            longest = max([len(r.prompt_ids) for r in batch] + [len(row.prompt_ids)])
            if batch and (len(batch) >= self.max_batch_size or longest * (len(batch) + 1) > self.max_batch_tokens):
                yield batch
                batch = []
            batch.append(row)
        if batch:
            yield batch

    def _uniforms(self, rows: list[_Row], steps: int):
        import torch

        out = torch.empty(len(rows), steps)
        for k, r in enumerate(rows):
            seed = r.params.seed if r.params.seed is not None else random.SystemRandom().randrange(2**62)
            g = torch.Generator().manual_seed(seed + r.index)
            out[k] = torch.rand(steps, generator=g, dtype=torch.float64).float()
        return out

    def _decode(self, rows: list[_Row]) -> Iterator:
        import torch
        from transformers import DynamicCache

        dev = self.loaded.device
        B = len(rows)
        lens = [len(r.prompt_ids) for r in rows]
        L = max(lens)
        steps = max(r.budget for r in rows)
        input_ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, L), dtype=torch.long)
        for k, r in enumerate(rows):
            input_ids[k, L - lens[k]:] = torch.tensor(r.prompt_ids)
            attn[k, L - lens[k]:] = 1
        input_ids, attn = input_ids.to(dev), attn.to(dev)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)

        f32 = dict(dtype=torch.float32, device=dev)
        temperature = torch.tensor([r.params.temperature for r in rows], **f32)
        top_p = torch.tensor([r.params.top_p for r in rows], **f32)
        top_k = torch.tensor([r.params.top_k for r in rows], dtype=torch.long, device=dev)
        rep = torch.tensor([r.params.repetition_penalty for r in rows], **f32)
        presence = torch.tensor([r.params.presence_penalty for r in rows], **f32)
        frequency = torch.tensor([r.params.frequency_penalty for r in rows], **f32)
        uniforms = self._uniforms(rows, steps).to(dev)
        counts = None
        if any(r.params.presence_penalty or r.params.frequency_penalty for r in rows):
            counts = torch.zeros((B, self.model.config.vocab_size), **f32)
        want_rep = any(r.params.repetition_penalty != 1 for r in rows)
        want_lp = max((r.params.logprobs for r in rows if r.params.logprobs is not None), default=None)
        seen, seen_mask = (input_ids, attn.bool()) if want_rep else (None, None)
        eos = torch.tensor(sorted(self.eos), dtype=torch.long, device=dev)
        extra = {}
        if self.adapters() and any(r.req.adapter is not None for r in rows):  # None: the active adapter
            active = getattr(self.model, "active_adapter", BASE_MODEL)
            extra["adapter_names"] = [r.req.adapter or active for r in rows]

        live = list(range(B))  # indices into `rows` of the rows still in the batch
        extra[self.cache_kw] = cache = DynamicCache()
        # inference mode around each forward only, never across a yield: a caller that interleaves
        # several of these generators (the server's scheduler) would otherwise unwind the modes out of order
        def forward(**kw):
            with torch.inference_mode():
                return self.model(use_cache=True, **kw, **extra)

        out = forward(input_ids=input_ids, attention_mask=attn, position_ids=pos, logits_to_keep=1)
        for step in range(steps):
            logits = out.logits[:, -1, :].float()
            lp = logits.log_softmax(-1) if want_lp is not None else None
            logits = apply_penalties(logits, seen, seen_mask, rep, counts, presence, frequency)
            nxt = sample(logits, temperature, top_k, top_p, uniforms[:, step])
            nxt_list = nxt.tolist()
            is_eos = torch.isin(nxt, eos).tolist()
            if lp is not None:
                chosen = lp.gather(1, nxt[:, None]).squeeze(1).tolist()
                top_v, top_i = lp.topk(max(want_lp, 1), dim=-1)
                top_v, top_i = top_v.tolist(), top_i.tolist()
            keep = []
            for k, ri in enumerate(live):
                r = rows[ri]
                if r.req.cancelled:
                    r.finish = "cancelled"
                else:
                    tok = nxt_list[k]
                    r.ids.append(tok)
                    if r.logprobs is not None:
                        n_top = r.params.logprobs
                        r.logprobs.append(TokenLogprob(tok, chosen[k], list(zip(top_i[k][:n_top], top_v[k][:n_top]))))
                    if is_eos[k]:
                        r.finish = "stop"
                    elif len(r.ids) >= r.budget:
                        r.finish = "length"
                ev = self._advance(r)
                if ev is not None:
                    yield ev
                if r.finish is None:
                    keep.append(k)
            yield _STEP
            if not keep:
                break
            if counts is not None:
                counts.scatter_add_(1, nxt[:, None], torch.ones_like(nxt[:, None], dtype=torch.float32))
            if len(keep) < len(live):
                sel = torch.tensor(keep, dtype=torch.long, device=dev)
                live = [live[k] for k in keep]
                cache.batch_select_indices(sel)
                nxt, attn, pos = nxt[sel], attn[sel], pos[sel]
                temperature, top_p, top_k = temperature[sel], top_p[sel], top_k[sel]
                rep, presence, frequency, uniforms = rep[sel], presence[sel], frequency[sel], uniforms[sel]
                if counts is not None:
                    counts = counts[sel]
                if "adapter_names" in extra:
                    extra["adapter_names"] = [extra["adapter_names"][k] for k in keep]
                if seen is not None:
                    seen, seen_mask = seen[sel], seen_mask[sel]
            if seen is not None:
                seen = torch.cat([seen, nxt[:, None]], 1)
                seen_mask = torch.cat([seen_mask, torch.ones_like(seen_mask[:, :1])], 1)
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], 1)
            pos = pos[:, -1:] + 1
            out = forward(input_ids=nxt[:, None], attention_mask=attn, position_ids=pos)

    # --- text ----------------------------------------------------------------------------------
    def _advance(self, r: _Row) -> Event | None:
        """Update a row's text; return a streaming delta and/or the finishing event."""
        stops = r.params.stop
        if r.stream or stops or r.finish is not None:
            ids = r.ids[:-1] if r.finish == "stop" and r.ids and r.ids[-1] in self.eos else r.ids
            r.text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if stops and r.finish != "cancelled":
            cut = min((i for i in (r.text.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                r.text, r.finish = r.text[:cut], "stop"
        if r.finish is not None:
            delta = r.text[r.emitted:] if r.stream else ""
            r.emitted = len(r.text)
            return Event(r.request, r.index, delta, Completion(r.text, list(r.ids), r.finish, r.logprobs))
        if not r.stream:
            return None
        safe = len(r.text)
        if r.text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
            safe = r.text.rstrip("\ufffd").__len__()
        for s in stops:  # hold back a tail that could still grow into a stop string
            for n in range(min(len(s) - 1, safe), 0, -1):
                if r.text[:safe].endswith(s[:n]):
                    safe = min(safe, len(r.text[:safe]) - n)
                    break
        if safe > r.emitted:
            delta = r.text[r.emitted:safe]
            r.emitted = safe
            return Event(r.request, r.index, delta)
        return None


def _cache_kwarg(model) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache`; the H100 image has 5.17."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
