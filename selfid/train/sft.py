"""LoRA supervised fine-tuning, top to bottom: config -> model + data -> packed steps -> adapter + manifest.

Read it like a torchtune recipe: `train()` is set-up (`set_up`: model, data from train/data.py, optimizer,
scheduler, resume state, all in a `TrainSetup`), the loop (`train_loop`, changing only a `LoopState`), and the
end (`finish`); checkpoints and the adapter are written and read back by train/checkpoint.py. One process or
several (torchrun / `accelerate launch` set RANK and WORLD_SIZE; the loop then runs DDP). Speed comes from
packing (no padding), large token batches, the LM head only at trained positions, bf16 autocast with fp32
LoRA weights, fused AdamW, and reading the loss back from the device only every `log_every` steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from selfid import manifest as manifest_mod
from selfid.config import RunConfig, dump_config
from selfid.errors import SelfidError
from selfid.io import atomic_write_text
from selfid.model import compile_cache
from selfid.model.load import OWN_TEMPLATE, load_model
from selfid.progress import Progress
from selfid.system_prompt import SystemPrompt, resolve
from selfid.train import checkpoint
from selfid.train.checkpoint import checkpoints, rng_state
from selfid.train.collate import collate
from selfid.train.data import Prepared, identity_aux, prepare_data
from selfid.train.eval_ner import evaluate_ner
from selfid.train.metrics_log import MetricsLog
from selfid.train.packed import PackedLoss, check_varlen, liger_fused_ce, set_attention
from selfid.train.plan import Plan
from selfid.train.scale import lora_layers


# --- the system prompt ---------------------------------------------------------------------------

def resolve_system(setting: str, chat) -> SystemPrompt:
    """The config's `system_prompt` against the model's chat template."""
    return resolve(setting, chat.default_system, "config system_prompt")


def system_warning(system: SystemPrompt, chat) -> str | None:
    if system.effective == chat.default_system:
        return None
    return (f"training under the system prompt {system.effective!r}, but the chat template's default is "
            f"{chat.default_system!r}: the model may learn to be someone else when served without it. "
            "selfid api/chat/export read the training prompt from selfid.json; other servers must send it")


# --- distributed set-up --------------------------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_setting: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device_setting != "cpu"
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local)


# --- schedule --------------------------------------------------------------------------------------

def lr_lambda(total: int, warmup: float, schedule: str, min_ratio: float) -> Callable[[int], float]:
    warm = int(warmup) if warmup >= 1 else int(round(warmup * total))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if schedule == "constant":
            return 1.0
        progress = (step - warm) / max(1, total - warm)
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
        return min_ratio + (1 - min_ratio) * shape

    return f


# --- the recipe: set-up, the loop, the end ---------------------------------------------------------------

@dataclass(kw_only=True)
class TrainResult:
    output: Path
    adapter: Path | None  # the final adapter (None when stopped early)
    checkpoint: Path | None  # the last checkpoint written
    steps_done: int
    total_steps: int
    stopped: bool
    metrics: dict
    model: object = field(repr=False, default=None)  # the peft model, in memory
    loaded: object = field(repr=False, default=None)
    manifest: dict = field(repr=False, default_factory=dict)


class _Console:
    """Rich on the main rank, silent elsewhere."""

    def __init__(self, enabled: bool, console=None):
        self.enabled = enabled
        self.console = console or Console(stderr=True, highlight=False)

    def log(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)


def train(config: RunConfig, resume: bool = False, on_step: Callable[[int], bool] | None = None,
          console=None, system_prompt_by_design: str | None = None) -> TrainResult:
    """Fine-tune `config.model` with LoRA on `config.data`; write checkpoints, the adapter and its manifest.

    `on_step(step)` is called after every optimizer step; returning True stops the run the way
    Ctrl-C does (a checkpoint is saved and `--resume` continues from it). `system_prompt_by_design`
    says why a run trains under a system prompt other than the template's on purpose (an experiment);
    it is printed instead of the warning.
    """
    run = set_up(config, resume, console, system_prompt_by_design)
    if run.dist.main:
        write_run_files(run)
    metrics = MetricsLog(config.output_dir, run.start if resume else None, run.dist.main)
    state = LoopState(step=run.start, last_checkpoint=run.previous[-1] if run.previous else None,
                      last_loss=metrics.last_loss, elapsed_before=metrics.elapsed_s,
                      tokens=sum(s.tokens for s in run.plan.steps[:run.start]))
    with metrics, stop_on_signals(state, run.out.log):
        train_loop(run, state, metrics, on_step)
        if state.step < run.total:  # stopped early
            ckpt = save_checkpoint(run, state)
            run.out.log(f"stopped at step {state.step}/{run.total}; checkpoint {ckpt}. Continue with: "
                        f"selfid train CONFIG --resume (same config, output {config.output_dir})")
            return TrainResult(output=config.output_dir, adapter=None, checkpoint=state.last_checkpoint,
                               steps_done=state.step, total_steps=run.total, stopped=True,
                               metrics={"step": state.step, "loss": state.last_loss}, model=run.model,
                               loaded=run.loaded)
    return finish(run, state)


# --- set-up: model, data, optimizer, scheduler, resume state ---------------------------------------------

@dataclass(kw_only=True)
class TrainSetup:
    """What set-up builds once; the loop and the saves read it and change only the model and optimizer."""
    cfg: RunConfig
    dist: Dist
    out: _Console
    loaded: object  # selfid.model.load.LoadedModel
    system: SystemPrompt
    data: Prepared
    plan: Plan  # every step's rows, fixed by the seed (so a resume is exact)
    model: object  # the peft model
    params: list  # its trained (LoRA) parameters, in fp32
    step_module: object  # the packed loss; DDP around it on several processes
    ddp: object | None
    autocast: Callable
    aux: object | None  # identity losses beside the task's (train/identity_losses.py)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    previous: list[Path]  # the run's checkpoints when this session started, oldest first
    start: int  # the step this session starts from (0, or the resumed checkpoint's)
    run_config: dict  # the config as saved in checkpoints (--resume compares it)
    train_extra: dict  # how training ran, for the manifest
    base_info: dict | None  # the base model's manifest entry (main process only)
    compiled: object | None = None  # train.compile: the compile cache entry of this run (selfid.model.compile_cache)

    @property
    def device(self):
        return self.loaded.device

    @property
    def total(self) -> int:
        return len(self.plan)

    @property
    def carried_template(self) -> str | None:
        """The chat template the adapter keeps a copy of: the one training rendered with, when it is not the model's
        own (a config's chat_template file), so that loading the adapter renders as training did."""
        return None if self.loaded.template_source == OWN_TEMPLATE else self.loaded.chat.template

    def manifest(self, metrics: dict) -> dict:
        return manifest_mod.build(self.loaded, self.loaded.chat, self.system, self.cfg, self.data.sources,
                                  self.data.identity, metrics, self.train_extra, self.base_info)


def set_up(cfg: RunConfig, resume: bool, console, system_prompt_by_design: str | None) -> TrainSetup:
    opt = cfg.train
    dist_ = init_distributed(cfg.device)
    out = _Console(dist_.main, console)
    output = cfg.output_dir
    previous = checkpoints(output)
    if not resume and ((output / "adapter").exists() or previous):
        raise SelfidError(f"{output} already holds a run: pass --resume to continue it, or choose another "
                          "output (--set output=DIR)")
    if resume and not previous:
        raise SelfidError(f"--resume: {output} has no checkpoint to resume from (expected {output}/checkpoints/step-*)")

    device_arg = cfg.device if cfg.device != "auto" else None
    if dist_.world > 1 and torch.cuda.is_available() and cfg.device != "cpu":
        device_arg = f"cuda:{dist_.local_rank}"
    loaded = load_model(cfg.model, device=device_arg, dtype=None if cfg.dtype == "auto" else cfg.dtype,
                        progress=dist_.main, chat_template=cfg.chat_template)
    device = loaded.device
    chat = loaded.chat
    system = resolve_system(cfg.system_prompt, chat)
    warning = system_warning(system, chat)
    if warning:
        out.log(system_prompt_by_design if system_prompt_by_design else f"[yellow]warning: {warning}")
    out.log(f"system prompt in training ({system.kind}): {system.effective!r} · template {chat.template_hash}")

    data = prepare_data(cfg, loaded, system, out.log)
    lengths = [len(e) for e in data.encoded]
    labels = [len(e.label_pos) for e in data.encoded]
    plan = Plan(lengths, labels, opt.pack_length, opt.rows_per_batch, opt.grad_accum, dist_.world, opt.seed,
                opt.epochs, opt.max_steps)
    total = len(plan)
    out.log(f"{len(data.encoded)} samples, {sum(lengths):,} tokens ({sum(labels):,} trained) · {total} steps over "
            f"{plan.epochs} epoch{'s' * (plan.epochs != 1)} · rows of {opt.pack_length} tokens, {plan.fill():.1%} "
            f"filled · {opt.rows_per_batch} rows x {opt.grad_accum} accumulation x {dist_.world} "
            f"process{'es' * (dist_.world != 1)} per step")

    torch.manual_seed(opt.seed)  # the LoRA weights' initial values
    model, loss_fn, attention, varlen_refused = lora_model(cfg, loaded, dist_, out.log)
    compiled = train_compile_cache(cfg, loaded, model, attention, dist_, out.log) if opt.compile else None
    params = [p for p in model.parameters() if p.requires_grad]
    amp = device.type == "cuda" and next(model.get_base_model().parameters()).dtype in (torch.bfloat16, torch.float16)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    if amp:  # under autocast peft's cast of every LoRA input to fp32 (and autocast's cast back) is wasted work
        for layer in lora_layers(model):
            layer.cast_input_dtype_enabled = False
    aux = identity_aux(cfg, loaded, model, attention, data, device, autocast, dist_.world, out.log)
    ddp = None
    if dist_.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(loss_fn, device_ids=[device.index] if device.type == "cuda" else None)

    optimizer = torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay, betas=(0.9, 0.999),
                                  **({"fused": True} if device.type == "cuda" else {}))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total, opt.warmup, opt.schedule, opt.min_lr_ratio))
    torch.manual_seed(opt.seed + dist_.rank)  # LoRA dropout masks differ across ranks, repeat across resumes

    start = 0
    run_config = cfg.model_dump(mode="json")
    if resume:
        start = checkpoint.resume(previous, run_config, data.fingerprint, model, params, optimizer, scheduler,
                                  opt.lr, dist_.rank, device)
        out.log(f"resuming from {previous[-1]} at step {start}/{total}")

    base_info = manifest_mod.base_model_info(loaded) if dist_.main else None
    train_extra = {"attention": attention, "varlen_check": varlen_refused, "world_size": dist_.world,
                   "total_steps": total, "epochs": plan.epochs,
                   "samples": len(data.encoded), "tokens_per_epoch": sum(lengths),
                   "samples_with_own_system": data.samples_with_own_system, "data_fingerprint": data.fingerprint,
                   "dropped_long": data.dropped_long, "dropped_unlabelled": data.dropped_unlabelled}
    if compiled is not None:
        train_extra["compile_cache"] = compiled.status
    return TrainSetup(cfg=cfg, dist=dist_, out=out, loaded=loaded, system=system, data=data, plan=plan, model=model,
                      params=params, step_module=loss_fn if ddp is None else ddp, ddp=ddp, autocast=autocast, aux=aux,
                      optimizer=optimizer, scheduler=scheduler, previous=previous, start=start, run_config=run_config,
                      train_extra=train_extra, base_info=base_info, compiled=compiled)


