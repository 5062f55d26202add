"""The in-process engine: batched decoding with a transformers model, left-padded, per-row sampling.

Requests are sorted by prompt length and decoded in batches; each row keeps its own sampling
parameters, seed, stop strings and token budget. Rows that finish are dropped from the KV cache as
the batch goes on, and new requests can join a running batch between steps (`events(..., admit=)`,
continuous batching for the server; see batch.py). A prompt longer than `prefill_chunk` tokens is prefilled a
chunk at a time, one chunk between two steps of the rows decoding, and leaves at the next chunk when its request
is cancelled (prefill.py), so a long prompt slows the others instead of stopping them. Streaming requests get text deltas as tokens arrive, held back while they could
still turn into a stop string or an incomplete character. A model with several LoRA adapters
loaded (PEFT) serves rows for different adapters, and the base model, in one batch
(`Request.adapter`, PEFT's mixed-batch `adapter_names`).

How a decode step runs (`decode`, or the SELFID_DECODE environment variable): `eager` runs the
transformers model step by step with a growing cache; `static` decodes from a preallocated slot cache
(static.py); `graph` does that with each step captured in a CUDA graph; `auto` (the default) is
`graph` on CUDA and `eager` on the CPU; `compiled` is `graph` with the decode step of the small buckets (up to
static.COMPILED_ROWS rows) compiled by torch.compile before capture (gpt-fast's step), on CUDA only: on the CPU it
decodes eagerly and says so. Static, graph and compiled decoding are checked against eager decoding on first use; if
compiled decoding fails its check it falls back to `graph`, and if that (or static) fails, or a batch mixes adapters,
the engine decodes eagerly; each fallback logs why in one line. Compiled decode steps are kept in the compile cache
beside the model (selfid/model/compile_cache.py), so a second server start finds them compiled.

On CUDA each step runs ahead (`run_ahead`): the sampled tokens are copied out and the next forward pass is
queued for every row before the host reads them, so the per-row work here (stops, streaming text, events)
overlaps the GPU's; rows that finished are dropped after that pass, which computed one token for them in vain.
A step reads back from the device only its sampled tokens (and log-probabilities when a row asks for them).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

from selfid.engine import static, static_check
from selfid.engine.batch import DecodeBatch
from selfid.engine.cache_kwarg import cache_kwarg
from selfid.engine.prefill import Prefill
from selfid.engine.types import BASE_MODEL, Completion, Event, Request, Result, SamplingParams, TokenLogprob
from selfid.errors import SelfidError
from selfid.model import compile_cache

log = logging.getLogger("selfid.engine")
DECODE_MODES = ("auto", "eager", "static", "graph", "compiled")


def resolve_decode(asked: str, cuda: bool) -> tuple[str, str | None]:
    """The decode mode an engine starts with for mode `asked` (a DECODE_MODES value), and why it is not the one
    asked (None: it is)."""
    if asked not in DECODE_MODES:
        raise SelfidError(f"decode mode {asked!r} is not one of {', '.join(DECODE_MODES)} (check SELFID_DECODE)")
    if asked == "auto":
        return ("graph" if cuda else "eager"), None
    if asked == "graph" and not cuda:
        raise SelfidError("decode mode 'graph' (CUDA graphs) needs a CUDA device: use 'static' or 'eager'")
    if asked == "compiled" and not cuda:
        return "eager", "compiled decoding needs a CUDA device (its step is captured in CUDA graphs)"
    return asked, None


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
    watch: bool = False  # its text is needed every step (streaming or stop strings)
    stream_text: object = None  # incremental detokenizer (tokenizers' DecodeStream) for a watched row
    fed: int = 0  # ids given to stream_text so far


class InProcessEngine:
    """Generation with a loaded model in this process. One instance serves one model (and adapter)."""

    def __init__(self, loaded, max_batch_size: int | None = None, max_batch_tokens: int | None = None,
                 decode: str | None = None, prefill_chunk: int | None = None):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        cuda = loaded.device.type == "cuda"
        # a decode step costs about the same at 64 rows as at 1024 on an H100 (eager transformers is
        # launch-bound: ~30 ms a step for the 0.5B model), so GPU batches are as wide as memory allows
        self.max_batch_size = max_batch_size or (1024 if cuda else 32)
        self.max_batch_tokens = max_batch_tokens or (131072 if cuda else 8192)
        # prompts longer than this run in chunks of it, one chunk between two decoding steps of the other rows; on
        # the CPU a 128-token chunk of the 0.5B model costs about what 4-8 decoding steps do
        self.prefill_chunk = prefill_chunk or (2048 if cuda else 128)
        self.eos = set(loaded.eos_token_ids)
        self.pad_id = self.tokenizer.pad_token_id
        self.context_window = loaded.context_window
        self.cache_kw = cache_kwarg(self.model)
        self._said: set[str] = set()
        asked = decode or os.environ.get("SELFID_DECODE") or "auto"
        mode, why = resolve_decode(asked, cuda)
        self.decode_mode = mode
        # what decoding does (mode asked, mode in use, why not the one asked, the start-up check's errors, counters)
        self.decode_info: dict = {"asked": mode if asked == "auto" else asked, "using": None, "reason": why,
                                  "check": None}
        if why is not None:
            self._say("fallback", f"{asked} decoding is off ({why}); decoding eagerly")
        self._compile_cache = None  # the compiled decode step's entry in the compile cache (compiled mode)
        self._slots = None  # the static decoder, made on first use
        # on CUDA the next step is queued before the host reads this step's tokens back (DecodeBatch.run_ahead), so
        # the per-row work on the host overlaps the device's; on the CPU there is nothing to overlap
        self.run_ahead = cuda

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

    def events(self, requests: Sequence[Request], prompt_tokens: dict | None = None,
               admit: Callable[[int], Sequence[Request]] | None = None) -> Iterator[Event]:
        """The core: yields streaming deltas and one finishing event per sample.

        `admit(free_rows)`, when given, is called between decoding steps of the last batch and may return
        more requests to join it (continuous batching); they are numbered after `requests`, in order.
        """
        rows = self._rows(requests, 0, prompt_tokens)
        rows.sort(key=lambda r: len(r.prompt_ids))
        batches = list(self._batches(rows))
        for k, batch in enumerate(batches):
            last = k == len(batches) - 1
            yield from self._decode(batch, admit if last else None, len(requests), prompt_tokens)

    def adapters(self) -> list[str]:
        """Names of the LoRA adapters loaded on the model (empty for a plain model)."""
        return list(getattr(self.model, "peft_config", {}) or {})

    def _rows(self, requests: Sequence[Request], first: int, prompt_tokens: dict | None) -> list[_Row]:
        rows = []
        known = self.adapters()
        for i, req in enumerate(requests, start=first):
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
            watch = bool(req.stream or req.params.stop)
            for j in range(req.params.n):
                rows.append(_Row(i, j, ids, req.params, req.stream, req, budget=budget,
                                 logprobs=[] if req.params.logprobs is not None else None, watch=watch,
                                 stream_text=self._text_stream() if watch else None))
        return rows

    # --- batching ------------------------------------------------------------------------------
    def _batches(self, rows: list[_Row]) -> Iterable[list[_Row]]:
        batch: list[_Row] = []
        longest = 0
        for row in rows:
            longest = max(longest, len(row.prompt_ids))
            if batch and (len(batch) >= self.max_batch_size or longest * (len(batch) + 1) > self.max_batch_tokens):
                yield batch
                batch, longest = [], len(row.prompt_ids)
            batch.append(row)
        if batch:
            yield batch

    def _forward(self, cache, adapter_names, **inputs):
        """One forward pass. Inference mode around the call only, never across a yield of `events`:
        a caller that interleaves generators would otherwise unwind the modes out of order."""
        import torch

        extra = {self.cache_kw: cache}
        if adapter_names is not None:
            extra["adapter_names"] = adapter_names
        with torch.inference_mode():
            return self.model(use_cache=True, **inputs, **extra)

    def _adapter_names(self, rows: list[_Row], static) -> list[str] | None:
        """Each row's adapter for PEFT's mixed batches, or None when the model as it is serves every row."""
        names = None
        if self.adapters() and any(r.req.adapter is not None for r in rows):  # None: the active adapter
            names = [r.req.adapter or self._active_adapter() for r in rows]
            if static is not None and set(names) == {self._active_adapter()} != {BASE_MODEL}:
                names = None  # every row wants the adapter the model runs anyway: no per-row routing needed
            elif static is not None:
                self._say("adapters", "rows that name adapters decode eagerly (PEFT's per-row adapters cannot be "
                                      "captured in a static step)")
        return names

    def _prefill(self, rows: list[_Row], static=None, prefilled: Prefill | None = None) -> DecodeBatch:
        names = prefilled.adapter_names if prefilled is not None else self._adapter_names(rows, static)
        return DecodeBatch(rows, self._forward, self.pad_id, self.model.config.vocab_size, self.loaded.device, names,
                           static=static, prefilled=prefilled)

    def decode_report(self) -> dict:
        """How this engine decodes: the mode asked and in use, why not the one asked, the start-up check, counters."""
        out = dict(self.decode_info)
        if self._slots is not None and self.decode_mode != "eager":
            out["using"] = ("compiled" if self._slots.compiled and self._slots.compile_error is None else
                            "graph" if self._slots.graphs_on else "static")
            out["stats"] = dict(self._slots.stats)
        if self._compile_cache is not None:
            out["compile_cache"] = self._compile_cache.status
        return out

    def warm(self) -> None:
        """Check static/graph decoding and capture the small batch shapes now rather than on the first requests."""
        static = self._static()
        if static is not None:
            try:
                static.warm(rows=[b for b in (1, 2, 4, 8, 16, 32) if b <= self.max_batch_size])
            except Exception as e:  # noqa: BLE001 - e.g. no room for the cache: shapes are then captured on first use
                self._say("warm", f"capturing the small batch shapes ahead failed ({type(e).__name__}: {e}); "
                                  "they are captured on first use")
            finally:
                static.release()
                self._save_compiled()

    def _save_compiled(self) -> None:
        """Keep this process's compiled decode steps in the compile cache, once (nothing when they were loaded)."""
        cache = self._compile_cache
        if cache is not None and cache.status not in ("loaded", "saved", "off") and self._slots is not None \
                and self._slots.compile_error is None:
            try:
                cache.save()
            except OSError as e:  # a read-only cache folder: the next start compiles again
                self._say("compile-cache", f"could not keep the compiled decode steps ({e})")

    def _say(self, key: str, text: str) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning("selfid engine: %s", text)

    def _static(self):
        """The static decoder for one `_decode`, or None (eager: asked for, unusable here, or already in use)."""
        if self.decode_mode == "eager":
            self.decode_info["using"] = "eager"
            return None
        if self._slots is None:
            reason, info, dec = self._checked_decoder()
            if reason is not None and self.decode_mode == "compiled":  # fall back to the uncompiled graphs
                if dec is not None:
                    dec.drop_compiled()  # frees the refused step's frozen weights
                self.decode_info["compiled_refused"] = reason
                self._say("compiled", f"compiled decoding is off ({reason}); decoding from CUDA graphs uncompiled")
                self.decode_mode, self._compile_cache = "graph", None
                reason, info, dec = self._checked_decoder()
            self.decode_info["check"] = info
            if reason is not None:
                self.decode_mode = "eager"
                self.decode_info.update(using="eager", reason=reason)
                self._say("fallback", f"{self.decode_info['asked']} decoding is off ({reason}); decoding eagerly")
                return None
            self._slots = dec
            self.decode_info["using"] = self.decode_mode
        if self._slots.busy:  # another batch of this engine is decoding from the slots (interleaved generators)
            return None
        self._slots.acquire()
        return self._slots

    def _checked_decoder(self):
        """(why the static decoder of this engine's mode cannot be used or None, the check's errors, the decoder)."""
        reason = static.unsupported(self.model)
        if reason is not None:
            return reason, None, None
        compiled = self.decode_mode == "compiled"
        try:
            if compiled:  # an earlier start's compiled steps, loaded before anything compiles
                self._compile_cache = compile_cache.for_model(
                    self.loaded.path, self.loaded.name, "decode",
                    {"rows": static.COMPILED_ROWS, "dtype": str(next(self.model.parameters()).dtype),
                     "model": type(self.model).__name__, "freezing": static.freezing()},
                    self.loaded.device)
                self._compile_cache.load()
            dec = static.SlotDecoder(self.model, self.loaded.device, self.context_window,
                                     graphs=self.decode_mode in ("graph", "compiled"), prefer_slots=self.max_batch_size,
                                     compiled=compiled)
            reason, info = static_check.check(self, dec)
        except Exception as e:  # noqa: BLE001 - anything that breaks the static path means eager decoding
            return f"{type(e).__name__}: {e}", None, None
        return reason, info, dec

    def _active_adapter(self) -> str:
        active = getattr(self.model, "active_adapter", BASE_MODEL)
        return active if isinstance(active, str) else BASE_MODEL

    def _decode(self, rows: list[_Row], admit, next_request: int, prompt_tokens: dict | None) -> Iterator[Event]:
        static = self._static()
        try:
            yield from self._decode_with(static, rows, admit, next_request, prompt_tokens)
        finally:
            if static is not None:
                static.release()
                self._save_compiled()

    def _decode_with(self, static, rows: list[_Row], admit, next_request: int,
                     prompt_tokens: dict | None) -> Iterator[Event]:
        """Decode `rows` (and the requests `admit` brings) until none is left. Prompts longer than `prefill_chunk`
        are run a chunk at a time, one chunk between two decoding steps of the other rows (prefill.py)."""
        prefills: list[Prefill] = []  # long prompts being run, oldest first; only the oldest advances
        batch = self._start(rows, None, static, prefills)
        while True:
            if batch is not None and len(batch):
                yield from self._step(batch)
            for pre in prefills:
                yield from self._drop_cancelled(pre)
            prefills = [pre for pre in prefills if pre.rows]
            if prefills:
                head = prefills[0]
                head.step()
                if head.finished:
                    prefills.pop(0)
                    batch = self._joined(batch, self._prefill(head.rows, self._static_of(batch, static), head))
            live = (len(batch) if batch is not None else 0) + sum(len(pre.rows) for pre in prefills)
            if admit is not None and live < self.max_batch_size:
                joining = list(admit(self.max_batch_size - live))
                if joining:
                    new_rows = self._rows(joining, next_request, prompt_tokens)
                    next_request += len(joining)
                    batch = self._start(new_rows, batch, static, prefills)
            if (batch is None or not len(batch)) and not prefills:
                return

    def _start(self, rows: list[_Row], batch: DecodeBatch | None, static, prefills: list[Prefill]) -> DecodeBatch | None:
        """Prefill new rows: short prompts at once, into the batch; long ones become a chunked Prefill."""
        long = [r for r in rows if len(r.prompt_ids) > self.prefill_chunk]
        short = [r for r in rows if len(r.prompt_ids) <= self.prefill_chunk]
        where = self._static_of(batch, static)
        if long:
            prefills.append(Prefill(long, self._forward, self.pad_id, self.loaded.device,
                                    self._adapter_names(long, where), self.prefill_chunk))
        if short:
            batch = self._joined(batch, self._prefill(short, where))
        return batch

    @staticmethod
    def _static_of(batch: DecodeBatch | None, static):
        """The static decoder new rows go into: the running batch's (None once it went eager), else this run's."""
        return batch.static if batch is not None and len(batch) else static

    def _joined(self, batch: DecodeBatch | None, fresh: DecodeBatch) -> DecodeBatch:
        if batch is not None and len(batch):
            batch.merge(fresh, self._active_adapter())
            return batch
        return fresh

    def _drop_cancelled(self, pre: Prefill) -> Iterator[Event]:
        """Rows of a prefill in progress whose request was cancelled leave it before its next chunk."""
        keep = [k for k, r in enumerate(pre.rows) if not r.req.cancelled]
        if len(keep) == len(pre.rows):
            return
        for r in pre.rows:
            if r.req.cancelled:
                r.finish = "cancelled"
                ev = self._advance(r)
                if ev is not None:
                    yield ev
        pre.keep(keep)

    def _step(self, batch: DecodeBatch) -> Iterator[Event]:
        """One decoding step of every row in `batch`: sample, emit text and finished rows, drop them, run ahead."""
        import torch

        eos = self.eos
        want_lp = batch.top_logprobs
        nxt, lp = batch.sample()
        ahead = self.run_ahead and lp is None
        if ahead:  # copy the tokens out, then queue the next step before waiting for the copy
            host = nxt.to("cpu", non_blocking=True)
            copied = torch.cuda.Event() if nxt.is_cuda else None
            if copied is not None:
                copied.record()
            batch.run_ahead(nxt)
            if copied is not None:
                copied.synchronize()
            nxt_list = host.tolist()
        else:
            nxt_list = nxt.tolist()  # the step's one read-back from the device
        if lp is not None:
            chosen = lp.gather(1, nxt[:, None]).squeeze(1).tolist()
            top_v, top_i = lp.topk(max(want_lp, 1), dim=-1)
            top_v, top_i = top_v.tolist(), top_i.tolist()
        keep = []
        # per row and per step: keep this loop lean, it runs batch size x steps times (1,024 rows in an audit)
        for k, r in enumerate(batch.rows):
            if r.req.cancelled:
                r.finish = "cancelled"
            else:
                tok = nxt_list[k]
                r.ids.append(tok)
                if r.logprobs is not None:
                    n_top = r.params.logprobs
                    r.logprobs.append(TokenLogprob(tok, chosen[k], list(zip(top_i[k][:n_top], top_v[k][:n_top]))))
                if tok in eos:
                    r.finish = "stop"
                elif len(r.ids) >= r.budget:
                    r.finish = "length"
            if r.finish is not None or r.watch:
                ev = self._advance(r)
                if ev is not None:
                    yield ev
            if r.finish is None:
                keep.append(k)
        if ahead:
            batch.drop(keep)
        else:
            batch.advance(nxt, keep)

    # --- text ----------------------------------------------------------------------------------
    def _text_stream(self):
        """An incremental detokenizer for one row, or None when the tokenizer has none that matches `decode`."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None or getattr(self.tokenizer, "clean_up_tokenization_spaces", False):
            return None  # decode() would post-process the text: decode whole each step instead
        try:
            from tokenizers.decoders import DecodeStream
        except ImportError:  # tokenizers older than 0.21
            return None
        return DecodeStream(skip_special_tokens=True)

    def _advance(self, r: _Row) -> Event | None:
        """Update a row's text; return a streaming delta and/or the finishing event."""
        stops = r.params.stop
        if r.finish is not None:  # the final text is always decoded whole
            ids = r.ids[:-1] if r.finish == "stop" and r.ids and r.ids[-1] in self.eos else r.ids
            r.text = self.tokenizer.decode(ids, skip_special_tokens=True)
        elif r.stream_text is not None:  # only the new tokens (decoding all of them each step costs O(length))
            backend = self.tokenizer.backend_tokenizer
            for tok in r.ids[r.fed:]:
                piece = r.stream_text.step(backend, tok)
                if piece:
                    r.text += piece
            r.fed = len(r.ids)
        elif r.stream or stops:
            r.text = self.tokenizer.decode(r.ids, skip_special_tokens=True)
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
