"""`selfid export ADAPTER --merge --out DIR`: a standalone model that serves the way it was trained.

The folder holds the merged weights, the tokenizer, a chat template whose default system prompt is
the one used in training (so vLLM, llama.cpp or transformers, given no system message, render
exactly the training prompt), the model's generation config, and selfid.json with an `export` block.
"""

from __future__ import annotations

import json
from pathlib import Path

from selfid.errors import SelfidError
from selfid.io import atomic_dir, atomic_write_json, write_checksums
from selfid.model.chat import ChatFormat

GGUF_MESSAGE = ("--gguf: no installable package converts a transformers model to GGUF (the `gguf` package writes "
                "the file format, but the tensor and tokenizer conversion lives in llama.cpp's convert_hf_to_gguf.py). "
                "Export without --gguf, then run: python llama.cpp/convert_hf_to_gguf.py DIR --outtype bf16")


def _jinja_literal(text: str) -> str:
    return (text.replace("\\", "\\\\").replace("'", "\\'").replace('"', '\\"').replace("\n", "\\n")
            .replace("\r", "\\r"))


def with_default_system(tokenizer, system: str) -> str:
    """The tokenizer's chat template changed so that a conversation without a system message gets `system`."""
    chat = ChatFormat(tokenizer)
    template = chat.template
    candidates = []
    if chat.default_system:  # the template spells its default out: put the training prompt in its place
        candidates.append(template.replace(chat.default_system, _jinja_literal(system)))
    prelude = ("{%- if not messages or messages[0]['role'] != 'system' %}{%- set messages = "
               f"[{{'role': 'system', 'content': '{_jinja_literal(system)}'}}] + messages %}}{{%- endif %}}")
    candidates.append(prelude + template)
    original = tokenizer.chat_template
    try:
        for new in candidates:
            tokenizer.chat_template = new
            try:
                if ChatFormat(tokenizer).default_system == system:
                    return new
            except Exception:
                continue
    finally:
        tokenizer.chat_template = original
    raise SelfidError("could not give this chat template a default system prompt; serve the exported model with "
                      f"the system message {system!r}")


def export(adapter: str | Path, out: str | Path, model: str | None = None, merge: bool = True, gguf: bool = False,
           dtype: str = "auto", progress: bool = True) -> dict:
    """Merge `adapter` into its base model and write a self-contained folder to `out`."""
    import torch

    from selfid.model.load import load_model, read_manifest

    if gguf:
        raise SelfidError(GGUF_MESSAGE)
    if not merge:
        raise SelfidError("export writes merged weights: pass --merge (an unmerged adapter is the adapter folder itself)")
    adapter, out = Path(adapter).expanduser(), Path(out).expanduser()
    if not (adapter / "adapter_config.json").is_file():
        raise SelfidError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SelfidError(f"{out} already exists and is not empty: choose a new --out folder")
    manifest = read_manifest(adapter) or {}
    base = model or (manifest.get("base_model") or {}).get("name")
    if base is None:
        base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise SelfidError(f"{adapter} does not say which base model it belongs to: pass --model")

    loaded = load_model(base, adapter=adapter, device="cpu", dtype="float32", progress=progress)
    merged = loaded.model.merge_and_unload()
    stored = getattr(merged.config, "dtype", None) or getattr(merged.config, "torch_dtype", None)
    target = {"auto": stored if isinstance(stored, torch.dtype) else getattr(torch, str(stored or "float32")),
              "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(dtype)
    if target is None:
        raise SelfidError(f"unknown dtype {dtype!r}: use auto, bfloat16, float16 or float32")
    merged = merged.to(target)

    train = manifest.get("train") or {}
    tokenizer = loaded.tokenizer
    chat = loaded.chat
    system = train.get("system_prompt")
    changed_template = False
    if train.get("system_message_sent") and system is not None and system != chat.default_system:
        tokenizer.chat_template = with_default_system(tokenizer, system)
        changed_template = True
    final_chat = ChatFormat(tokenizer)

    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        merged.generation_config.save_pretrained(tmp)
        info = {
            **manifest,
            "kind": "merged-model",
            "export": {"adapter": str(adapter), "base_model": base, "dtype": str(target).removeprefix("torch."),
                       "template_changed": changed_template, "template_hash": final_chat.template_hash,
                       "default_system": final_chat.default_system,
                       "original_template_hash": chat.template_hash},
        }
        atomic_write_json(tmp / "selfid.json", info)
        write_checksums(tmp)  # loading the folder later checks them
    return info["export"]