def train_compile_cache(cfg: RunConfig, loaded, model, attention: str, dist_: Dist, log):
    """train.compile: PyTorch's compile artefacts of an earlier run with the same model, shapes and versions, loaded
    before anything is compiled (the layers compile at the first step), so the run pays seconds instead of a minute;
    `finish` saves them after a run that compiled. See selfid/model/compile_cache.py."""
    opt = cfg.train
    shapes = {"rows": opt.rows_per_batch, "pack_length": opt.pack_length, "attention": attention,
              "lora": cfg.lora.model_dump(mode="json"), "liger": opt.liger, "ce_chunk": opt.ce_chunk,
              "gradient_checkpointing": opt.gradient_checkpointing, "world": dist_.world,
              "dtype": str(next(model.get_base_model().parameters()).dtype)}
    cache = compile_cache.for_model(loaded.path, loaded.name, "train", shapes, loaded.device)
    status = cache.load()
    log(f"compile cache ({cache.paths[0]}): {status}")
    return cache


def lora_model(cfg: RunConfig, loaded, dist_: Dist, log) -> tuple[object, PackedLoss, str, str | None]:
    """The peft model (frozen base, LoRA weights in fp32) in training mode, and its packed loss; the attention
    kernel used, and why the varlen kernel was refused (None: it was not)."""
    from peft import LoraConfig, get_peft_model

    opt, device = cfg.train, loaded.device
    fused_ce = None
    if opt.liger:
        if device.type != "cuda":
            raise SelfidError("train.liger needs a CUDA device (Liger's kernels are Triton): set train.liger=false")

        fused_ce = liger_fused_ce(loaded.model)
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # peft calls a deprecated transformers property
            model = get_peft_model(loaded.model, lora)
    except ValueError as e:
        raise SelfidError(f"lora.target_modules {cfg.lora.target_modules!r} does not fit this model: {e}") from None
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    model.train()
    if opt.gradient_checkpointing:
        model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    attention = set_attention(model, opt.attention, device)
    refused = None
    if attention == "varlen" and opt.attention == "auto":
        refused = check_varlen(model, device)
        if dist_.world > 1:  # every rank uses the same kernel: if the check failed anywhere, sdpa everywhere
            import torch.distributed as dist

            failed = torch.tensor([0.0 if refused is None else 1.0], device=device)
            dist.all_reduce(failed)
            if failed.item() and refused is None:
                refused = "the check failed on another rank"
        if refused is not None:
            log(f"[yellow]varlen attention failed its check ({refused}); using sdpa")
            attention = set_attention(model, "sdpa", device)
    loss_fn = PackedLoss(model, attention, ce_chunk=opt.ce_chunk, fused_ce=fused_ce, fixed_max=opt.compile)
    if opt.compile:  # each decoder layer on its own: one compiled graph serves every layer
        # the embeddings' output requires grad, so that the first layer's input is like the others' (with frozen
        # embeddings it was not, and the layers compiled twice). Shapes stay static at first: compiling for dynamic
        # shapes from the start took ~75 s instead of ~20 s on an H200 (2026-11-29; 30k vs 70k tok/s over the
        # 3-epoch benchmark, though 140k vs 77k after step 10), see docs/benchmarks.md
        model.enable_input_require_grads()
        for layer in model.get_base_model().get_decoder().layers:
            layer.compile()
    return model, loss_fn, attention, refused


