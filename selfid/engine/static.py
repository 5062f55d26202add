"""Decoding with a static KV cache and, on CUDA, the decode step captured in CUDA graphs (gpt-fast's approach).

Every row being decoded owns a *slot*: one row of a preallocated per-layer key/value buffer
`[slots + 1, kv_heads, length, head_dim]`, in which its token at position p sits in column p. So a
row never moves when others join or leave, a decode step is one fixed-shape forward pass over slots
`[0, b)` for a few bucket sizes b (1, 2, 4, ...; dead slots compute harmlessly), and that pass can be
captured once per bucket and replayed: no Python and no kernel launches per layer. Short prompts are
prefilled the same way (right-padded to a bucket, into their slots); long or wide prefills run the
model's own eager forward and their keys/values are copied into the slots. The last slot is scratch for the
padding rows of a prefill bucket. When rows drop to a smaller bucket, rows in high slots move down.

Attention during these passes is `decode_attention` below: PyTorch's sdpa over the slot's columns with
an additive mask (column <= position), query heads folded per kv head so that each kv head is read once
per step (transformers' sdpa path with a mask repeats every kv head `groups` times). Models that mix
sliding-window and global layers (Gemma 3) get a second mask for the sliding layers (column <= position and
position - column < window), given to the decoder by layer type as transformers' own masks are.

CUDA graphs are checked against the eager path at start-up on a small scripted batch (rows joining
and leaving included: static_check.py); if they disagree, the engine says why in one log line and decodes eagerly.

`compiled=True` (decode mode `compiled`) also runs the decode step of the small buckets (up to COMPILED_ROWS rows)
through `torch.compile` (inductor: the step's norms, rotary embedding, residual adds, mask and head fused into far
fewer kernels than transformers' ~700 per step), and that compiled step is what the CUDA graph captures: gpt-fast's
decode step. Not mode="reduce-overhead": its own CUDA graphs cannot be captured inside this decoder's graphs, which
keep the slot buffers, the per-bucket inputs and the one memory pool. A step that fails to compile runs uncompiled
(`compile_error` says why, and the start-up check then refuses compiled decoding). With SELFID_COMPILE_FREEZING=1 (off
by default: not yet measured on a GPU) the step compiles with inductor's *freezing* (parameters taken as constants),
so inductor concatenates the matrix products that share an input: q, k and v one product per layer, gate and up one
(gpt-fast's fused wqkv and w13). The weights are then baked into the compiled step, so a decoder drops a frozen step,
as it drops its graphs, when the model changes (`_model_key`), in-place weight changes included.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import types
from typing import Callable, Sequence

import torch

from selfid.engine.cache_kwarg import cache_kwarg
from selfid.errors import SelfidError

log = logging.getLogger("selfid.engine")

ATTENTION = "selfid_slots"
MIN_LENGTH = 128  # shortest cache (columns); lengths and slot counts are powers of two
RESERVE_AHEAD = 512  # columns reserved up front beyond a prompt when its budget is larger (more are added on demand)
PREFILL_ROWS = 16  # prefills of at most this many rows ...
PREFILL_TOKENS = 512  # ... and this many tokens each go through captured graphs; larger ones run eagerly
COMPILED_ROWS = 32  # decode buckets of at most this many rows run the compiled step (compiled=True)
_registered = False


class SlotsFull(Exception):
    """The static cache cannot hold what is asked within its memory budget (the caller decodes eagerly)."""


def to_device(values: Sequence[int], device) -> torch.Tensor:
    """Host ints as a long tensor on `device`. On CUDA through pinned memory without waiting: a plain copy from
    pageable memory waits for the work queued on the device, which would undo running a step ahead."""
    t = torch.tensor(list(values), dtype=torch.long)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)  # torch's pinned allocator keeps the block until the copy ran


def pow2(n: int, least: int = 1) -> int:
    n = max(int(n), least)
    return 1 << (n - 1).bit_length()


def decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention interface: query [n, H, q, D] over the slot columns key/value [n, Hkv, L, D].

    PyTorch's scaled_dot_product_attention with the additive mask, the query heads that share a kv head
    folded into the query length (as transformers' own decode path does for one query): each kv head is
    read once instead of being repeated `groups` times.
    """
    import torch.nn.functional as F

    # a sliding window is applied by the mask SlotDecoder builds for the sliding layers (see `layer_masks`)
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise NotImplementedError("static decoding supports causal attention without softcap or sinks only")
    n, H, q, D = query.shape
    Hkv, L = key.shape[1], key.shape[2]
    g = H // Hkv
    qg = query.reshape(n, Hkv, g * q, D)
    mask = attention_mask.reshape(n, 1, 1, q, L)
    mask = mask.expand(n, 1, g, q, L).reshape(n, 1, g * q, L) if g > 1 else mask.reshape(n, 1, q, L)
    out = F.scaled_dot_product_attention(qg, key, value, attn_mask=mask, scale=scaling)
    # reshape, not view: CUDA's kernels return [n, Hkv, g*q, D] laid out as [n, g*q, Hkv, D] (on an H200, view
    # failed with "view size is not compatible with input tensor's size and stride" and decoding fell back to eager)
    return out.reshape(n, H, q, value.shape[-1]).transpose(1, 2).contiguous(), None


