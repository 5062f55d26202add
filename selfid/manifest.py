"""The run manifest (`selfid.json`) written beside every adapter selfid trains, and its one typed reader.

Every consumer of an adapter reads it, so serving, auditing and exporting use the template and the
system prompt the adapter was trained under. The layout (format 2):

    {"format": 2, "kind": "lora-adapter",
     "base_model": {name, source, path, weights_sha256, gguf_sha256, architecture},
     "chat_template": {hash, default_system, source},
     "train": {"system": {kind, message, effective, origin}, template_hash, template_default_system,
               hyperparameters, ...},
     "generation_defaults": {...}, "generation_defaults_source": ...,
     "data": [{source, sha256, content_sha256, loaded, used, ...}], "identity_replay": {...} | null,
     "versions": {...}, "metrics": {...}, "adapter_scale": 1.0}

`train.system` is the training `SystemPrompt` (selfid/system_prompt.py): `message` is the system message
sent in training (null: none, so the template inserted its own), `effective` the text the model saw.
`read` and `parse` give a typed `Manifest`; `migrate` brings the layouts older selfid versions wrote
(format 1: `train.system_prompt` with `system_message_sent`) to this one, and `training_system` is the
one way to ask what an adapter was trained under.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import platform
import time
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from selfid.errors import SelfidError
from selfid.io import atomic_write_json, read_text_bounded, selfid_home, sha256_file
from selfid.system_prompt import SystemPrompt, resolve

MANIFEST = "selfid.json"  # what `selfid train` leaves beside an adapter
FORMAT = 2
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
_V1_SYSTEM_KEYS = ("system_prompt", "system_prompt_policy", "system_prompt_is_template_default", "system_message_sent")


# --- reading -------------------------------------------------------------------------------------

class ManifestError(SelfidError):
    """A selfid.json that is valid JSON but not a layout selfid wrote (a damaged or hand-edited file)."""


class TrainRecord(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    system: Optional[SystemPrompt] = None  # the system prompt of training (None: not recorded)
    template_hash: Optional[str] = None  # the chat template trained with
    template_default_system: Optional[str] = None


class Manifest(BaseModel):
    """A selfid.json, in today's layout; keys this class does not name are kept as they are."""

    model_config = ConfigDict(extra="allow", frozen=True)

    format: int = FORMAT
    kind: str = "lora-adapter"
    base_model: dict = Field(default_factory=dict)
    chat_template: dict = Field(default_factory=dict)
    train: TrainRecord = Field(default_factory=TrainRecord)
    generation_defaults: dict = Field(default_factory=dict)
    identity_replay: Optional[dict] = None

    def record(self) -> dict:
        """The manifest as JSON data (what run.json and an export keep of it)."""
        return self.model_dump(mode="json")


def migrate(data, where: str = MANIFEST) -> dict:
    """A manifest of any layout selfid has written, as today's layout (format 2)."""
    if not isinstance(data, dict):
        raise ManifestError(f"{where} holds a JSON {type(data).__name__}, not an object: restore it, or delete it "
                          "to use the adapter without what training recorded")
    fmt = data.get("format", 1)
    if fmt == FORMAT:
        return data
    if not isinstance(fmt, int) or fmt > FORMAT or fmt < 1:
        raise ManifestError(f"{where} has format {fmt!r}, which this selfid cannot read (it reads 1 to {FORMAT}): "
                          "upgrade selfid")
    out = {**data, "format": FORMAT}
    train = data.get("train")
    if train is None:
        return out
    if not isinstance(train, dict):
        raise ManifestError(f"{where}: train is a JSON {type(train).__name__}, not an object: restore the file, or "
                          "delete it to use the adapter without what training recorded")
    out["train"] = {k: v for k, v in train.items() if k not in _V1_SYSTEM_KEYS}
    if "system_prompt" in train:
        out["train"]["system"] = _system_v1(train, where)
    return out


def _system_v1(train: dict, where: str) -> dict:
    """Format 1 kept the effective text in `train.system_prompt` and whether it was sent in
    `system_message_sent` (absent in its first files: the text was sent unless it was null)."""
    text = train["system_prompt"]
    if text is not None and not isinstance(text, str):
        raise ManifestError(f"{where}: train.system_prompt is {text!r}, not a string or null: restore the file, or "
                          "delete it to use the adapter without its training system prompt")
    was_sent = train.get("system_message_sent")
    message = text if (was_sent if isinstance(was_sent, bool) else text is not None) else None
    kind = {"template_default": "template", "none": "none"}.get(train.get("system_prompt_policy"))
    if kind is None:
        kind = "template" if message is None else "empty" if message == "" else "text"
    return {"kind": kind, "message": message, "effective": text, "origin": "config system_prompt"}


def parse(data, where: str = MANIFEST) -> Manifest:
    """A typed Manifest from a manifest's JSON data (any layout selfid wrote)."""
    if isinstance(data, Manifest):
        return data
    try:
        return Manifest.model_validate(migrate(data, where))
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ManifestError(f"{where}: {loc} {err['msg'].lower()} (got {err.get('input')!r}): restore the file, or "
                          "delete it to use the adapter without what training recorded") from None


def read(folder: Path) -> Manifest | None:
    """The selfid.json in `folder` (None when there is none)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(read_text_bounded(path, what="an adapter's selfid.json"))
    except ValueError as e:
        raise SelfidError(f"{path} is not valid JSON ({e}): restore it or delete it") from None
    return parse(data, str(path))


def training_system(manifest: Manifest | dict | None) -> SystemPrompt | None:
    """The system prompt an adapter was trained under, from its manifest (None: none recorded)."""
    if manifest is None:
        return None
    return parse(manifest).train.system


def default_system(manifest: Manifest | dict | None, template_default: str | None) -> SystemPrompt:
    """The system prompt a conversation without one gets: the adapter's training prompt when its manifest
    records one (so serving renders as training did), else the chat template's own."""
    training = training_system(manifest)
    if training is None:
        return resolve("template", template_default)
    return resolve("adapter", template_default, "the adapter's selfid.json", training)


def training_system_message(manifest: Manifest | dict | None) -> str | None:
    """The system message that renders prompts as in training (None: none; the template inserts its own)."""
    system = training_system(manifest)
    return system.message if system is not None else None


# --- writing -------------------------------------------------------------------------------------

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


def train_section(system: SystemPrompt, chat, config, extra: dict | None = None) -> dict:
    """The `train` block: the system prompt exactly as used, the template, the hyperparameters."""
    return {
        "system": system.model_dump(mode="json"),
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
        "chat_template": {"hash": chat.template_hash, "default_system": chat.default_system,
                          "source": getattr(loaded, "template_source", None)},
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