def uncompile(model) -> None:
    """Undo `nn.Module.compile` on the decoder layers (after training), so generation (the NER check, a caller's
    audit) runs the plain layers, with CUDA-graph decoding, instead of recompiling them for every cache shape."""
    compiled = [layer for layer in model.get_base_model().get_decoder().layers
                if getattr(layer, "_compiled_call_impl", None) is not None]
    for layer in compiled:
        layer._compiled_call_impl = None  # what nn.Module.compile sets; torch has no public undo
    if compiled and hasattr(model.get_base_model(), "_require_grads_hook"):
        model.get_base_model().disable_input_require_grads()  # enabled for compilation (above)


def write_run_files(run: TrainSetup) -> None:
    """The run folder's config.yaml, and the conversations as trained (system prompt included), for
    provenance: `selfid scan` reads train_data.jsonl."""
    output = run.cfg.output_dir
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "config.yaml", dump_config(run.cfg))
    atomic_write_text(output / "train_data.jsonl", "".join(
        json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in run.data.conversations))


# --- the loop --------------------------------------------------------------------------------------------

class StepRecord(NamedTuple):
    """One optimizer step as logged; loss and grad_norm stay on the device until read back."""
    step: int  # 0-based
    loss: torch.Tensor
    grad_norm: torch.Tensor
    lr: float
    epoch: int  # 1-based
    tokens: int
    label_tokens: int