def register_attention() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(ATTENTION, decode_attention)
        _registered = True


@contextlib.contextmanager
def _attention(config, name: str):
    """Use attention `name` for the duration of one forward pass (or one graph capture)."""
    old = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = old


class SlotKV:
    """Duck-typed transformers cache over the slot buffers, routed per forward pass.

    `rows` None: batch row i is slot i (decode: a view, no copy); else the slot of each batch row
    (prefill: written and read through an index). `cols` [n, q]: the column each new token goes to.
    """

    def __init__(self, keys: list, values: list):
        self.keys, self.values = keys, values
        self.rows: torch.Tensor | None = None
        self.cols: torch.Tensor | None = None

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        k, v = self.keys[layer_idx], self.values[layer_idx]
        n, h, q, d = key_states.shape
        if self.rows is None:
            k, v = k[:n], v[:n]
            idx = self.cols[:, None, :, None].expand(n, h, q, d)
            k.scatter_(2, idx, key_states.to(k.dtype))
            v.scatter_(2, idx.expand(n, h, q, value_states.shape[-1]), value_states.to(v.dtype))
            return k, v
        k[self.rows[:, None], :, self.cols] = key_states.transpose(1, 2).to(k.dtype)
        v[self.rows[:, None], :, self.cols] = value_states.transpose(1, 2).to(v.dtype)
        return k[self.rows], v[self.rows]

    def get_seq_length(self, layer_idx: int = 0) -> int:  # only asked when no position ids are given
        return 0


