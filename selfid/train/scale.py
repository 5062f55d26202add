"""Adapter scaling: shrink the LoRA update until the base model's identity comes back, keeping NER F1.

The search runs against any `evaluate(scale) -> (foreign_rate, ner_f1)`; the identity half comes from
the audit (`identity_rate_provider` runs its identity suite), kept behind that callable. Scale 0 is the base model, 1 the trained adapter.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from selfid import manifest as manifest_mod
from selfid.errors import SelfidError
from selfid.io import CHECKSUMS, atomic_dir, write_checksums
from selfid.model.load import adapter_config


@dataclass
class ScaleSearch:
    scale: float  # the chosen scale (1.0 when no smaller one is needed or none helps)
    ok: bool  # identity restored and F1 within tolerance
    reason: str
    base_rate: float
    full_f1: float
    points: list[dict] = field(default_factory=list)  # every evaluated {scale, foreign_rate, ner_f1}

    def to_dict(self) -> dict:
        return asdict(self)


def search_scale(evaluate: Callable[[float], tuple[float, float]], grid=(1.0, 0.9, 0.8, 0.7, 0.6, 0.5),
                 f1_tolerance: float = 0.01, identity_margin: float = 0.0,
                 base_rate: float | None = None) -> ScaleSearch:
    """The largest scale in `grid` whose foreign-claim rate is at most the base model's (+ margin) while its
    NER F1 stays within `f1_tolerance` of the full adapter's. Scales are tried from large to small and
    the search stops once F1 falls out of tolerance (a smaller update only loses more of the task)."""
    cache: dict[float, tuple[float, float]] = {}

    def at(s: float) -> tuple[float, float]:
        if s not in cache:
            cache[s] = tuple(float(x) for x in evaluate(s))
        return cache[s]

    if base_rate is None:
        base_rate = at(0.0)[0]
    target = base_rate + identity_margin
    full_f1 = at(1.0)[1]
    floor = full_f1 - f1_tolerance
    acceptable = []
    result = None
    for s in sorted(set(grid) | {1.0}, reverse=True):
        rate, f1 = at(s)
        if f1 < floor:
            break
        acceptable.append((rate, -s))
        if rate <= target:
            result = ScaleSearch(s, True, f"scale {s:g}: foreign rate {rate:.3f} <= base {base_rate:.3f}"
                                 f"{f' + {identity_margin:g}' if identity_margin else ''}, F1 {f1:.3f} >= {floor:.3f}",
                                 base_rate, full_f1)
            break
    if result is None:
        rate, neg = min(acceptable)
        result = ScaleSearch(-neg, False, f"no scale restores the base identity rate {base_rate:.3f} with F1 >= "
                             f"{floor:.3f}; scale {-neg:g} has the lowest foreign rate ({rate:.3f}) within the F1 "
                             "tolerance", base_rate, full_f1)
    result.points = [{"scale": s, "foreign_rate": r, "ner_f1": f} for s, (r, f) in sorted(cache.items(), reverse=True)]
    return result


def lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def apply_scale(model, scale: float, adapter: str = "default") -> None:
    """Set every LoRA layer's scaling to `scale` times its trained value (alpha / r); 1.0 restores it."""
    layers = lora_layers(model)
    if not layers:
        raise SelfidError("this model has no LoRA layers to scale")
    for layer in layers:
        layer.set_scale(adapter, scale)


def save_scaled(adapter_dir: str | Path, scale: float, out: str | Path, search: ScaleSearch | None = None) -> Path:
    """Copy an adapter with its update multiplied by `scale` (folded into lora_B, so any LoRA loader applies
    it: peft, vLLM, llama.cpp); its selfid.json records the scale and the search."""
    from safetensors.torch import load_file, save_file


    adapter_dir, out = Path(adapter_dir), Path(out)
    config = adapter_config(adapter_dir)
    if config.get("use_dora"):
        raise SelfidError("a DoRA adapter cannot be scaled by its lora_B weights")
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    scaled = {k: (v * scale).to(v.dtype) if "lora_B" in k or "lora_embedding_B" in k else v
              for k, v in weights.items()}
    with atomic_dir(out) as tmp:
        for f in adapter_dir.iterdir():
            if f.is_file() and f.name not in ("adapter_model.safetensors", manifest_mod.MANIFEST, CHECKSUMS):
                shutil.copy2(f, tmp / f.name)
        save_file(scaled, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        manifest = manifest_mod.read(adapter_dir)
        manifest_mod.write(tmp, {**(manifest.record() if manifest is not None else {}), "adapter_scale": scale,
                                 "adapter_scale_search": search.to_dict() if search else None,
                                 "scaled_from": str(adapter_dir)})
        write_checksums(tmp)
    return out