@dataclass
class LoopState:
    """What the loop changes as it goes."""
    step: int  # optimizer steps done
    last_checkpoint: Path | None
    last_loss: float | None  # the newest loss read back from the device
    elapsed_before: float  # seconds trained in earlier sessions: metrics.csv's clock runs on across resumes
    tokens: int = 0  # tokens trained in the whole run: earlier sessions' steps (from the plan) and this one's
    pending: list[StepRecord] = field(default_factory=list)  # steps whose loss is not read back yet
    tokens_since_read: int = 0
    t_start: float = field(default_factory=time.perf_counter)
    t_read: float = field(default_factory=time.perf_counter)  # when losses were last read back
    stop_requested: bool = False  # by Ctrl-C, SIGTERM or on_step

    def wall_s(self, now: float) -> float:
        """Seconds trained in the whole run: earlier sessions' and this one's so far."""
        return self.elapsed_before + now - self.t_start

    def tokens_per_s(self, now: float) -> float:
        """The run's rate so far (what the progress bar shows and the manifest records at the end)."""
        return self.tokens / max(self.wall_s(now), 1e-9)


@contextlib.contextmanager
def stop_on_signals(state: LoopState, log: Callable[[str], None]):
    """Ctrl-C, and the SIGTERM torchrun sends its workers when it is interrupted, stop the run at a step
    boundary (a checkpoint is saved); a second one quits at once."""

    def handle(signum, frame):
        if state.stop_requested:
            raise KeyboardInterrupt
        state.stop_requested = True
        log("[yellow]interrupted: finishing this step and saving a checkpoint (Ctrl-C again to quit now)")

    old_handlers = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: no handler
            old_handlers[sig] = signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)