def unsupported(model) -> str | None:
    """Why this model cannot decode from slots (None: it can)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config
    if getattr(cfg, "is_encoder_decoder", False):
        return "encoder-decoder models are not supported"
    layer_types = getattr(cfg, "layer_types", None)
    types = set(layer_types or ["full_attention"])
    if not types <= {"full_attention", "sliding_attention"}:
        return f"layer types {sorted(types)} (only full and sliding-window attention are supported)"
    if getattr(cfg, "sliding_window", None) and not layer_types:
        return "a sliding window without per-layer types (the decoder would apply it to layers the mask does not)"
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return "the model's output head does more than a matrix product"
    rope = getattr(cfg, "rope_scaling", None) or getattr(cfg, "rope_parameters", None) or {}
    ropes = [rope] if not isinstance(rope, dict) or "rope_type" in rope or "type" in rope else list(rope.values())
    for r in ropes:  # one set of rope parameters, or one per layer type (Gemma 3: sliding and global layers)
        if isinstance(r, dict) and any(t in str(r.get("rope_type", r.get("type", ""))) for t in ("dynamic", "longrope")):
            return f"rope type {r.get('rope_type') or r.get('type')!r} updates itself from the positions"
    try:
        base.get_decoder(), base.get_output_embeddings()
    except Exception as e:  # noqa: BLE001 - any model without the usual decoder/head split
        return f"no decoder/output head split ({type(e).__name__})"
    if any(getattr(m, "_compiled_call_impl", None) is not None for m in base.modules()):
        return "the model is compiled with torch.compile (train.compile)"
    return None


def freezing() -> bool:
    """Whether the compiled step is frozen: SELFID_COMPILE_FREEZING=1 turns it on. Off by default until it is measured
    on a GPU (it was built and tested on the CPU only, where it cuts the tiny test model's step from 15 matrix products
    to 9; bench/gpu/ab.sh compares the two)."""
    return os.environ.get("SELFID_COMPILE_FREEZING", "0") in ("1", "true", "on", "yes")


def kv_share() -> float:
    """The share of the GPU memory free at start that the KV cache may take: SELFID_KV_SHARE, default 0.4 (vLLM's
    --gpu-memory-utilization, but of what is free). Lower it where the card is shared: an audit started beside
    LLaMA-Factory trainings on one H100 took 37 GiB at 0.4, and the trainings and later audits ran out of memory."""
    text = os.environ.get("SELFID_KV_SHARE", "0.4")
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0.01 <= share <= 0.9:
        raise SelfidError(f"SELFID_KV_SHARE={text!r}: give the share of free GPU memory the KV cache may take, a "
                          "number from 0.01 to 0.9 (default 0.4)")
    return share


def compile_step(fn, device):
    """torch.compile of a decode step for `device`. Shapes are left to torch's automatic dynamic shapes: the first
    bucket (one row, the one-client case) compiles specialised to its shapes; the next shape seen recompiles once with
    the batch size (and later the cache length) symbolic, and that graph serves every other bucket. Static shapes would
    compile once per bucket and cache length (12 graphs for 6 buckets x 2 lengths against 4, measured on the CPU),
    each one about as slow as the first. The recompilation limit is raised for the few there are.

    With freezing (inductor's `freezing`, inference only) parameters become constants of the compiled graph, so
    inductor concatenates the matrix products sharing an input (q/k/v: 3 into 1, gate/up: 2 into 1) and keeps the
    concatenated weights: copies, made once per compiled graph, that do not follow the parameters. Hence the step's own
    code object (`_own_code`) and SlotDecoder dropping its step when the model changes. The parameters stay
    (`freezing_discard_parameters` off): the uncompiled prefill, the larger buckets and the start-up check use them."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 64))
    if not freezing():  # the step reads the parameters as they are: nothing of its own to keep apart or free
        return torch.compile(fn)
    fn = _own_code(fn)
    # CPU only: inductor concatenates CPU matrix products only with this on (CUDA's always); the CPU tests need it
    options = {"cpp.enable_concat_linear": True} if torch.device(device).type == "cpu" else None
    compiled = torch.compile(fn, options=options)
    from torch._inductor import config as inductor
    from torch._inductor.codecache import PyCodeCache

    modules = getattr(PyCodeCache, "modules", [])  # every generated module inductor loaded, in order
    loaded: list = []  # those this step's compilations loaded: they hold its frozen weights

    def step(*args):
        before = len(modules)
        # freezing is set around the call, not in `options`: dynamo reads it while tracing (to take the parameters as
        # graph attributes), before inductor's options apply; given as an option only, nothing is frozen
        with inductor.patch(freezing=True):
            out = compiled(*args)
        loaded.extend(modules[before:])
        return out

    step.release = functools.partial(_forget, getattr(fn, "__func__", fn).__code__, loaded)
    return step


def _own_code(fn):
    """`fn` (a function or bound method) with a code object of its own. Dynamo keeps what it compiled on the code
    object, so a later torch.compile of the same method (a decoder whose model changed, another decoder) would be
    served a frozen graph of earlier weights whenever its guards pass: the parameters' addresses are all they check.
    Compiled on its own code, a step's graphs and constants live and die with it."""
    func = getattr(fn, "__func__", fn)
    own = types.FunctionType(func.__code__.replace(), func.__globals__, func.__name__, func.__defaults__,
                             func.__closure__)
    own.__kwdefaults__, own.__qualname__ = func.__kwdefaults__, func.__qualname__
    return types.MethodType(own, fn.__self__) if hasattr(fn, "__func__") else own


def _forget(code, modules: list) -> None:
    """Free what a dropped step compiled: dynamo's entries for its `code` (kept for the life of the process by dynamo's
    map from compiled code back to the original) and the frozen weights that inductor keeps as attributes of the
    generated `modules` (which its code cache and sys.modules keep; for Qwen2.5-0.5B in bf16 the concatenated q/k/v and
    gate/up weights come to about 0.47 GB per graph). Called once nothing can run the step any more (graphs dropped)."""
    import torch._dynamo
    from torch._dynamo import convert_frame

    reset_code = getattr(torch._dynamo, "reset_code", None)
    if reset_code is not None:
        with getattr(convert_frame, "compile_lock", contextlib.nullcontext()):
            reset_code(code)
    for module in modules:
        for name in [k for k in vars(module) if k.startswith("_frozen_param")]:
            setattr(module, name, None)
    modules.clear()


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # an inference tensor keeps no version counter (and cannot be changed outside inference mode)
        return 0


def _model_key(model, values: bool = False) -> tuple:
    """What a captured graph bakes in besides tensor contents: parameter storage and the adapters' Python state.
    `values`: the contents too (a frozen compiled step bakes them in), as the tensors' version counters, which every
    in-place change bumps (an optimizer step, load_state_dict, copy_), except changes made through `.data`."""
    tensors = list(model.parameters()) + list(model.buffers())
    ptrs = tuple(p.data_ptr() for p in tensors)
    versions = tuple(_version(p) for p in tensors) if values else ()
    adapters = []
    for m in model.modules():
        scaling = getattr(m, "scaling", None)
        if isinstance(scaling, dict):
            adapters.append((tuple(sorted(scaling.items())), tuple(getattr(m, "active_adapters", ()) or ()),
                             bool(getattr(m, "merged", False)), bool(getattr(m, "disable_adapters", False))))
    return hash((ptrs, versions, tuple(adapters), model.training))


class SlotDecoder:
    """The slot buffers, the captured graphs, and the moves rows make between slots. One batch at a time."""

    def __init__(self, model, device, context_window: int, graphs: bool, budget_bytes: int | None = None,
                 min_length: int | None = None, prefer_slots: int = 1, compiled: bool = False):
        register_attention()
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.decoder = base.get_decoder()
        self.head = base.get_output_embeddings()
        self.config = self.decoder.config
        self.cache_kw = cache_kwarg(self.decoder)
        cfg = base.config
        attn = getattr(self.decoder.layers[0], "self_attn", None)
        self.head_dim = getattr(attn, "head_dim", None) or getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.layers = len(self.decoder.layers)
        types = set(getattr(cfg, "layer_types", None) or ())
        self.window = int(cfg.sliding_window) if "sliding_attention" in types else None  # Gemma 3: 512 tokens
        self.dtype = self.decoder.get_input_embeddings().weight.dtype
        self.device = device
        self.context_window = context_window
        self.graphs_on = graphs and device.type == "cuda"
        self.capture_error: str | None = None
        self.compiled = compiled
        self.compile_error: str | None = None
        self._step_fn = None  # the compiled decode step, made on first use
        self.prefill_rows, self.prefill_tokens = PREFILL_ROWS, PREFILL_TOKENS
        self.min_length = min_length or MIN_LENGTH
        self.prefer_slots = prefer_slots  # slots allocated up front when they fit in a quarter of the budget
        self._where = (None, None)  # (slots, their device tensor) of the last step
        if budget_bytes is None:
            if device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(device)
                budget_bytes = int(free * kv_share())
            else:
                budget_bytes = 2 << 30
        self.budget = budget_bytes
        self.slots = 0  # usable slots; buffers have one more (scratch)
        self.length = 0
        self.kv: SlotKV | None = None
        self.used: set[int] = set()
        self.graphs: dict = {}
        self.pool = None
        self.key = None
        self.busy = False
        self.stats = {"graph_steps": 0, "plain_steps": 0, "graph_prefills": 0, "plain_prefills": 0, "eager_prefills": 0,
                      "chunked_prefills": 0,
                      "captures": 0, "moves": 0, "reallocations": 0, "to_eager": 0, "compiled_steps": 0}

    # --- memory ----------------------------------------------------------------------------------
    def bytes_for(self, slots: int, length: int) -> int:
        return 2 * self.layers * (slots + 1) * self.kv_heads * length * self.head_dim * torch.finfo(self.dtype).bits // 8

    @torch.inference_mode()
    def reserve(self, slots: int, length: int) -> None:
        """Make room for `slots` rows of `length` columns (powers of two; contents kept), or raise SlotsFull."""
        S, L = max(self.slots, pow2(slots)), max(self.length, pow2(length, self.min_length))
        if self.kv is None and self.bytes_for(pow2(self.prefer_slots), L) <= self.budget // 4:
            S = max(S, pow2(self.prefer_slots))  # the first allocation: room for a full batch, so rows joining never reallocate
        if (S, L) == (self.slots, self.length):
            return
        if self.bytes_for(S, L) > self.budget:
            raise SlotsFull(f"{S} slots x {L} columns need {self.bytes_for(S, L) / 2**30:.1f} GiB, over the "
                            f"static cache's budget of {self.budget / 2**30:.1f} GiB")
        shape = (S + 1, self.kv_heads, L, self.head_dim)
        keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
        values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
        if self.kv is not None:
            for new, old in zip(keys + values, self.kv.keys + self.kv.values):
                new[:self.slots, :, :self.length] = old[:self.slots]
            self.stats["reallocations"] += 1
        self.graphs, self.pool = {}, None  # graphs point at the old buffers
        self.kv = SlotKV(keys, values)
        self.slots, self.length = S, L
        self._cols = torch.arange(L, device=self.device)

    def take(self, n: int) -> list[int]:
        """n free slots, lowest first (the caller has reserved room)."""
        free = [s for s in range(self.slots) if s not in self.used][:n]
        if len(free) < n:
            raise SlotsFull(f"{n} slots asked, {len(free)} free")
        self.used.update(free)
        return free

    def free(self, slots: Sequence[int]) -> None:
        self.used.difference_update(slots)

    def acquire(self) -> None:
        key = _model_key(self.model, values=self.compiled and freezing())  # only a frozen step keeps old values
        if key != self.key:  # the model changed under the graphs and the compiled step (new weights, adapter or scale)
            self.key = key
            self.drop_compiled()
        self.busy = True

    def release(self) -> None:
        self.used.clear()
        self.busy = False

    def drop_compiled(self) -> None:
        """Drop the captured graphs and the compiled step (a frozen step keeps the weights it was compiled with), and
        free what the step compiled; both are made again on next use."""
        self.graphs, self.pool = {}, None
        step, self._step_fn = self._step_fn, None
        if step is not None and callable(getattr(step, "release", None)):
            step.release()

    # --- the forward pass ------------------------------------------------------------------------------
    def _forward(self, tok, pos, last=None, rows=None):
        """Logits [n, V] for token ids tok [n, q] at positions (= columns) pos [n, q]; `last` [n] picks the
        column whose logits are wanted (None: the last); `rows` [n] the slot of each row (None: slots 0..n-1)."""
        self.kv.rows, self.kv.cols = rows, pos
        if self.compiled and rows is None and last is None and tok.shape[1] == 1 and tok.shape[0] <= COMPILED_ROWS:
            out = self._compiled(tok, pos)
            if out is not None:
                return out
        with _attention(self.config, ATTENTION):
            hidden = self._hidden(tok, pos)
        if last is None:
            h = hidden[:, -1]
        else:
            h = hidden.gather(1, last.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])).squeeze(1)
        return self.head(h)

    def _hidden(self, tok, pos):
        """The decoder's last hidden states [n, q, H] for tok [n, q] at pos [n, q], reading and writing the slots."""
        mask = self.layer_masks(pos, tok.shape[0], tok.shape[1])
        return self.decoder(input_ids=tok, position_ids=pos, attention_mask=mask, use_cache=True,
                            **{self.cache_kw: self.kv}).last_hidden_state

    def _decode_step(self, tok, pos):
        """One decode step's logits [n, V] for tokens tok [n, 1] at pos [n, 1] in slots 0..n-1: what is compiled."""
        return self.head(self._hidden(tok, pos)[:, -1])

    def _compiled(self, tok, pos):
        """The compiled decode step's logits, or None when it cannot compile (then the step runs uncompiled, and
        `compile_error` says why)."""
        if self.compile_error is not None:
            return None
        try:
            if self._step_fn is None:
                self._step_fn = compile_step(self._decode_step, self.device)
            with _attention(self.config, ATTENTION):
                out = self._step_fn(tok, pos)
        except Exception as e:  # noqa: BLE001 - any failure to trace or compile: decode uncompiled
            self.compile_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            log.warning("selfid engine: compiling the decode step failed (%s); decoding it uncompiled",
                        self.compile_error)
            return None
        self.stats["compiled_steps"] += 1
        return out

    def layer_masks(self, pos, n: int, q: int):
        """The additive attention mask [n, 1, q, columns] for tokens at positions (= columns) pos [n, q]: a column
        is seen when it is at or before the token's position. With sliding-window layers, a dict by layer type whose
        sliding mask also hides columns `window` or more positions back (transformers' own rule:
        position - column < window)."""
        later = self._cols > pos[:, None, :, None]
        low = torch.finfo(self.dtype).min
        full = torch.zeros((n, 1, q, self.length), dtype=self.dtype, device=self.device).masked_fill(later, low)
        if self.window is None:
            return full
        behind = self._cols <= pos[:, None, :, None] - self.window
        return {"full_attention": full, "sliding_attention": full.masked_fill(behind, low)}

    def _graph(self, key, n: int, q: int, indexed: bool):
        """The captured pass for `key`, capturing it now if needed; None when capture fails (graphs then stay off)."""
        if key in self.graphs:
            return self.graphs[key]
        try:
            return self._capture(key, n, q, indexed)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory for a large bucket: decode without graphs
            self.graphs_on = False
            self.capture_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            self.graphs, self.pool = {}, None
            log.warning("selfid engine: capturing a CUDA graph for %s failed (%s: %s); decoding from the static "
                        "cache without graphs", key, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            return None

    def _capture(self, key, n: int, q: int, indexed: bool):
        """Capture one forward pass of n rows x q tokens; inputs are the returned buffers, filled before replay."""
        dev = self.device
        buf = {"tok": torch.zeros((n, q), dtype=torch.long, device=dev),
               # warm-up writes land in the last column (no live row has data there yet) or in the scratch slot
               "pos": torch.full((n, q), self.length - 1, dtype=torch.long, device=dev) if not indexed
               else torch.arange(q, device=dev).repeat(n, 1),
               "last": torch.full((n,), q - 1, dtype=torch.long, device=dev) if indexed else None,
               "rows": torch.full((n,), self.slots, dtype=torch.long, device=dev) if indexed else None}
        args = (buf["tok"], buf["pos"], buf["last"], buf["rows"])
        stream = torch.cuda.Stream(dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):
            self._forward(*args)
        torch.cuda.current_stream(dev).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):  # other threads may use CUDA
            buf["out"] = self._forward(*args)
        if self.pool is None:
            self.pool = graph.pool()
        self.graphs[key] = (graph, buf)
        self.stats["captures"] += 1
        return graph, buf

    @torch.inference_mode()
    def warm(self, rows: Sequence[int] = (1, 2, 4, 8, 16, 32), prompt_tokens: Sequence[int] = (32, 64, 128, 256)) -> None:
        """Capture the decode steps of `rows` rows and the prefills of up to 4 prompts of `prompt_tokens` tokens
        now (a server's first requests would otherwise wait for the captures)."""
        if not self.graphs_on:
            return
        self.reserve(max(rows), 2 * max(prompt_tokens))
        for b in rows:
            if self.graphs_on and b <= self.slots:
                self._graph(("decode", pow2(b)), pow2(b), 1, indexed=False)
        for b in (1, 2, 4):
            for q in prompt_tokens:
                q = pow2(q, 16)
                if self.graphs_on and b <= self.prefill_rows and q <= self.prefill_tokens:
                    self._graph(("prefill", b, q), b, q, indexed=True)

    # --- prefill ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, rows, ids, attn, pos, forward: Callable) -> tuple[list[int], torch.Tensor]:
        """Put freshly arrived rows into slots; returns their slots and the logits after each prompt.

        ids/attn/pos: the left-padded prompt batch as the eager path builds it (used for long prefills).
        """
        lens = [len(r.prompt_ids) for r in rows]
        need = max(p + min(r.budget, RESERVE_AHEAD) for p, r in zip(lens, rows))
        width = ids.shape[1]
        n = len(rows)
        small = n <= self.prefill_rows and max(lens) <= self.prefill_tokens
        q = pow2(max(lens), 16) if small else width
        self.reserve(len(self.used) + n, max(need, q, width))
        slots = self.take(n)
        try:
            logits = self._prefill_slots(rows, lens, slots, q) if small else None
            if logits is None:
                logits = self._prefill_eager(ids, attn, pos, lens, slots, forward)
        except BaseException:
            self.free(slots)
            raise
        return slots, logits

    def _prefill_slots(self, rows, lens, slots, q):
        """Short prompts, right-padded to q tokens (a bucket), straight into their slots; with graphs, one replay.
        Padding writes columns past a row's prompt, which its mask hides until decoding overwrites them.
        Returns None when the graph cannot be captured (the caller prefills eagerly)."""
        n = len(rows)
        b = pow2(n)
        tok = torch.tensor([list(r.prompt_ids) + [0] * (q - m) for m, r in zip(lens, rows)] + [[0] * q] * (b - n),
                           dtype=torch.long)
        last = torch.tensor([x - 1 for x in lens] + [q - 1] * (b - n))
        where = torch.tensor(slots + [self.slots] * (b - n))  # padding rows write into the scratch slot
        if not self.graphs_on:
            dev = self.device
            out = self._forward(tok.to(dev), torch.arange(q, device=dev).repeat(b, 1), last.to(dev), where.to(dev))
            self.stats["plain_prefills"] += 1
            return out[:n]
        captured = self._graph(("prefill", b, q), b, q, indexed=True)
        if captured is None:
            return None
        graph, buf = captured
        buf["tok"].copy_(tok)
        buf["last"].copy_(last)
        buf["rows"].copy_(where)
        graph.replay()
        self.stats["graph_prefills"] += 1
        return buf["out"][:n].clone()

    def _prefill_eager(self, ids, attn, pos, lens, slots, forward):
        from transformers import DynamicCache

        cache = DynamicCache()
        out = forward(input_ids=ids.to(self.device), attention_mask=attn, position_ids=pos, logits_to_keep=1,
                      cache=cache, adapter_names=None)
        self.adopt(cache, lens, slots)
        self.stats["eager_prefills"] += 1
        return out.logits[:, -1, :]

    @torch.inference_mode()
    def adopt_prefilled(self, rows, cache) -> list[int]:
        """Slots for rows prefilled elsewhere in chunks (prefill.py), their left-padded cache copied in."""
        lens = [len(r.prompt_ids) for r in rows]
        width = list(cache.layers)[0].keys.shape[2]
        need = max(p + min(r.budget, RESERVE_AHEAD) for p, r in zip(lens, rows))
        self.reserve(len(self.used) + len(rows), max(need, width))
        slots = self.take(len(rows))
        self.adopt(cache, lens, slots)
        self.stats["chunked_prefills"] += 1
        return slots

    def adopt(self, cache, lens: Sequence[int], slots: Sequence[int]) -> None:
        """Copy a left-padded eager cache (row k's tokens in its last lens[k] columns) into slots, from column 0."""
        layers = list(cache.layers)
        n, _, width, _ = layers[0].keys.shape
        shift = torch.tensor([width - x for x in lens], device=self.device)
        idx = (torch.arange(width, device=self.device)[None, :] + shift[:, None]).clamp(max=width - 1)
        dst = torch.tensor(list(slots), device=self.device)
        for i, layer in enumerate(layers):
            for src, buf in ((layer.keys, self.kv.keys[i]), (layer.values, self.kv.values[i])):
                moved = src.gather(2, idx[:, None, :, None].expand(n, src.shape[1], width, src.shape[3]))
                buf[dst, :, :width] = moved.to(buf.dtype)

    @torch.inference_mode()
    def to_dynamic(self, slots: Sequence[int], counts: Sequence[int], width: int):
        """The rows' cached tokens as a left-padded transformers DynamicCache `width` columns wide."""
        from transformers import DynamicCache

        src = torch.tensor(list(slots), device=self.device)
        cnt = torch.tensor(list(counts), device=self.device)
        col = torch.arange(width, device=self.device)[None, :] - (width - cnt[:, None])  # slot column per output column
        real = col >= 0
        col = col.clamp(min=0)
        cache = DynamicCache()
        for i in range(self.layers):
            kv = []
            for buf in (self.kv.keys[i], self.kv.values[i]):
                rows = buf[src]
                got = rows.gather(2, col[:, None, :, None].expand(len(slots), rows.shape[1], width, rows.shape[3]))
                kv.append(got * real[:, None, :, None].to(got.dtype))
            cache.update(kv[0], kv[1], i)
        self.free(slots)
        self.stats["to_eager"] += 1
        return cache

    # --- decode ----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, nxt: torch.Tensor, pos: torch.Tensor, slots: list[int], need: int) -> tuple[torch.Tensor, list[int]]:
        """One step: token nxt[k] at position pos[k] for the row in slot slots[k]. Returns logits [n, V] and
        the rows' slots (rows move to low slots when the batch shrinks to a smaller bucket). `need`: the
        columns the step needs, max(pos) + 1, which the caller knows without reading `pos` back from the device."""
        if need > self.length:
            self.reserve(self.slots, need)
        slots = self._compact(slots)
        b = pow2(max(slots) + 1)
        if self._where[0] != slots:
            self._where = (list(slots), to_device(slots, self.device))
        where = self._where[1]
        captured = self._graph(("decode", b), b, 1, indexed=False) if self.graphs_on else None
        if captured is not None:
            graph, buf = captured
            tok, at = buf["tok"].view(-1), buf["pos"].view(-1)
            tok.zero_()
            at.zero_()
            tok.index_copy_(0, where, nxt)
            at.index_copy_(0, where, pos)
            graph.replay()
            self.stats["graph_steps"] += 1
            return buf["out"].index_select(0, where), slots
        tok = torch.zeros(b, dtype=torch.long, device=self.device).index_copy_(0, where, nxt)
        at = torch.zeros(b, dtype=torch.long, device=self.device).index_copy_(0, where, pos)
        out = self._forward(tok[:, None], at[:, None])
        self.stats["plain_steps"] += 1
        return out.index_select(0, where), slots

    def _compact(self, slots: list[int]) -> list[int]:
        """Move rows out of slots at or above the bucket their number needs, into free low slots."""
        target = pow2(len(slots))
        if max(slots) < target:
            return slots
        movers = [k for k, s in enumerate(slots) if s >= target]
        low = [s for s in range(target) if s not in self.used][:len(movers)]
        src = to_device([slots[k] for k in movers], self.device)
        dst = to_device(low, self.device)
        for buf in self.kv.keys + self.kv.values:
            buf.index_copy_(0, dst, buf.index_select(0, src))
        out = list(slots)
        for k, s in zip(movers, low):
            out[k] = s
        self.used.difference_update(slots[k] for k in movers)
        self.used.update(low)
        self.stats["moves"] += len(movers)
        return out
