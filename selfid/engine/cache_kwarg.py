"""The name a model's forward takes its KV cache under: transformers 5.24 renamed `past_key_values` to `cache`, and
the GPU image has 5.17. Its own module, below the engine's others, so that each of them can ask."""

from __future__ import annotations

import inspect


def cache_kwarg(model) -> str:
    """"cache" or "past_key_values", whichever `model`'s (or a peft model's base model's) forward takes."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