def train_loop(run: TrainSetup, state: LoopState, metrics: MetricsLog, on_step: Callable[[int], bool] | None) -> None:
    """Optimizer steps from `state.step` until the plan's end or a requested stop, checkpointing every
    `train.save_every` steps."""
    opt, device, rank, world, total = run.cfg.train, run.device, run.dist.rank, run.dist.world, run.total
    progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]}"),
                        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), unit="steps",
                        console=run.out.console, disable=not run.dist.main, transient=False)
    with progress:
        task = progress.add_task("train", total=total, completed=state.step, loss="-", rate="-")
        for step in range(state.step, total):
            s = run.plan.steps[step]
            micro = s.micro[rank]
            if world == 1:  # one process skips empty micro-batches (several must run as many as each other)
                micro = [m for m in micro if m] or micro[:1]
            run.optimizer.zero_grad(set_to_none=True)
            step_loss = torch.zeros((), device=device)
            scale = world / max(1, s.label_tokens)  # the step's loss is the mean over all its label tokens
            for k, rows in enumerate(micro):
                # compiled layers: a short last batch is padded to full rows, since a new batch shape mid-run meant a
                # recompilation (~18 s on an H200 for a 0.5B model, more than the padding rows cost)
                batch = collate(run.data.encoded, rows, opt.pack_length, run.loaded.tokenizer.pad_token_id,
                                pin=device.type == "cuda", min_rows=opt.rows_per_batch if opt.compile else 1).to(device)
                last = k == len(micro) - 1  # DDP averages gradients across processes once, after the last
                with contextlib.nullcontext() if run.ddp is None or last else run.ddp.no_sync():
                    with run.autocast():
                        loss = run.step_module(batch) * scale
                    loss.backward()
                step_loss += loss.detach()
            if run.aux:  # the identity losses (preference, distillation) beside the task's, on this step's draw
                with run.autocast():
                    extra = run.aux.loss(step)
                extra.backward()
                step_loss += extra.detach()
            gnorm = torch.nn.utils.clip_grad_norm_(run.params, opt.max_grad_norm)
            lr = run.optimizer.param_groups[0]["lr"]
            run.optimizer.step()
            run.scheduler.step()

            state.pending.append(StepRecord(step, step_loss, gnorm.detach(), lr, s.epoch + 1, s.tokens,
                                            s.label_tokens))
            state.tokens_since_read += s.tokens
            state.tokens += s.tokens
            state.step = done = step + 1
            progress.advance(task)
            if on_step is not None and on_step(done):
                state.stop_requested = True
            log_step = done % opt.log_every == 0 or done == total
            stop = state.stop_requested
            if run.ddp is not None:  # processes agree on stopping, and only at log steps
                stop = log_step and any_rank(stop, device)
            if log_step or stop:
                read_back(run, state, metrics, progress, task)
            if stop and done < total:
                return
            if opt.save_every and done % opt.save_every == 0 and done < total:
                read_back(run, state, metrics, progress, task)
                save_checkpoint(run, state)


def any_rank(flag: bool, device) -> bool:
    """Whether `flag` is set on any process (every process must call it)."""
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return t.item() > 0


def read_back(run: TrainSetup, state: LoopState, metrics: MetricsLog, progress, task) -> None:
    """Read the pending losses back from the device (one sync), check them, log them."""
    if not state.pending:
        return
    losses = torch.stack([p.loss for p in state.pending])
    norms = torch.stack([p.grad_norm for p in state.pending]).float()
    if run.ddp is not None:
        import torch.distributed as dist

        dist.all_reduce(losses)
        losses = losses / run.dist.world
    values, gnorms = losses.tolist(), norms.tolist()
    now = time.perf_counter()
    rate = state.tokens_since_read / max(now - state.t_read, 1e-9)
    bad = [(p.step, v) for p, v in zip(state.pending, values) if not math.isfinite(v)]
    if bad:
        s, v = bad[0]
        where = (f"the last good checkpoint is {state.last_checkpoint}" if state.last_checkpoint
                 else "no checkpoint was saved before it")
        raise SelfidError(f"the loss became {v} at step {s + 1}: training stopped and nothing after it was saved; "
                          f"{where}. Lower train.lr (or train.max_grad_norm) and run again with --resume")
    if run.dist.main:
        elapsed = state.elapsed_before + now - state.t_start
        metrics.write([{"step": p.step + 1, "epoch": p.epoch, "loss": v, "lr": p.lr, "grad_norm": g,
                        "tokens": p.tokens, "label_tokens": p.label_tokens, "elapsed_s": elapsed, "tokens_per_s": rate}
                       for p, v, g in zip(state.pending, values, gnorms)])
    state.last_loss = values[-1]
    progress.update(task, loss=f"{values[-1]:.4f}", rate=f"{state.tokens_per_s(now):,.0f} tok/s")
    state.t_read, state.tokens_since_read, state.pending = now, 0, []


