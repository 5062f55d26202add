"""The run manifest (`selfid.json`) written beside every adapter selfid trains.

Every consumer of an adapter reads it, so serving, auditing and exporting use the template and the
system prompt the adapter was trained under. The layout:

    {"format": 1, "kind": "lora-adapter",
     "base_model": {name, source, path, weights_sha256, gguf_sha256, architecture},
     "chat_template": {hash, default_system},
     "train": {system_prompt, system_prompt_policy, system_prompt_is_template_default,
               system_message_sent, template_hash, template_default_system, hyperparameters, ...},
     "generation_defaults": {...}, "generation_defaults_source": ...,
     "data": [{source, sha256, content_sha256, loaded, used, ...}], "identity_replay": {...} | null,
     "versions": {...}, "metrics": {...}, "adapter_scale": 1.0}

`train.system_prompt` is the system text the model saw in training (null: none at all); a server
that sends it as the system message (or none when null) renders prompts exactly as in training.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from selfid.io import atomic_write_json, selfid_home, sha256_file
from selfid.model.load import MANIFEST, read_manifest  # noqa: F401  (read_manifest: one way to read it)

FORMAT = 1
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def training_system_message(manifest: dict | None) -> str | None:
    """The system message that renders prompts as in training: `train.system_prompt` when a system
    message was sent in training; None when none was (the template inserted its own) or nothing is recorded."""
    train = manifest.get("train") if isinstance(manifest, dict) else None
    if not isinstance(train, dict) or train.get("system_message_sent") is False:
        return None
    text = train.get("system_prompt")
    return text if isinstance(text, str) else None


def weights_sha256(folder: Path | None) -> str | None:
    """sha256 over the model folder's weight files (name + content hash each), cached by size and mtime."""
    if folder is None or not Path(folder).is_dir():
        return None
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        return None
    cache_path = selfid_home() / "weight-hashes.json"
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    import hashlib

    h = hashlib.sha256()
    changed = False
    for p in files:
        st = p.stat()
        key = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in cache:
            cache[key] = sha256_file(p)
            changed = True
        h.update(f"{p.name}:{cache[key]}\n".encode())
    if changed:
        try:
            atomic_write_json(cache_path, cache)
        except OSError:
            pass
    return h.hexdigest()


def base_model_info(loaded) -> dict:
    gguf = None
    if loaded.path is not None and (loaded.path / "selfid-source.json").is_file():
        try:
            gguf = json.loads((loaded.path / "selfid-source.json").read_text()).get("gguf_sha256")
        except ValueError:
            gguf = None
    base = loaded.model.get_base_model() if hasattr(loaded.model, "get_base_model") else loaded.model
    return {"name": loaded.name, "source": loaded.source, "path": str(loaded.path) if loaded.path else None,
            "weights_sha256": weights_sha256(loaded.path), "gguf_sha256": gguf,
            "architecture": (getattr(base.config, "architectures", None) or [type(base).__name__])[0]}


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("selfid", "torch", "transformers", "peft", "accelerate", "tokenizers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    try:
        import torch

        out["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return out


def train_section(system, chat, config, extra: dict | None = None) -> dict:
    """The `train` block: the system prompt exactly as used, the template, the hyperparameters."""
    return {
        "system_prompt": system.effective,
        "system_prompt_policy": system.policy,
        "system_prompt_is_template_default": system.is_template_default,
        "system_message_sent": system.message is not None,
        "template_hash": chat.template_hash,
        "template_default_system": chat.default_system,
        "hyperparameters": {"lora": config.lora.model_dump(mode="json"), "train": config.train.model_dump(mode="json")},
        **(extra or {}),
    }


def build(loaded, chat, system, config, data: list[dict], identity: dict | None, metrics: dict,
          train_extra: dict | None = None, base_info: dict | None = None) -> dict:
    return {
        "format": FORMAT,
        "kind": "lora-adapter",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "base_model": base_info or base_model_info(loaded),
        "chat_template": {"hash": chat.template_hash, "default_system": chat.default_system},
        "train": train_section(system, chat, config, train_extra),
        "generation_defaults": dict(loaded.generation_defaults),
        "generation_defaults_source": loaded.generation_defaults_source,
        "data": data,
        "identity_replay": identity,
        "versions": versions(),
        "metrics": metrics,
        "adapter_scale": 1.0,
        "config": config.model_dump(mode="json"),
    }


def write(folder: Path, manifest: dict) -> Path:
    path = Path(folder) / MANIFEST
    atomic_write_json(path, manifest)
    return path
