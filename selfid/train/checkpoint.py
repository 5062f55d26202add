"""Training checkpoints and the final adapter: writing them, and reading one back for --resume.

A checkpoint folder (`OUTPUT/checkpoints/step-N/`) holds `adapter/` (the LoRA weights and selfid.json),
`state.pt` (optimizer, scheduler, RNG states, config, data fingerprint) and `checksums.json`, written last.
--resume checks it first: a damaged one is one clear line, never a traceback.
"""

from __future__ import annotations

import contextlib
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from selfid import manifest as manifest_mod
from selfid.errors import SelfidError
from selfid.io import atomic_dir, atomic_write_text, verify_checksums, write_checksums
from selfid.model.trained_with import TEMPLATE_FILE

# settings that may change between a run and its --resume without changing what is learned (lr: after a NaN)
RESUMABLE_CHANGES = {"train.save_every", "train.keep_checkpoints", "train.log_every", "train.compile",
                     "train.attention", "train.lr", "train.max_grad_norm", "train.ce_chunk", "train.liger", "eval_ner",
                     "adapter_scale", "device"}


def checkpoints(output: Path) -> list[Path]:
    """The run's complete checkpoints, oldest first."""
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
    """The dotted keys whose values differ between two nested config dicts."""
    keys = []
    for k in sorted(set(a) | set(b)):
        path = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += config_diff(va, vb, path + ".")
        elif va != vb:
            keys.append(path)
    return keys


def _adapter_files(folder: Path, model, manifest: dict, chat_template: str | None) -> None:
    model.save_pretrained(str(folder))
    if chat_template is not None:  # a template the model lacks (given in the config): the adapter carries it
        atomic_write_text(Path(folder) / TEMPLATE_FILE, chat_template)
    manifest_mod.write(folder, manifest)


def write_adapter(folder: Path, model, manifest: dict, chat_template: str | None = None) -> None:
    """The peft model's LoRA weights with their manifest (and `chat_template`, when training rendered with a template
    that is not the model's own) and checksums, written whole or not at all."""
    with atomic_dir(folder) as tmp:
        _adapter_files(tmp, model, manifest, chat_template)
        write_checksums(tmp)  # every loader checks them (selfid.model.load.check_adapter)


def save(output: Path, step: int, model, manifest: dict, state: dict, keep: int,
         chat_template: str | None = None) -> Path:
    """Checkpoint `step`: the adapter and `state` (optimizer, scheduler, RNG states, config, data fingerprint);
    then delete all but the newest `keep` checkpoints."""
    final = output / "checkpoints" / f"step-{step:06d}"
    with atomic_dir(final) as tmp:
        _adapter_files(tmp / "adapter", model, manifest, chat_template)
        torch.save(state, tmp / "state.pt")
        write_checksums(tmp)  # --resume checks them before trusting the optimizer state
    for old in checkpoints(output)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def damaged_message(ckpt: Path, previous: list[Path], problem: str) -> str:
    """What is wrong with `ckpt` and exactly what to delete; `previous` are the run's checkpoints, oldest first."""
    earlier = [p for p in previous if p != ckpt]
    then = (f"--resume continues from {earlier[-1].name}" if earlier
            else "start again without --resume (there is no earlier checkpoint)")
    return f"--resume: the checkpoint {ckpt} is damaged ({problem}): delete it (rm -r {ckpt}) and {then}"


@contextlib.contextmanager
def _unreadable(ckpt: Path, previous: list[Path]):
    """A failed read (a checkpoint from before checksums, or damaged in a way they miss) as one line."""
    from safetensors import SafetensorError

    try:
        yield
    except (SafetensorError, RuntimeError, EOFError, OSError, KeyError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise SelfidError(damaged_message(ckpt, previous, f"it cannot be read: {reason}")) from None


def read_state(ckpt: Path, previous: list[Path]) -> dict:
    """The checkpoint's state.pt, after checking every file of the checkpoint against its checksums.json."""
    problem = verify_checksums(ckpt)
    if problem is not None:
        raise SelfidError(damaged_message(ckpt, previous, problem))
    with _unreadable(ckpt, previous):
        return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)


def read_adapter_weights(ckpt: Path, previous: list[Path], device) -> dict:
    """The checkpoint's LoRA weights (checked by read_state, which --resume calls first)."""
    from safetensors.torch import load_file

    with _unreadable(ckpt, previous):
        return load_file(str(ckpt / "adapter" / "adapter_model.safetensors"), device=str(device))


def resume(previous: list[Path], run_config: dict, data_fingerprint: str, model, params: list, optimizer, scheduler,
           lr: float, rank: int, device) -> int:
    """Load the newest of `previous` into the model, optimizer, scheduler and RNGs, after checking that it is
    undamaged and that the config and data are the checkpointed run's; returns the step to continue from."""
    from peft import set_peft_model_state_dict

    ckpt = previous[-1]
    state = read_state(ckpt, previous)
    diff = [k for k in config_diff(state["config"], run_config)
            if not any(k == c or k.startswith(c + ".") for c in RESUMABLE_CHANGES)]
    if diff:
        raise SelfidError(f"--resume: the config differs from the checkpointed run in {', '.join(diff)}; "
                          "resume with the same config, or start a new run in another output folder")
    if state["data_fingerprint"] != data_fingerprint:
        raise SelfidError("--resume: the training data differs from the checkpointed run's (a data file or "
                          "the tokenizer changed): start a new run in another output folder")
    set_peft_model_state_dict(model, read_adapter_weights(ckpt, previous, device))
    for p in params:
        p.data = p.data.float()
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scheduler.base_lrs = [lr for _ in scheduler.base_lrs]  # train.lr may change on resume (RESUMABLE_CHANGES)
    for g, lam in zip(optimizer.param_groups, scheduler.lr_lambdas):
        g["lr"] = lr * lam(state["step"])
    set_rng_state(state["rng"][rank], device)
    return state["step"]