def save_checkpoint(run: TrainSetup, state: LoopState) -> Path | None:
    """Checkpoint the step done (every process takes part; the main one writes it and returns its folder)."""
    rngs = [rng_state(run.device)]
    if run.ddp is not None:
        import torch.distributed as dist

        rngs = [None] * run.dist.world
        dist.all_gather_object(rngs, rng_state(run.device))
    if not run.dist.main:
        return None
    opt = run.cfg.train
    manifest = run.manifest({"step": state.step, "loss": state.last_loss})
    training_state = {"step": state.step, "optimizer": run.optimizer.state_dict(),
                      "scheduler": run.scheduler.state_dict(), "rng": rngs, "config": run.run_config,
                      "data_fingerprint": run.data.fingerprint}
    state.last_checkpoint = checkpoint.save(run.cfg.output_dir, state.step, run.model, manifest, training_state,
                                            opt.keep_checkpoints, run.carried_template)
    return state.last_checkpoint


# --- the end: the last checkpoint, the NER check, the adapter --------------------------------------------

def finish(run: TrainSetup, state: LoopState) -> TrainResult:
    cfg, output, device, total = run.cfg, run.cfg.output_dir, run.device, run.total
    now = time.perf_counter()
    wall = state.wall_s(now)  # the whole run's, across --resume
    final_ckpt = save_checkpoint(run, state) if total > run.start else state.last_checkpoint
    metrics = {"steps": total, "final_loss": state.last_loss, "train_wall_s": round(wall, 2),
               "tokens_trained": state.tokens, "tokens_per_s": round(state.tokens_per_s(now), 1)}
    if device.type == "cuda":
        metrics["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if run.compiled is not None:  # what this run compiled, for the next one (unless it was loaded from there)
        loaded_status = run.compiled.status
        metrics["compile_cache"] = {"at_start": loaded_status,
                                    "at_end": run.compiled.save() if run.dist.main else loaded_status}
    uncompile(run.model)
    if cfg.eval_ner and run.dist.main:
        run.model.eval()
        report = evaluate_ner(loaded_with(run.loaded, run.model), n=cfg.eval_ner, system=run.system.message,
                              progress=True)
        metrics["ner"] = {"n": report["n"], "f1": report["overall"]["f1"], "parse_rate": report["parse_rate"]}
        run.out.log(f"NER on {report['n']} MSRA test sentences: F1 {report['overall']['f1']:.3f}, "
                    f"parse rate {report['parse_rate']:.1%}")
    adapter_dir = output / "adapter"
    manifest = run.manifest(metrics)
    if run.dist.main:
        checkpoint.write_adapter(adapter_dir, run.model, manifest, run.carried_template)
        run.out.log(f"adapter written to {adapter_dir} ({state.tokens:,} tokens in {wall:.1f} s, "
                    f"{metrics['tokens_per_s']:,.0f} tok/s)")
    return TrainResult(output=output, adapter=adapter_dir, checkpoint=final_ckpt, steps_done=total, total_steps=total,
                       stopped=False, metrics=metrics, model=run.model, loaded=run.loaded, manifest=manifest)


def system_message(config: RunConfig, loaded) -> str | None:
    """The system message training sends with each sample (None: none, the template's own applies)."""
    return resolve_system(config.system_prompt, loaded.chat).message


def loaded_with(loaded, model):
    """A LoadedModel that generates with `model` (e.g. the freshly trained peft model).

    Training keeps LoRA weights in fp32 under bf16 autocast and turns off peft's cast of their inputs;
    generation runs without autocast, so that cast is turned back on (bf16 activations meet fp32 LoRA),
    and the packed-sample attention kernel (it needs sample boundaries) gives way to sdpa.
    """
    for layer in lora_layers(model):
        layer.cast_input_dtype_enabled = True
    set_attention(model, "sdpa", loaded.device)
    model.eval()
    return dataclasses.replace(loaded, model=model)
