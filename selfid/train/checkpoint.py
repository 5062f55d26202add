"""Reading a training checkpoint back for --resume, checked first: a damaged one is one clear line, never a traceback.

A checkpoint folder (`OUTPUT/checkpoints/step-N/`) holds `adapter/` (the LoRA weights and selfid.json),
`state.pt` (optimizer, scheduler, RNG states, config, data fingerprint) and `checksums.json`, written last.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from selfid.errors import SelfidError
from selfid.io import verify_checksums


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
    import torch

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
