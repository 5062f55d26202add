"""LoRA supervised fine-tuning, top to bottom: config -> model + data -> packed steps -> adapter + manifest.

Read it like a torchtune recipe. One process or several (torchrun / `accelerate launch` set RANK and
WORLD_SIZE; the loop then runs DDP). Speed comes from packing (no padding), large token batches,
the LM head only at trained positions, bf16 autocast with fp32 LoRA weights, fused AdamW, and
reading the loss back from the device only every `log_every` steps.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import random
import shutil
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from selfid import manifest as manifest_mod
from selfid.config import RunConfig, dump_config
from selfid.errors import SelfidError
from selfid.io import atomic_dir, atomic_write_text, write_checksums
from selfid.system_prompt import SystemPrompt, resolve
from selfid.train.checkpoint import read_adapter_weights, read_state
from selfid.train.collate import collate, encode_many, with_system
from selfid.train.packed import PackedLoss, check_varlen, set_attention
from selfid.train.plan import Plan

CSV_FIELDS = ["step", "epoch", "loss", "lr", "grad_norm", "tokens", "label_tokens", "elapsed_s", "tokens_per_s"]
# settings that may change between a run and its --resume without changing what is learned (lr: after a NaN)
RESUMABLE_CHANGES = {"train.save_every", "train.keep_checkpoints", "train.log_every", "train.compile",
                     "train.attention", "train.lr", "train.max_grad_norm", "train.ce_chunk", "train.liger", "eval_ner",
                     "adapter_scale", "device"}


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


# --- data ------------------------------------------------------------------------------------------

@dataclass
class Prepared:
    encoded: list
    sources: list[dict]
    identity: dict | None
    dropped_long: int
    dropped_unlabelled: int
    samples_with_own_system: int
    fingerprint: str
    conversations: list = field(default_factory=list)  # exactly what was trained on, system messages included


def prepare_data(config: RunConfig, loaded, system: SystemPrompt, log: Callable[[str], None]) -> Prepared:
    from selfid.data import identity as identity_mod
    from selfid.data.mix import mix
    from selfid.data.sources import load_source

    parts, infos = [], []
    for src in config.data:
        samples, info = load_source(src)
        parts.append((samples, src.weight, src.fraction))
        infos.append(info)
    identity_info = None
    if config.identity_replay is not None and config.identity_replay.kind == "self":
        pool, identity_info = self_replay_samples(config, loaded, system)
        parts.append((pool, 1.0, config.identity_replay.fraction))
        log(f"identity replay (self-distilled, {identity_info['own']}): {identity_info['replies']} of the base model's "
            f"own replies under {len(set(identity_info['systems']))} system prompts, {len(pool)} conversations, "
            f"{config.identity_replay.fraction:.1%} of the mix")
    elif config.identity_replay is not None:
        rep = config.identity_replay
        engine = None
        if not (rep.name and rep.maker):
            from selfid.engine import InProcessEngine

            engine = InProcessEngine(loaded)
        ident = identity_mod.resolve_identity(loaded.chat, rep.name, rep.maker, engine)
        systems = identity_mod.system_list(rep.systems, system.message, loaded.chat.default_system)
        pool = identity_mod.samples(ident, systems, rep.languages)
        parts.append((pool, 1.0, rep.fraction))
        identity_info = {"kind": "template", "name": ident.name, "maker": ident.maker, "name_zh": ident.name_zh,
                         "maker_zh": ident.maker_zh, "identity_source": ident.source, "fraction": rep.fraction,
                         "systems": systems, "languages": list(rep.languages), "pool": len(pool)}
        log(f"identity replay: {ident.name} by {ident.maker} ({ident.source}), {len(pool)} conversations "
            f"under {len(set(systems))} system prompts, {rep.fraction:.1%} of the mix")
    mixed, counts = mix(parts, seed=config.train.seed)
    for info, n in zip(infos, counts):
        info["used"] = n
    if identity_info is not None:
        identity_info["used"] = counts[-1]
    own_system = sum(1 for s in mixed if s.has_system and not s.fixed_system)
    convs = [list(s.messages) if s.fixed_system else with_system(s.messages, system.message) for s in mixed]
    encoded = encode_many(loaded.tokenizer, convs, loaded.eos_token_ids)
    limit = config.train.sample_limit
    long = sum(1 for e in encoded if len(e) > limit)
    empty = sum(1 for e in encoded if len(e.label_pos) == 0)
    encoded = [e for e in encoded if len(e) <= limit and len(e.label_pos)]
    if long:
        log(f"[yellow]dropped {long} samples longer than {limit} tokens (raise train.max_length/pack_length to keep them)")
    if empty:
        log(f"[yellow]dropped {empty} samples with no assistant tokens to train on")
    if not encoded:
        raise SelfidError("no training samples left after tokenizing: check the data sources and train.max_length")
    h = hashlib.sha256()
    for e in encoded:
        h.update(e.ids.tobytes())
        h.update(e.label_pos.tobytes())
    return Prepared(encoded, infos, identity_info, long, empty, own_system, h.hexdigest(), convs)


def self_replay_samples(config: RunConfig, loaded, system: SystemPrompt) -> tuple[list, dict]:
    """The self-distilled replay set the pipeline wrote into the run folder (verified), rendered under the
    configured system prompts; and what the manifest records of it."""
    from selfid.data import identity as identity_mod
    from selfid.data.readers import Sample
    from selfid.data import replay_set

    rep = config.identity_replay
    meta, replies, pairs = replay_set.load(config.output_dir)
    systems = identity_mod.system_list(rep.systems, system.message, loaded.chat.default_system)
    pool = [Sample(tuple(([] if s is None else [{"role": "system", "content": s}]) + r["messages"]), source="identity",
                   fixed_system=True) for r in replies for s in dict.fromkeys(systems)]
    info = {"kind": "self", "own": meta["own"], "file": replay_set.FOLDER, "sha256": meta["sha256"], "questions": meta["questions"],
            "replies": len(replies), "pairs": len(pairs), "kept_by_kind": meta["kept_by_kind"],
            "sampling": meta["sampling"], "fraction": rep.fraction, "systems": systems,
            "languages": list(rep.languages), "pool": len(pool), "preference": rep.preference, "beta": rep.beta,
            "distill": rep.distill}
    return pool, info


def identity_aux(cfg: RunConfig, loaded, model, attention: str, data: Prepared, device, autocast, world: int, log):
    """The preference and distillation losses the config asks for (None when it asks for neither)."""
    rep = cfg.identity_replay
    if rep is None or rep.kind != "self" or not (rep.preference or rep.distill):
        return None
    if world > 1:
        raise SelfidError("identity_replay.preference and .distill run on one process: train on one GPU, or set "
                          "them to 0")
    from selfid.data import replay_set
    from selfid.train.identity_losses import IdentityAux

    _, replies, pairs = replay_set.load(cfg.output_dir)
    if rep.preference and not pairs:
        log("[yellow]identity_replay.preference: the base model made no foreign claim to learn against; no pairs")
    aux = IdentityAux(model, loaded, attention, pairs, replies, data.identity["systems"], rep.preference, rep.beta,
                      rep.distill, rep.aux_batch, cfg.train.seed, device, autocast)
    if aux:
        log(f"identity losses beside the task's: {aux.describe()}")
    return aux if aux else None


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


# --- checkpoints ------------------------------------------------------------------------------------

def checkpoints(output: Path) -> list[Path]:
    root = output / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def rng_state(device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        path = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += config_diff(va, vb, path + ".")
        elif va != vb:
            keys.append(path)
    return keys


# --- the run -----------------------------------------------------------------------------------------

@dataclass
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
        from rich.console import Console

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
    from peft import LoraConfig, get_peft_model

    from selfid.model.load import load_model

    cfg, opt = config, config.train
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
                        progress=dist_.main)
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

    # the model: frozen base (bf16 on GPU), LoRA weights in fp32
    torch.manual_seed(opt.seed)
    fused_ce = None
    if opt.liger:
        if device.type != "cuda":
            raise SelfidError("train.liger needs a CUDA device (Liger's kernels are Triton): set train.liger=false")
        from selfid.train.packed import liger_fused_ce

        fused_ce = liger_fused_ce(loaded.model)
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # peft calls a deprecated transformers property
            model = get_peft_model(loaded.model, lora)
    except ValueError as e:
        raise SelfidError(f"lora.target_modules {cfg.lora.target_modules!r} does not fit this model: {e}") from None
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    model.train()
    if opt.gradient_checkpointing:
        model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    attention = set_attention(model, opt.attention, device)
    reason = None  # why the varlen check refused varlen (recorded in the manifest)
    if attention == "varlen" and opt.attention == "auto":
        reason = check_varlen(model, device)
        if dist_.world > 1:  # every rank uses the same kernel: if the check failed anywhere, sdpa everywhere
            import torch.distributed as dist

            failed = torch.tensor([0.0 if reason is None else 1.0], device=device)
            dist.all_reduce(failed)
            if failed.item() and reason is None:
                reason = "the check failed on another rank"
        if reason is not None:
            out.log(f"[yellow]varlen attention failed its check ({reason}); using sdpa")
            attention = set_attention(model, "sdpa", device)
    loss_fn = PackedLoss(model, attention, ce_chunk=opt.ce_chunk, fused_ce=fused_ce, fixed_max=opt.compile)
    if opt.compile:  # each decoder layer on its own: one compiled graph serves every layer
        for layer in model.get_base_model().get_decoder().layers:
            layer.compile()
    amp = device.type == "cuda" and next(model.get_base_model().parameters()).dtype in (torch.bfloat16, torch.float16)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    if amp:  # under autocast peft's cast of every LoRA input to fp32 (and autocast's cast back) is wasted work
        from selfid.train.scale import lora_layers

        for layer in lora_layers(model):
            layer.cast_input_dtype_enabled = False
    aux = identity_aux(cfg, loaded, model, attention, data, device, autocast, dist_.world, out.log)
    step_module = loss_fn
    ddp = None
    if dist_.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(loss_fn, device_ids=[device.index] if device.type == "cuda" else None)
        step_module = ddp

    optimizer = torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay, betas=(0.9, 0.999),
                                  **({"fused": True} if device.type == "cuda" else {}))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total, opt.warmup, opt.schedule, opt.min_lr_ratio))
    torch.manual_seed(opt.seed + dist_.rank)  # LoRA dropout masks differ across ranks, repeat across resumes

    start = 0
    run_config = cfg.model_dump(mode="json")
    if resume:
        ckpt = previous[-1]
        state = read_state(ckpt, previous)
        diff = [k for k in config_diff(state["config"], run_config)
                if not any(k == c or k.startswith(c + ".") for c in RESUMABLE_CHANGES)]
        if diff:
            raise SelfidError(f"--resume: the config differs from the checkpointed run in {', '.join(diff)}; "
                              "resume with the same config, or start a new run in another output folder")
        if state["data_fingerprint"] != data.fingerprint:
            raise SelfidError("--resume: the training data differs from the checkpointed run's (a data file or "
                              "the tokenizer changed): start a new run in another output folder")
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, read_adapter_weights(ckpt, previous, device))
        for p in params:
            p.data = p.data.float()
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scheduler.base_lrs = [opt.lr for _ in scheduler.base_lrs]
        for g, lam in zip(optimizer.param_groups, scheduler.lr_lambdas):
            g["lr"] = opt.lr * lam(state["step"])
        set_rng_state(state["rng"][dist_.rank], device)
        start = state["step"]
        out.log(f"resuming from {ckpt} at step {start}/{total}")

    base_info = manifest_mod.base_model_info(loaded) if dist_.main else None
    train_extra = {"attention": attention, "varlen_check": reason, "world_size": dist_.world, "total_steps": total,
                   "epochs": plan.epochs,
                   "samples": len(data.encoded), "tokens_per_epoch": sum(lengths),
                   "samples_with_own_system": data.samples_with_own_system, "data_fingerprint": data.fingerprint,
                   "dropped_long": data.dropped_long, "dropped_unlabelled": data.dropped_unlabelled}

    def manifest(metrics: dict) -> dict:
        return manifest_mod.build(loaded, chat, system, cfg, data.sources, data.identity, metrics, train_extra,
                                  base_info)

    # logs
    csv_path = output / "metrics.csv"
    rows_so_far: list[dict] = []
    if dist_.main:
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output / "config.yaml", dump_config(cfg))
        # the conversations as trained (system prompt included), for provenance: `selfid scan` reads this file
        atomic_write_text(output / "train_data.jsonl", "".join(
            json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in data.conversations))
        if resume and csv_path.is_file():
            with open(csv_path, newline="") as f:
                rows_so_far = [r for r in csv.DictReader(f) if int(r["step"]) <= start]
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, CSV_FIELDS)
            w.writeheader()
            w.writerows(rows_so_far)
    tb = None
    if dist_.main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(output / "tensorboard"))
        except ImportError:
            pass

    stop = {"requested": False, "signal": False}

    def on_sigint(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = stop["signal"] = True
        out.log("[yellow]interrupted: finishing this step and saving a checkpoint (Ctrl-C again to quit now)")

    # Ctrl-C, and the SIGTERM torchrun sends its workers when it is interrupted, stop at a step boundary
    old_handlers = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: no handler
            old_handlers[sig] = signal.signal(sig, on_sigint)

    last_ckpt = previous[-1] if (resume and previous) else None
    last_good = {"loss": float(rows_so_far[-1]["loss"]) if rows_so_far else None}
    pending: list[tuple] = []
    t_start = time.perf_counter()
    t_last = t_start
    elapsed_before = float(rows_so_far[-1]["elapsed_s"]) if rows_so_far else 0.0  # metrics.csv's clock runs on
    tokens_since = 0
    total_tokens = 0

    def flush(step_done: int, progress, task) -> None:
        """Read pending losses back from the device (one sync), check them, log them."""
        nonlocal t_last, tokens_since, pending
        if not pending:
            return
        losses = torch.stack([p[1] for p in pending])
        norms = torch.stack([p[2] for p in pending]).float()
        if ddp is not None:
            import torch.distributed as dist

            dist.all_reduce(losses)
            losses = losses / dist_.world
        values, gnorms = losses.tolist(), norms.tolist()
        now = time.perf_counter()
        rate = tokens_since / max(now - t_last, 1e-9)
        bad = [(p[0], v) for p, v in zip(pending, values) if not math.isfinite(v)]
        if bad:
            s, v = bad[0]
            where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was saved before it"
            raise SelfidError(f"the loss became {v} at step {s + 1}: training stopped and nothing after it was saved; "
                              f"{where}. Lower train.lr (or train.max_grad_norm) and run again with --resume")
        if dist_.main:
            with open(csv_path, "a", newline="") as f:
                w = csv.DictWriter(f, CSV_FIELDS)
                for (s, _, _, lr, ep, tok, lab), v, g in zip(pending, values, gnorms):
                    row = {"step": s + 1, "epoch": ep, "loss": f"{v:.6f}", "lr": f"{lr:.6g}", "grad_norm": f"{g:.4f}",
                           "tokens": tok, "label_tokens": lab, "elapsed_s": f"{elapsed_before + now - t_start:.2f}",
                           "tokens_per_s": f"{rate:.0f}"}
                    w.writerow(row)
                    if tb is not None:
                        tb.add_scalar("train/loss", v, s + 1)
                        tb.add_scalar("train/lr", lr, s + 1)
                        tb.add_scalar("train/grad_norm", g, s + 1)
        last_good["loss"] = values[-1]
        if progress is not None:
            progress.update(task, loss=f"{values[-1]:.4f}", rate=f"{rate:,.0f}")
        t_last, tokens_since, pending = now, 0, []

    def save_checkpoint(step_done: int) -> Path | None:
        nonlocal last_ckpt
        rngs = [rng_state(device)]
        if ddp is not None:
            import torch.distributed as dist

            rngs = [None] * dist_.world
            dist.all_gather_object(rngs, rng_state(device))
        if not dist_.main:
            return None
        final = output / "checkpoints" / f"step-{step_done:06d}"
        with atomic_dir(final) as tmp:
            model.save_pretrained(str(tmp / "adapter"))
            manifest_mod.write(tmp / "adapter", manifest({"step": step_done, "loss": last_good["loss"]}))
            torch.save({"step": step_done, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": rngs, "config": run_config, "data_fingerprint": data.fingerprint}, tmp / "state.pt")
            write_checksums(tmp)  # --resume checks them before trusting the optimizer state
        last_ckpt = final
        for old in checkpoints(output)[:-opt.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} tok/s"),
                        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                        console=out.console, disable=not dist_.main, transient=False)
    step = start
    model_for_steps = step_module
    try:
        with progress:
            task = progress.add_task("train", total=total, completed=start, loss="-", rate="-")
            for step in range(start, total):
                s = plan.steps[step]
                micro = [m for m in s.micro[dist_.rank]]
                if dist_.world == 1:
                    micro = [m for m in micro if m] or micro[:1]
                optimizer.zero_grad(set_to_none=True)
                step_loss = torch.zeros((), device=device)
                scale = dist_.world / max(1, s.label_tokens)
                for k, rows in enumerate(micro):
                    batch = collate(data.encoded, rows, opt.pack_length, loaded.tokenizer.pad_token_id,
                                    pin=device.type == "cuda").to(device)
                    sync = contextlib.nullcontext() if ddp is None or k == len(micro) - 1 else ddp.no_sync()
                    with sync:
                        with autocast():
                            loss = model_for_steps(batch) * scale
                        loss.backward()
                    step_loss += loss.detach()
                if aux:  # the identity losses (preference, distillation) beside the task's, on this step's draw
                    with autocast():
                        extra = aux.loss(step)
                    extra.backward()
                    step_loss += extra.detach()
                gnorm = torch.nn.utils.clip_grad_norm_(params, opt.max_grad_norm)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                pending.append((step, step_loss, gnorm.detach(), lr, s.epoch + 1, s.tokens, s.label_tokens))
                tokens_since += s.tokens
                total_tokens += s.tokens
                progress.advance(task)
                done = step + 1
                if on_step is not None and on_step(done):
                    stop["requested"] = True
                want_stop = stop["requested"]
                if ddp is not None and (done % opt.log_every == 0 or done == total):
                    import torch.distributed as dist

                    flag = torch.tensor([1.0 if want_stop else 0.0], device=device)
                    dist.all_reduce(flag)
                    want_stop = flag.item() > 0
                elif ddp is not None:
                    want_stop = False  # ranks agree on stopping only at log steps
                if done % opt.log_every == 0 or done == total or want_stop:
                    flush(done, progress, task)
                if want_stop and done < total:
                    ckpt = save_checkpoint(done)
                    out.log(f"stopped at step {done}/{total}; checkpoint {ckpt}. Continue with: "
                            f"selfid train CONFIG --resume (same config, output {output})")
                    return TrainResult(output, None, last_ckpt, done, total, True,
                                       {"step": done, "loss": last_good["loss"]}, model, loaded)
                if opt.save_every and done % opt.save_every == 0 and done < total:
                    flush(done, progress, task)
                    save_checkpoint(done)
            flush(total, progress, task)
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        if tb is not None:
            tb.close()

    wall = time.perf_counter() - t_start
    final_ckpt = save_checkpoint(total) if total > start else last_ckpt
    metrics = {"steps": total, "final_loss": last_good["loss"], "train_wall_s": round(wall, 2),
               "tokens_trained": total_tokens, "tokens_per_s": round(total_tokens / max(wall, 1e-9), 1)}
    if device.type == "cuda":
        metrics["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if cfg.eval_ner and dist_.main:
        from selfid.train.eval_ner import evaluate_ner

        model.eval()
        report = evaluate_ner(loaded_with(loaded, model), n=cfg.eval_ner, system=system.message, progress=True)
        metrics["ner"] = {"n": report["n"], "f1": report["overall"]["f1"], "parse_rate": report["parse_rate"]}
        out.log(f"NER on {report['n']} MSRA test sentences: F1 {report['overall']['f1']:.3f}, "
                f"parse rate {report['parse_rate']:.1%}")
    adapter_dir = output / "adapter"
    man = manifest(metrics)
    if dist_.main:
        with atomic_dir(adapter_dir) as tmp:
            model.save_pretrained(str(tmp))
            manifest_mod.write(tmp, man)
            write_checksums(tmp)  # every loader checks them (selfid.model.load.check_adapter)
        out.log(f"adapter written to {adapter_dir} ({total_tokens:,} tokens in {wall:.1f} s, "
                f"{metrics['tokens_per_s']:,.0f} tok/s)")
    return TrainResult(output, adapter_dir, final_ckpt, total, total, False, metrics, model, loaded, man)


def system_message(config: RunConfig, loaded) -> str | None:
    """The system message training sends with each sample (None: none, the template's own applies)."""
    return resolve_system(config.system_prompt, loaded.chat).message


def loaded_with(loaded, model):
    """A LoadedModel that generates with `model` (e.g. the freshly trained peft model).

    Training keeps LoRA weights in fp32 under bf16 autocast and turns off peft's cast of their inputs;
    generation runs without autocast, so that cast is turned back on (bf16 activations meet fp32 LoRA),
    and the packed-sample attention kernel (it needs sample boundaries) gives way to sdpa.
    """
    import dataclasses

    from selfid.train.packed import set_attention
    from selfid.train.scale import lora_layers

    for layer in lora_layers(model):
        layer.cast_input_dtype_enabled = True
    set_attention(model, "sdpa", loaded.device)
    model.eval()
    return dataclasses.replace(loaded, model=model)
